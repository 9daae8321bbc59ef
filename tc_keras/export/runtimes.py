"""Runtimes of an exported model (tc_keras.export.graphs): embed and the label steps through its graphs.

`SavedModelRuntime` (TF2 loader) and `TFLiteRuntime` (ai-edge-litert) give `embed(frames uint8
(B, H, W, 3))` and `label_steps`, the `tc_keras.propagation.context.LabelSteps` that
`Propagator(embed, steps=runtime.label_steps)` runs, so every runtime runs the same step as the
Keras path (tc_keras.propagation.label_step): `step` with the interface of `vote`, `local_step`
with that of `vote_local` (None for an export written before the `propagate_local*` signatures
existed; the context then runs `step` with the dense radius mask). A SavedModel's signatures are
TensorFlow functions, traced into the context's compiled step; a TFLite interpreter runs on NumPy
arrays (`host`). `load_runtime(path)` picks the runtime from the path.

Shape legend: B batch, H W frame size, M context frames, N = h*w feature positions, Q query
positions, C channels, K label channels.
"""

import pathlib
import threading

import numpy as np
import tensorflow as tf

from tc_keras.export.graphs import LOCAL_SIGNATURES, REQUIRED_SIGNATURES, SIGNATURES
from tc_keras.model.encoder import FEATURE_STRIDE
from tc_keras.propagation.context import LabelSteps


def find_saved_model(path):
    """A SavedModel folder, or the newest integer version inside a TF Serving model folder."""
    path = pathlib.Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((int(p.name), p) for p in path.glob("*")
                      if p.name.isdigit() and (p / "saved_model.pb").is_file())
    return versions[-1][1] if versions else None


def is_export(spec):
    """True if `spec` names a .tflite file or an exported SavedModel (model or version folder)."""
    path = pathlib.Path(str(spec))
    if path.suffix == ".tflite":
        return True
    return path.is_dir() and find_saved_model(path) is not None


def _check_frames(frames):
    """uint8 (B, H, W, 3) frames with H, W >= 8 px (one feature cell); any size above that."""
    frames = np.asarray(frames)
    s = FEATURE_STRIDE
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"embed: frames must be uint8 (B, H, W, 3), got {frames.dtype} "
                         f"{frames.shape}")
    if min(frames.shape[1:3]) < s:
        raise ValueError(f"embed: frames height and width must be at least {s} px, got "
                         f"{frames.shape[1]}x{frames.shape[2]}")
    return frames


def _error_line(error, size, path):
    """One line for an embed graph's error on (H, W) frames: its size check's message if there."""
    lines = str(getattr(error, "message", error)).splitlines()
    reason = next((ln.strip() for ln in lines if "embed: frames" in ln), lines[0] if lines else "")
    return f"embed: {path} cannot embed {size[0]}x{size[1]} (HxW) frames ({reason})"


def _as_numpy(x, dtype):
    return np.asarray(x, dtype)


def _as_tensor(x, dtype):
    return tf.cast(x, dtype)


def _local_step_inputs(cast, long_feats, long_labels, short_feats, short_labels, queries,
                       key_index, allowed, topk, temperature):
    """The `propagate_local*` inputs, each made by `cast(value, dtype)` (arrays or tensors)."""
    floats = dict(long_feats=long_feats, long_labels=long_labels, short_feats=short_feats,
                  short_labels=short_labels, queries=queries)
    return dict({k: cast(v, np.float32) for k, v in floats.items()},
                key_index=cast(key_index, np.int32), allowed=cast(allowed, bool),
                topk=cast(topk, np.int32), temperature=cast(temperature, np.float32))


def _step_inputs(cast, context_feats, context_labels, queries, allowed, short_term, topk,
                 temperature):
    """The `propagate*` inputs, each made by `cast(value, dtype)` (arrays or tensors)."""
    feats, queries = cast(context_feats, np.float32), cast(queries, np.float32)
    m, n = feats.shape[:2]
    if allowed is None:
        allowed = np.ones((queries.shape[0], n), bool)  # no radius: every key allowed
    if short_term is None:
        short_term = np.ones((m,), bool)
    return dict(context_feats=feats, context_labels=cast(context_labels, np.float32),
                queries=queries, allowed=cast(allowed, bool), short_term=cast(short_term, bool),
                topk=cast(topk, np.int32), temperature=cast(temperature, np.float32))


