"""The context of label propagation: the first frame and a ring of the recent frames, and the label
step over it, in chunks that bound its memory.

One implementation, `Context`, for every runtime: the context is TensorFlow variables and each
frame runs one compiled step (`tf.function`, shapes fixed per video) that reads the context in
place, computes the query frame's labels and writes the frame into the ring, overwriting the
oldest. Nothing of the context is copied between Python and TensorFlow per frame.

Which functions compute the labels is chosen explicitly, by a `LabelSteps`:

- `KERAS`: with a radius and the joint top-k, `window_step.WindowStep` (key tiles against query
  windows); with a radius and per-frame top-k, `label_step.vote_local`; `vote` without a radius.
  Traced into the step: the fast path, and the default.
- `DENSE`: `vote` everywhere, with the dense radius mask: the reference the others are held to.
- an exported model's steps (`tc_keras.export.runtimes`, `runtime.label_steps`): a SavedModel's
  signatures are TensorFlow functions and are traced into the step as they are; a TFLite
  interpreter takes NumPy arrays and runs inside the step through `tf.numpy_function` (`host`).

The ring is position-major, (N, S, C), the layout `vote_local` gathers regions from (the key
windows lay it out their own way: `window_step`); at the start every slot holds a copy of the
first frame (docs/METHOD.md, "CRW protocol"); slot (t - 1) % S
holds frame t, so the context frames are ordered (first, slot 0, ..., slot S-1), as `vote` breaks
ties.

Shape legend: N = h*w positions, S short-term (recent) frames, C channels, K label channels,
M = 1 + S context frames, Q query positions, T tiles of P query positions, R region slots.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tc_keras.propagation.label_step import minmax_normalize, vote, vote_local
from tc_keras.propagation.tiles import local_tiles, radius_mask
from tc_keras.propagation.window_step import WindowStep
from tc_keras.propagation.windows import key_windows

# Upper bound on the number of logits (M * Q * N, or their local equivalent) and of gathered key
# features (`vote_local`) computed at once; bounds the step's memory.
MAX_LOGITS = 2 ** 25


def dense_chunk(m, n):
    """Query positions per call of the dense step over M frames of N positions."""
    return max(1, MAX_LOGITS // (m * n))


def local_chunk(tiles, n, short, channels, n_long=1):
    """Tiles per call of the local step: logits P * (L*N + S*R), gathered features S * R * C."""
    p, r = tiles.query_index.shape[1], tiles.key_index.shape[1]
    return max(1, MAX_LOGITS // max(p * (n_long * n + short * r), short * r * channels))


@dataclasses.dataclass(frozen=True)
class LabelSteps:
    """The label-step functions a `Context` runs, and how it calls them.

    Attributes:
      name: shown in errors and figures.
      step: the dense step, `label_step.vote`'s interface, returning (Q, K): used without a radius
        (or without short-term frames), and with a radius when `local_step` is None.
      local_step: the radius-restricted step, `label_step.vote_local`'s interface, returning
        (T, P, K); None = `step` with the dense radius mask (same labels, slower).
      host: False: the functions take and return TensorFlow tensors and are traced into the
        compiled step. True: they take and return NumPy arrays (a TFLite interpreter) and run
        inside the step through `tf.numpy_function`.
      windows: with a radius and the joint top-k, run `window_step.WindowStep` (key tiles
        against query windows; the same labels as `local_step`, faster) instead of
        `local_step`: TensorFlow only (the context lays out its ring for it).
      affinity: the dtype of the key windows' ring and matmuls: None (float32), or "bfloat16"
        (opt-in, `KERAS_BFLOAT16`: faster on CPUs with AVX512-BF16, masks differ slightly from
        `vote`'s; see `WindowStep`).
    """

    name: str
    step: Callable
    local_step: Callable | None = None
    host: bool = False
    windows: bool = False
    affinity: str | None = None


KERAS = LabelSteps("keras", vote, vote_local, windows=True)
KERAS_BFLOAT16 = LabelSteps("keras bfloat16", vote, vote_local, windows=True,
                            affinity="bfloat16")
DENSE = LabelSteps("dense", vote)


def _caller(steps, fn, shape, **kwargs):
    """`fn(*tensors, **kwargs)` as graph ops with the static output `shape`."""
    if not steps.host:
        return lambda *args: tf.ensure_shape(fn(*args, **kwargs), shape)

    def run(*args):
        given = [i for i, a in enumerate(args) if a is not None]  # None (no radius) stays None

        def call(*arrays):
            full = [None] * len(args)
            for i, a in zip(given, arrays):
                full[i] = a
            return np.asarray(fn(*full, **kwargs), np.float32)

        out = tf.numpy_function(call, [args[i] for i in given], tf.float32, stateful=False)
        return tf.ensure_shape(out, shape)
    return run


class Context(tf.Module):
    """The context of one video as graph state, with its compiled label step.

    Args:
      first_feats: (N, C) L2-normalised features of the first frame.
      first_labels: (N, K) its labels.
      height, width: the feature map size (N = height * width).
      config: a `tc_keras.propagation.presets.PropagationConfig`.
      steps: a `LabelSteps` (`KERAS`, `DENSE` or an exported runtime's `label_steps`).

    `step(query (N, C))` returns the query frame's labels (N, K) (min-max normalised when the
    config says so) and writes the frame into the ring. The buffers have fixed shapes (`nbytes`):
    memory does not grow with the video.
    """

    def __init__(self, first_feats, first_labels, height, width, config, steps=KERAS):
        super().__init__(name="context")
        if not isinstance(steps, LabelSteps):
            raise TypeError(f"steps must be a LabelSteps (context.KERAS, context.DENSE or an "
                            f"exported runtime's label_steps), got {type(steps).__name__}")
        first_feats = tf.convert_to_tensor(first_feats, tf.float32)
        first_labels = tf.convert_to_tensor(first_labels, tf.float32)
        n, channels = first_feats.shape
        if n != height * width:
            raise ValueError(f"first_feats has {n} positions, expected {height}x{width}")
        short = config.context
        self.config, self.steps = config, steps
        self.first_feats = tf.Variable(first_feats[None], trainable=False)  # (1, N, C)
        self.first_labels = tf.Variable(first_labels[None], trainable=False)  # (1, N, K)
        self.slot = tf.Variable(0, trainable=False)
        kwargs = dict(topk=min(config.topk, n), temperature=config.temperature,
                      joint_topk=config.joint_topk)
        restricted = config.radius is not None and short
        if restricted and steps.windows and config.joint_topk and not steps.host:
            label_step, write = self._windows(height, width, first_feats, first_labels, kwargs)
        else:
            # (N, C) -> (N, S, C): every slot a copy of the first frame, position-major.
            self.feats = tf.Variable(tf.repeat(first_feats[:, None], short, axis=1),
                                     trainable=False)
            self.labels = tf.Variable(tf.repeat(first_labels[:, None], short, axis=1),
                                      trainable=False)
            if restricted and steps.local_step is not None:
                label_step = self._local(height, width, channels, kwargs)
            else:
                label_step = self._dense(height, width, kwargs)
            positions = tf.range(n)

            def write(query, pred):
                # Ring slot `slot` of every position; a scatter updates in place (a
                # strided-slice assignment would copy the whole ring after the step's gathers).
                index = tf.stack([positions, tf.fill([n], self.slot)], -1)  # (N, 2)
                self.feats.scatter_nd_update(index, query)
                self.labels.scatter_nd_update(index, pred)

        def step(query):
            pred = label_step(query)
            if config.minmax:
                pred = minmax_normalize(pred)
            if short:
                write(query, pred)
                self.slot.assign((self.slot + 1) % short)
            return pred

        self.step = tf.function(step, input_signature=[tf.TensorSpec((n, channels), tf.float32)])

    @property
    def nbytes(self):
        """Bytes held by the context's buffers (the first frame and the ring)."""
        buffers = (self.first_feats, self.first_labels, self.feats, self.labels)
        return sum(int(np.prod(v.shape)) * v.dtype.size for v in buffers)

    def _local(self, height, width, channels, kwargs):
        n, short, k = height * width, self.config.context, self.first_labels.shape[-1]
        tiles = local_tiles(height, width, self.config.radius, strict=self.config.strict_radius)
        chunk = local_chunk(tiles, n, short, channels)
        query_index = tf.constant(tiles.query_index)
        key_index = tf.constant(tiles.key_index)
        allowed = tf.constant(tiles.allowed)
        slot = tf.constant(tiles.slot)
        count, p = tiles.query_index.shape

        def label_step(query):
            queries = tf.gather(query, query_index)  # (N, C) -> (T, P, C)
            out = []
            for i in range(0, count, chunk):
                size = min(chunk, count - i)
                run = _caller(self.steps, self.steps.local_step, (size, p, k), **kwargs)
                out.append(run(self.first_feats, self.first_labels, self.feats, self.labels,
                               queries[i:i + size], key_index[i:i + size],
                               allowed[i:i + size]))
            out = tf.concat(out, 0)  # (T, P, K)
            return tf.gather(tf.reshape(out, (-1, k)), slot)  # (T*P, K) -> (N, K)
        return label_step

    def _windows(self, height, width, first_feats, first_labels, kwargs):
        """The ring in `window_step`'s layout; its label step and ring write."""
        n, short = height * width, self.config.context
        steps = WindowStep(key_windows(height, width, self.config.radius, short, MAX_LOGITS,
                                       strict=self.config.strict_radius),
                           n, short, MAX_LOGITS, self.steps.affinity)
        # (T*a, b, C + A) -> (T, a, S, b, C + A) and (N, K) -> (S, N, K): every slot the first
        # frame.
        self.feats = tf.Variable(steps.ring(tf.repeat(first_feats[None], short, 0)),
                                 trainable=False)
        self.labels = tf.Variable(tf.repeat(first_labels[None], short, 0), trainable=False)
        # Ring rows (tile, tile row) of the slot written: (T*a, 3) with the slot last.
        tiles, a = self.feats.shape[:2]
        rows = np.stack(np.divmod(np.arange(tiles * a), a), -1).astype(np.int32)

        def label_step(query):
            # One dense read of the ring: the scatter below puts the variable in TensorFlow's
            # copy-on-read mode, where every read copies it (slices of this one then alias it).
            return steps(self.first_feats[0], self.first_labels[0], self.feats.value(),
                         self.labels.value(), query, topk=kwargs["topk"],
                         temperature=kwargs["temperature"])

        def write(query, pred):
            index = tf.concat([rows, tf.fill((len(rows), 1), self.slot)], -1)  # (T*a, 3)
            self.feats.scatter_nd_update(index, steps.ring_frame(query))
            self.labels.scatter_nd_update(self.slot[None, None], pred[None])
        return label_step, write

    def _dense(self, height, width, kwargs):
        n, short, k = height * width, self.config.context, self.first_labels.shape[-1]
        short_term = tf.range(1 + short) > 0
        chunk = dense_chunk(1 + short, n)
        # The radius as a dense (N, N) mask: only when there is no local step to exploit it.
        allowed = None
        if self.config.radius is not None and short:
            allowed = tf.constant(radius_mask(height, width, self.config.radius,
                                              self.config.strict_radius))

        def label_step(query):
            # (1, N, C) + (N, S, C) -> (M, N, C), slot order kept.
            feats = tf.concat([self.first_feats, tf.transpose(self.feats, (1, 0, 2))], 0)
            labels = tf.concat([self.first_labels, tf.transpose(self.labels, (1, 0, 2))], 0)
            out = []
            for i in range(0, n, chunk):
                size = min(chunk, n - i)
                run = _caller(self.steps, self.steps.step, (size, k), **kwargs)
                rows = None if allowed is None else allowed[i:i + size]
                out.append(run(feats, labels, query[i:i + size], rows, short_term))
            return tf.concat(out, 0)
        return label_step
