"""SavedModel / TFLite graphs of the encoder and the label step (tc_keras.export.runtimes runs them).

Layout written by `export` (TF Serving's: a model folder holding integer version folders):

    export/<name>/<version>/            SavedModel, signatures below (tag "serve")
    export/<name>.tflite                the same signatures, float32, TFLite builtin ops only
    export/<name>.fp16.tflite           optional: float16 weights
    export/<name>.int8.tflite           optional: dynamic-range int8 weights

Signatures (every input required; SavedModel signatures cannot give inputs defaults):

- `embed` (also `serving_default`): frames uint8 (B, H, W, 3) in [0, 255], H and W at least 8 px
  (9 for a reflect-padded encoder: `encoder_io.min_frame_side`), any size, e.g. DAVIS' 854x480
  -> features float32 (B, ceil(H/8), ceil(W/8), C) L2-normalised (ImageNet normalisation inside
  the graph).
- `propagate`: the label step `tc_keras.propagation.label_step.vote` with joint top-k (the default/crw
  protocol), the very function `Propagator` calls on the Keras path:
    context_feats float32 (M, N, C), context_labels float32 (M, N, K), queries float32 (Q, C),
    allowed bool (Q, N) (key n within the radius of query q; all True = no radius),
    short_term bool (M,) (frames the radius applies to), topk int32 () (<= M*N),
    temperature float32 () -> labels float32 (Q, K).
- `propagate_per_frame`: the same with per-frame top-k (the paper protocol, `joint_topk=False`);
  topk <= N.
- `propagate_local`: the label step with a radius, `tc_keras.propagation.label_step.vote_local` (joint top-k),
  what an export's runtime runs when the protocol has a radius (same labels as `propagate` with
  the radius mask, several times faster at 480p; the Keras path runs the key windows of
  `tc_keras.propagation.window_step`, the same labels again). Queries come in tiles of P
  positions, each matched against the N-positions of its key region (R of them) in the
  short-term frames, and densely against the long-term frames; `tc_keras.propagation.tiles.local_tiles(h, w, radius)` gives the tiling:
    long_feats float32 (L, N, C), long_labels float32 (L, N, K) (unrestricted frames: the first),
    short_feats float32 (N, S, C), short_labels float32 (N, S, K) (radius-restricted frames,
    position-major), queries float32 (T, P, C) (query features tile by tile,
    `LocalTiles.query_index`), key_index int32 (T, R), allowed bool (T, P, R), topk int32 (),
    temperature float32 () -> labels float32 (T, P, K) (`LocalTiles.slot` puts them back in
    position order).
- `propagate_local_per_frame`: the same with per-frame top-k.

Exports written before `propagate_local*` existed still load (tc_keras.export.runtimes): their runtimes
have `local_step = None` and the propagation context then runs `propagate` with the dense radius
mask.

Min-max normalisation (paper protocol) needs the whole frame and stays a post-step in the
propagation context.

Shape legend: B batch, H W frame size, M context frames, N = h*w feature positions, Q query
positions, C channels, K label channels.
"""

import pathlib

import keras
import tensorflow as tf

from tc_keras import atomic
from tc_keras import ops as tops
from tc_keras.export.encoder_io import min_frame_side
from tc_keras.propagation.label_step import vote, vote_local

LOCAL_SIGNATURES = ("propagate_local", "propagate_local_per_frame")
# Signatures every export has; the local ones are written too but optional when loading.
REQUIRED_SIGNATURES = ("embed", "propagate", "propagate_per_frame")
SIGNATURES = REQUIRED_SIGNATURES + LOCAL_SIGNATURES
QUANTIZATIONS = ("fp16", "int8")


# ----------------------------------------------------------------------------------------------
# Graphs
# ----------------------------------------------------------------------------------------------

FRAMES_SPEC = tf.TensorSpec((None, None, None, 3), tf.uint8, name="frames")
PROPAGATE_SPECS = [
    tf.TensorSpec((None, None, None), tf.float32, name="context_feats"),  # (M, N, C)
    tf.TensorSpec((None, None, None), tf.float32, name="context_labels"),  # (M, N, K)
    tf.TensorSpec((None, None), tf.float32, name="queries"),  # (Q, C)
    tf.TensorSpec((None, None), tf.bool, name="allowed"),  # (Q, N)
    tf.TensorSpec((None,), tf.bool, name="short_term"),  # (M,)
    tf.TensorSpec((), tf.int32, name="topk"),
    tf.TensorSpec((), tf.float32, name="temperature"),
]
PROPAGATE_LOCAL_SPECS = [
    tf.TensorSpec((None, None, None), tf.float32, name="long_feats"),  # (L, N, C)
    tf.TensorSpec((None, None, None), tf.float32, name="long_labels"),  # (L, N, K)
    tf.TensorSpec((None, None, None), tf.float32, name="short_feats"),  # (N, S, C)
    tf.TensorSpec((None, None, None), tf.float32, name="short_labels"),  # (N, S, K)
    tf.TensorSpec((None, None, None), tf.float32, name="queries"),  # (T, P, C)
    tf.TensorSpec((None, None), tf.int32, name="key_index"),  # (T, R)
    tf.TensorSpec((None, None, None), tf.bool, name="allowed"),  # (T, P, R)
    tf.TensorSpec((), tf.int32, name="topk"),
    tf.TensorSpec((), tf.float32, name="temperature"),
]


