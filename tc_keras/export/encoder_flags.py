"""The --depth and --seed flags of the tools that build a random encoder or read a .weights.h5
file (tools/propagate.py --encoder random, tools/export.py --random), defined once here; the
defaults are `encoder_io.load_encoder_model`'s. Library code never reads absl's FLAGS: tools
pass it to `encoder_kwargs`.
"""

from absl import flags

from tc_keras.export.encoder_io import DEFAULT_DEPTH, DEFAULT_SEED, DEPTHS


def define_flags(flag_values=flags.FLAGS):
    """Registers --depth and --seed (idempotent)."""
    if "depth" not in flag_values:
        flags.DEFINE_enum("depth", str(DEFAULT_DEPTH), [str(d) for d in DEPTHS],
                          "ResNet depth of a random encoder (--encoder random, tools/export.py "
                          f"--random) or of a .weights.h5 file. Default: {DEFAULT_DEPTH}.",
                          flag_values=flag_values)
    if "seed" not in flag_values:
        flags.DEFINE_integer("seed", DEFAULT_SEED, "Initialisation seed of a random encoder. "
                             f"Default: {DEFAULT_SEED}.", flag_values=flag_values)


def encoder_kwargs(flag_values):
    """{depth, seed} for `encoder_io.load_encoder` / `load_encoder_model` from parsed flags."""
    return dict(depth=int(flag_values["depth"].value), seed=flag_values["seed"].value)