class SavedModelRuntime:
    """Runs an exported SavedModel's signatures (TF2 loader).

    Args:
      path: a SavedModel folder or a TF Serving model folder (newest version used).
    Attributes:
      embed(frames uint8 (B, H, W, 3)) -> (B, ceil(H/8), ceil(W/8), C) numpy; the graph
        checks the encoder's smallest size (9 px for reflect padding).
      step: `vote`'s interface through the `propagate` / `propagate_per_frame` signature
        (arrays or tensors in, a tensor out; callable inside a `tf.function`).
      local_step: `vote_local`'s interface through `propagate_local` /
        `propagate_local_per_frame`; None for an export without them.
      label_steps: the two as a `LabelSteps` for `Propagator`.
    """

    def __init__(self, path):
        found = find_saved_model(path)
        if found is None:
            raise ValueError(f"{path}: no saved_model.pb (nor integer version folders with one)")
        self.path = found
        self._loaded = tf.saved_model.load(str(found))
        missing = [s for s in REQUIRED_SIGNATURES if s not in self._loaded.signatures]
        if missing:
            raise ValueError(f"{found}: SavedModel lacks signatures {missing} (not a tc_keras "
                             "export?)")
        if not all(s in self._loaded.signatures for s in LOCAL_SIGNATURES):
            self.local_step = None
        self.label_steps = LabelSteps(f"SavedModel {found}", self.step, self.local_step)

    def embed(self, frames):
        frames = _check_frames(frames)
        try:
            out = self._loaded.signatures["embed"](frames=tf.constant(frames))
        except tf.errors.InvalidArgumentError as e:  # the graph's size check (graphs.py)
            raise ValueError(_error_line(e, frames.shape[1:3], self.path)) from None
        return out["features"].numpy()

    def step(self, context_feats, context_labels, queries, allowed=None, short_term=None, *,
             topk, temperature, joint_topk=True):
        fn = self._loaded.signatures["propagate" if joint_topk else "propagate_per_frame"]
        return fn(**_step_inputs(_as_tensor, context_feats, context_labels, queries, allowed,
                                 short_term, topk, temperature))["labels"]

    def local_step(self, long_feats, long_labels, short_feats, short_labels, queries, key_index,
                   allowed, *, topk, temperature, joint_topk=True):
        fn = self._loaded.signatures[LOCAL_SIGNATURES[0 if joint_topk else 1]]
        return fn(**_local_step_inputs(_as_tensor, long_feats, long_labels, short_feats,
                                       short_labels, queries, key_index, allowed, topk,
                                       temperature))["labels"]


class TFLiteRuntime:
    """Runs an exported .tflite's signatures with ai-edge-litert (inputs resized per call).

    The `embed` graph in TFLite does not check the frame size (the converter drops asserts);
    `embed` here checks H, W >= 8 in Python, and an encoder that needs more (reflect padding:
    9 px) fails in the interpreter, reported as a ValueError naming the size. `step`,
    `local_step` and `label_steps` as `SavedModelRuntime`'s, on NumPy arrays
    (`label_steps.host`). An interpreter runs one call at a time (a compiled step may call it
    from several threads at once): calls take a lock.
    """

    def __init__(self, path, num_threads=None):
        path = pathlib.Path(path)
        try:
            from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415 (optional)
        except ModuleNotFoundError:
            raise ValueError(f"cannot run {path}: install the litert extra (pip install -e "
                             "'.[litert]', or pip install ai-edge-litert)") from None
        if not path.is_file():
            raise ValueError(f"{path}: no such .tflite file")
        self.path = path
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        except ValueError as e:
            raise ValueError(f"{path}: cannot load ({str(e).splitlines()[0]})") from None
        available = self._interpreter.get_signature_list()
        missing = [s for s in REQUIRED_SIGNATURES if s not in available]
        if missing:
            raise ValueError(f"{path}: lacks signatures {missing} (not a tc_keras export?)")
        self._runners = {s: self._interpreter.get_signature_runner(s) for s in SIGNATURES
                         if s in available}
        self._lock = threading.Lock()
        if not all(s in available for s in LOCAL_SIGNATURES):
            self.local_step = None
        self.label_steps = LabelSteps(f"TFLite {path}", self.step, self.local_step, host=True)

    def _run(self, signature, **inputs):
        with self._lock:
            return self._runners[signature](**inputs)

    def embed(self, frames):
        frames = _check_frames(frames)
        try:
            return self._run("embed", frames=frames)["features"]
        except RuntimeError as e:
            raise ValueError(_error_line(e, frames.shape[1:3], self.path)) from None

    def step(self, context_feats, context_labels, queries, allowed=None, short_term=None, *,
             topk, temperature, joint_topk=True):
        inputs = _step_inputs(_as_numpy, context_feats, context_labels, queries, allowed,
                              short_term, topk, temperature)
        return self._run("propagate" if joint_topk else "propagate_per_frame", **inputs)["labels"]

    def local_step(self, long_feats, long_labels, short_feats, short_labels, queries, key_index,
                   allowed, *, topk, temperature, joint_topk=True):
        inputs = _local_step_inputs(_as_numpy, long_feats, long_labels, short_feats,
                                    short_labels, queries, key_index, allowed, topk, temperature)
        return self._run(LOCAL_SIGNATURES[0 if joint_topk else 1], **inputs)["labels"]


def load_runtime(spec, num_threads=None):
    """`SavedModelRuntime` or `TFLiteRuntime` for an exported model path (see `is_export`)."""
    if pathlib.Path(str(spec)).suffix == ".tflite":
        return TFLiteRuntime(spec, num_threads)
    return SavedModelRuntime(spec)
