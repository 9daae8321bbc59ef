"""Encoder files: the one a training run writes, and the one loader of an `--encoder` argument.

A training workdir holds `encoder.keras` (a `keras.Sequential([Input, ResNetEncoder])` mapping
ImageNet-normalised frames to features), written by `save_encoder`. `load_encoder_model` turns a
command-line spec (identity, random, a workdir, a .keras or .weights.h5 file) into that model;
`load_encoder` / `make_embed` wrap it as `embed(frames_uint8)` for propagation. Exported models
(SavedModel, .tflite) are run by `tc_keras.export.runtimes` instead.
"""

import pathlib
import zipfile
import zlib

import keras
import tensorflow as tf

from tc_keras import atomic
from tc_keras import ops as tops
from tc_keras.model.encoder import FEATURE_STRIDE

ENCODER_FILE = "encoder.keras"
# ResNet depths of a random encoder or a .weights.h5 file, the default one, and the default seed.
DEPTHS = (18, 50)
DEFAULT_DEPTH = 18
DEFAULT_SEED = 0
# Beside it in a training workdir or a converted release: the settings that made it (JSON).
CONFIG_FILE = "config.json"


def save_encoder(encoder, path):
    """Writes `encoder` (a ResNetEncoder layer) alone as a .keras model, atomically."""
    wrapper = keras.Sequential([keras.Input((None, None, 3)), encoder])
    with atomic.Staged(path, suffix=".keras") as tmp:  # Keras saves only to a .keras name
        wrapper.save(tmp)


def min_frame_side(encoder):
    """The smallest frame height and width, in px, that `encoder` (a model or layer) takes.

    One feature stride (8 px: one feature cell) for zero and "same" padding. Reflect padding
    (the CRW release's) pads a 3x3 convolution by 1 on each side, which needs at least 2 cells
    at stride 8: 9 px.
    """
    pending, reflect = [encoder], False
    while pending:
        layer = pending.pop()
        reflect |= getattr(layer, "padding", None) == "reflect"
        pending += list(getattr(layer, "layers", []))
    return FEATURE_STRIDE + 1 if reflect else FEATURE_STRIDE


def check_frame_size(height, width, min_side):
    """Raises ValueError unless frames of height x width px have both sides >= `min_side`."""
    if min(height, width) < min_side:
        raise ValueError(f"embed: frames are {height}x{width} (HxW); this encoder needs at "
                         f"least {min_side} px per side")


def make_embed(encoder):
    """embed(frames_uint8 (B, H, W, 3)) -> (B, ceil(H/8), ceil(W/8), C) from an encoder on
    normalised frames; any H, W of at least `min_frame_side(encoder)` px.

    Compiled (a tf.function, traced once per frame size): a video's frames all run one graph.
    """
    min_side = min_frame_side(encoder)

    @tf.function(reduce_retracing=True)
    def compiled(frames):
        return encoder(tops.normalize_frames(frames), training=False)

    def embed(frames):
        check_frame_size(frames.shape[1], frames.shape[2], min_side)
        return compiled(frames)
    return embed


ENCODER_CHOICES = "identity, random, or a path to a .weights.h5 / .keras file or a folder of them"


def load_encoder(spec, depth=DEFAULT_DEPTH, seed=DEFAULT_SEED):
    """An `embed` callable for propagation from a command-line encoder spec.

    See `load_encoder_model` for `spec`, `depth` and `seed`.
    Returns:
      None ("identity") or embed(frames_uint8 (B, H, W, 3)) -> (B, ceil(H/8), ceil(W/8), C).
    """
    encoder = load_encoder_model(spec, depth, seed)
    return None if encoder is None else make_embed(encoder)


def load_encoder_model(spec, depth=DEFAULT_DEPTH, seed=DEFAULT_SEED, flag="--encoder"):
    """The encoder model named by a command-line spec (the one checkpoint loader of the project).

    Args:
      spec: "identity" -> None (the copy-the-first-frame baseline of docs/METHOD.md, "Published numbers");
        "random" -> a freshly initialised `ResNetEncoder(depth)` seeded with `seed`; a path to a
        `.weights.h5` file (weights of `keras.Sequential([ResNetEncoder(depth)])` or of a
        functional model wrapping only the encoder), a `.keras` file (a saved model or encoder
        mapping normalised frames to features), or a folder holding one (a training workdir's
        `encoder.keras` if present, else the newest).
      depth: 18 or 50, for "random" and `.weights.h5`.
      seed: initialisation seed for "random".
      flag: the command-line flag that gave `spec`, named in error messages.
    Returns:
      None ("identity") or a keras model mapping ImageNet-normalised float frames (B, H, W, 3)
      to L2-normalised features (B, ceil(H/8), ceil(W/8), C).
    Raises:
      ValueError naming `spec` when it cannot be loaded.
    """
    from tc_keras.model.encoder import ResNetEncoder  # noqa: PLC0415 (keeps identity runs light)

    if spec == "identity":
        return None
    if spec == "random":
        keras.utils.set_random_seed(seed)
        encoder = keras.Sequential([keras.Input((None, None, 3)), ResNetEncoder(depth=depth)])
        return encoder
    path = pathlib.Path(spec)
    if path.is_dir() and (path / ENCODER_FILE).is_file():
        path = path / ENCODER_FILE  # a training workdir
    if path.is_dir():
        found = sorted([*path.glob("*.keras"), *path.glob("*.weights.h5")],
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise ValueError(f"{flag} {spec}: folder has no .keras or .weights.h5 file")
        path = found[-1]
    if not path.is_file():
        expected = f" (expected {ENCODER_CHOICES})" if flag == "--encoder" else ""
        raise ValueError(f"{flag} {spec}: no such file or folder{expected}")
    if path.suffix == ".keras":
        _check_zip(path, flag)
    try:
        if path.name.endswith(".weights.h5"):
            encoder = ResNetEncoder(depth=depth)
            model = keras.Sequential([keras.Input((None, None, 3)), encoder])
            model.load_weights(str(path))
        elif path.suffix == ".keras":
            encoder = keras.saving.load_model(str(path), compile=False)
        else:
            raise ValueError(f"unknown file type (expected {ENCODER_CHOICES})")
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise ValueError(f"{flag} {path}: cannot load ({str(e).splitlines()[0]})") from None
    return model if path.name.endswith(".weights.h5") else encoder


def _check_zip(path, flag):
    """Raises ValueError naming `path` unless it is a whole zip archive, as a .keras file is
    (Keras says "File not found" for a file it cannot open as one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member against its CRC
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        reason = str(e) or type(e).__name__
    else:
        if bad is None:
            return
        reason = f"{bad} fails its CRC check"
    raise ValueError(f"{flag} {path}: not a readable .keras file (truncated or corrupt zip: "
                     f"{reason})")