def build_archive(encoder):
    """A `keras.export.ExportArchive` with the `embed` and `propagate*` endpoints.

    Args:
      encoder: keras model or layer, ImageNet-normalised float frames (B, H, W, 3) ->
        L2-normalised (B, H/8, W/8, C), e.g. `keras.Sequential([Input, ResNetEncoder(18)])`.
    """
    archive = keras.export.ExportArchive()
    archive.track(encoder)  # keeps the variables tracked (a bare tf.Module would not)
    min_side = min_frame_side(encoder)

    def embed(frames):
        shape = tf.shape(frames)
        # Run before any op sees the frames. Kept in the SavedModel (a signature call does not
        # check shapes against its spec); the TFLite converter drops asserts (see TFLiteRuntime).
        checks = [
            tf.debugging.assert_equal(shape[3], 3, message="embed: frames must be uint8 "
                                      "(B, H, W, 3) RGB; got channels ="),
            tf.debugging.assert_greater_equal(
                shape[1:3], min_side, message=f"embed: frames height and width must be at least "
                f"{min_side} px for this encoder; got (H, W) ="),
        ]
        with tf.control_dependencies(checks):
            x = tops.normalize_frames(frames)
        return {"features": encoder(x, training=False)}

    def step(joint_topk):
        def propagate(context_feats, context_labels, queries, allowed, short_term, topk,
                      temperature):
            return {"labels": vote(context_feats, context_labels, queries, allowed, short_term,
                                   topk=topk, temperature=temperature, joint_topk=joint_topk)}
        return propagate

    def local_step(joint_topk):
        def propagate_local(long_feats, long_labels, short_feats, short_labels, queries,
                            key_index, allowed, topk, temperature):
            return {"labels": vote_local(long_feats, long_labels, short_feats, short_labels,
                                         queries, key_index, allowed, topk=topk,
                                         temperature=temperature, joint_topk=joint_topk)}
        return propagate_local

    # The first endpoint is also `serving_default`.
    archive.add_endpoint("embed", embed, input_signature=[FRAMES_SPEC])
    archive.add_endpoint("propagate", step(True), input_signature=PROPAGATE_SPECS)
    archive.add_endpoint("propagate_per_frame", step(False), input_signature=PROPAGATE_SPECS)
    archive.add_endpoint("propagate_local", local_step(True),
                         input_signature=PROPAGATE_LOCAL_SPECS)
    archive.add_endpoint("propagate_local_per_frame", local_step(False),
                         input_signature=PROPAGATE_LOCAL_SPECS)
    return archive


def next_version(model_dir):
    """1 + the largest integer version folder in `model_dir` (1 when there is none)."""
    model_dir = pathlib.Path(model_dir)
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(encoder, model_dir, version=None, overwrite=False):
    """Writes `model_dir/<version>/` (SavedModel) and returns that path.

    The folder is written beside the target and renamed into place, so a version folder that
    exists is complete (TF Serving may be watching `model_dir`).
    """
    model_dir = pathlib.Path(model_dir)
    version = next_version(model_dir) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    target = model_dir / str(version)
    if target.exists() and not overwrite:
        raise ValueError(f"{target}: already exists (pick another version, or overwrite: --overwrite)")
    with atomic.Staged(target, directory=True) as tmp:
        build_archive(encoder).write_out(str(tmp), verbose=False)
    return target


def convert_tflite(saved_model_dir, quantize=None):
    """SavedModel -> .tflite bytes with all `SIGNATURES`, TFLite builtin ops only.

    Args:
      quantize: None (float32), "fp16" (float16 weights) or "int8" (dynamic-range int8 weights,
        float activations).
    Raises:
      ValueError: unknown `quantize`. The converter itself fails if an op needs Flex (TF) ops.
    """
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize must be one of {QUANTIZATIONS} or None, got {quantize!r}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir),
                                                         signature_keys=list(SIGNATURES))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def tflite_path(model_dir, quantize=None):
    """export/<name> -> export/<name>.tflite, export/<name>.<quantize>.tflite."""
    model_dir = pathlib.Path(model_dir)
    suffix = ".tflite" if quantize is None else f".{quantize}.tflite"
    return model_dir.parent / (model_dir.name + suffix)


def export(encoder, model_dir, version=None, quantize=(), tflite=True, overwrite=False):
    """SavedModel (`model_dir/<version>/`) and .tflite files next to `model_dir`.

    Returns:
      dict: "saved_model" -> version folder, "tflite" / "tflite_<q>" -> .tflite paths.
    """
    for q in quantize:
        if q not in QUANTIZATIONS:
            raise ValueError(f"quantize: unknown {q!r}, expected some of {QUANTIZATIONS}")
    written = {"saved_model": export_saved_model(encoder, model_dir, version, overwrite)}
    if tflite:
        for q in (None, *quantize):
            path = tflite_path(model_dir, q)
            atomic.write_bytes(path, convert_tflite(written["saved_model"], q))
            written["tflite" if q is None else f"tflite_{q}"] = path
    return written
