r"""Exports an encoder + the label step as a SavedModel (TF Serving layout) and .tflite files.

  python tools/export.py --checkpoint workdir/run1 --out export/timecycle --quantize fp16,int8
  -> export/timecycle/1/ (SavedModel; the next free version unless --version),
     export/timecycle.tflite, export/timecycle.fp16.tflite, export/timecycle.int8.tflite

  python tools/export.py --random --out export/untrained     # a seeded random encoder, to try
                                                            # the export path (says so loudly)

--checkpoint or --random is required. Signatures (embed / serving_default, propagate,
propagate_per_frame) are described in tc_keras/export/graphs.py. User errors (missing checkpoint,
existing version) print one line naming the flag as typed and exit with status 1.
"""

from tc_keras import cli

cli.quiet_tensorflow()  # before the imports below load TensorFlow (see tc_keras/cli.py)

import sys

from absl import flags, logging

from tc_keras.export import encoder_flags, encoder_io
from tc_keras.export import graphs as export_lib

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Encoder to export: a training workdir (its encoder.keras), an "
    ".keras file or a .weights.h5 file. Required unless --random.")
_RANDOM = flags.DEFINE_bool("random", False, "Export a freshly initialised (seeded, untrained) "
                            "encoder instead of --checkpoint, to try the export path.")
_OUT = flags.DEFINE_string("out", None, "Model folder, e.g. export/<name>: the SavedModel goes "
                           "to <out>/<version>/, the .tflite files next to it as <out>*.tflite.")
encoder_flags.define_flags()  # --depth, --seed
flags.adopt_module_key_flags(encoder_flags)  # listed by --help with this tool's own flags
_VERSION = flags.DEFINE_integer("version", None, "SavedModel version folder, a positive integer "
                                "(default: 1 + the largest existing one, 1 if none).")
_QUANTIZE = flags.DEFINE_list(
    "quantize", [], "Extra .tflite variants besides float32, comma-separated: fp16 (float16 "
    "weights), int8 (dynamic-range int8 weights) (default: none).")
_TFLITE = flags.DEFINE_bool("tflite", True, "Also write the .tflite files (default true).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --version folder.")


def _quantize_values(values):
    out = [v.strip() for v in values if v.strip()]
    bad = [v for v in out if v not in export_lib.QUANTIZATIONS]
    if bad:
        raise ValueError(f"--quantize {','.join(bad)}: expected {export_lib.QUANTIZATIONS}")
    return tuple(dict.fromkeys(out))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TF's INFO lines about signature names, assets
    cli.require("out", hint=" (e.g. export/<name>)")
    quantize = _quantize_values(_QUANTIZE.value)
    cli.exactly_one("checkpoint", "random", hint=" (a training workdir, .keras or .weights.h5 "
                    "file)")
    spec = "random" if _RANDOM.value else _CHECKPOINT.value
    if spec in ("random", "identity") and _CHECKPOINT.value:
        raise ValueError(f"--checkpoint {spec}: expected a workdir, .keras or .weights.h5 "
                         "(--random for an untrained encoder)")
    kwargs = encoder_flags.encoder_kwargs(flags.FLAGS)
    if _RANDOM.value:
        print(f"warning: exporting an untrained, randomly initialised encoder (--random, seed "
              f"{kwargs['seed']}): its features are not learned", file=sys.stderr)
    encoder = encoder_io.load_encoder_model(spec, **kwargs, flag="--checkpoint")
    written = export_lib.export(encoder, _OUT.value, _VERSION.value, quantize, _TFLITE.value,
                                _OVERWRITE.value)
    for kind, path in written.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    cli.run(main)
