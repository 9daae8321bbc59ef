r"""Converts a published PyTorch release into a tc_keras encoder folder.

  python tools/convert_weights.py --from timecycle --checkpoint checkpoint_14.pth.tar \
      --out weights/timecycle
  -> weights/timecycle/encoder.keras, config.json, tracker.weights.h5
  python tools/convert_weights.py --from crw --checkpoint pretrained.pth --out weights/crw
  -> weights/crw/encoder.keras, config.json

The folder works wherever tc_keras takes an encoder (`tools/propagate.py --encoder DIR`,
`tools/export.py --checkpoint DIR`). Releases and what is converted: tc_keras/convert/releases.py and the
README ("Published weights"). torch is not needed. A file that is not the named release (wrong
keys or shapes, not a PyTorch checkpoint) prints one `error: ...` line and exits with status 1.
"""

from tc_keras import cli

cli.quiet_tensorflow()  # before the imports below load TensorFlow (see tc_keras/cli.py)

from absl import flags

from tc_keras.convert import releases as convert

_FROM = flags.DEFINE_enum("from", None, sorted(convert.RELEASES),
                          "Which release the checkpoint is: timecycle (TimeCycle ResNet-50, "
                          "checkpoint_14.pth.tar) or crw (Contrastive Random Walk ResNet-18, "
                          "pretrained.pth). Required.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The release's .pth / .pth.tar file. "
                                  "Required.")
_OUT = flags.DEFINE_string("out", None, "Output folder (encoder.keras, config.json and, for "
                           "timecycle, tracker.weights.h5). Required.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out folder "
                               "(default: refuse).")


def main(argv):
    del argv
    for name in ("from", "checkpoint", "out"):
        cli.require(name)
    config = convert.convert(_FROM.value, _CHECKPOINT.value, _OUT.value, _OVERWRITE.value)
    source = config["source"]
    print(f"{source['release']}: {source['converted']} tensors converted, {source['ignored']} "
          f"ignored, from {source['file']} (sha256 {source['sha256'][:12]}...)")
    print(f"encoder: {_OUT.value}/encoder.keras ({config['encoder']['channels']} channels)")
    if config["tracker"]:
        print(f"tracker: {_OUT.value}/{config['tracker']}")
    print(f"propagate: python tools/propagate.py --encoder {_OUT.value} --preset "
          f"{config['preset']} --video VIDEO --labels MASK.png --out OUT")


if __name__ == "__main__":
    cli.run(main)
