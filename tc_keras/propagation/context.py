"""The context of label propagation: the first frame and a ring of the recent frames, and the label
step over it, in chunks that bound its memory.

`GraphContext` keeps the context as TensorFlow variables and runs one compiled step per frame
(`tf.function`, shapes fixed per video): the step reads the context in place, computes the query
frame's labels (`label_step.vote_local` with a radius, `label_step.vote` without) and writes the
frame into the ring, overwriting the oldest. Nothing of the context is copied between Python and
TensorFlow per frame. `NumpyContext` does the same with NumPy buffers around any step callable with
the interface of `vote` / `vote_local`: what an exported model's runtimes run (tc_keras.export.runtimes).

Both keep the ring position-major, (N, S, C), the layout `vote_local` gathers regions from, and fill
it at the start with copies of the first frame (docs/METHOD.md, "CRW protocol"); slot (t - 1) % S holds frame t, so the
context frames are ordered (first, slot 0, ..., slot S-1), as `vote` breaks ties.

Shape legend: N = h*w positions, S short-term (recent) frames, C channels, K label channels,
M = 1 + S context frames, T tiles of P query positions, R region slots.
"""

import numpy as np
import tensorflow as tf

from tc_keras.propagation.label_step import minmax_normalize, vote, vote_local
from tc_keras.propagation.tiles import local_tiles, radius_mask

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


def _step_kwargs(config, n):
    return dict(topk=min(config.topk, n), temperature=config.temperature,
                joint_topk=config.joint_topk)


class GraphContext(tf.Module):
    """The context of one video as graph state, with its compiled label step.

    Args:
      first_feats: (N, C) L2-normalised features of the first frame.
      first_labels: (N, K) its labels.
      height, width: the feature map size (N = height * width).
      config: a `tc_keras.propagation.presets.PropagationConfig`.

    `step(query (N, C))` returns the query frame's labels (N, K) (min-max normalised when the
    config says so) and writes the frame into the ring.
    """

    def __init__(self, first_feats, first_labels, height, width, config):
        super().__init__(name="graph_context")
        first_feats = tf.convert_to_tensor(first_feats, tf.float32)
        first_labels = tf.convert_to_tensor(first_labels, tf.float32)
        n, channels = first_feats.shape
        short = config.context
        self.config = config
        self.first_feats = tf.Variable(first_feats[None], trainable=False)  # (1, N, C)
        self.first_labels = tf.Variable(first_labels[None], trainable=False)  # (1, N, K)
        # (N, C) -> (N, S, C): every slot a copy of the first frame.
        self.feats = tf.Variable(tf.repeat(first_feats[:, None], max(short, 1), axis=1),
                                 trainable=False)
        self.labels = tf.Variable(tf.repeat(first_labels[:, None], max(short, 1), axis=1),
                                  trainable=False)
        self.slot = tf.Variable(0, trainable=False)
        kwargs = _step_kwargs(config, n)
        positions = tf.range(n)
        if config.radius is not None and short:
            label_step = self._local(height, width, n, short, channels, kwargs)
        else:
            label_step = self._dense(n, short, kwargs)  # no radius (or no short-term frame)

        def step(query):
            pred = label_step(query)
            if config.minmax:
                pred = minmax_normalize(pred)
            if short:
                # Ring slot `slot` of every position; a scatter updates in place (a strided-slice
                # assignment would copy the whole ring after the step's gathers).
                index = tf.stack([positions, tf.fill([n], self.slot)], -1)  # (N, 2)
                self.feats.scatter_nd_update(index, query)
                self.labels.scatter_nd_update(index, pred)
                self.slot.assign((self.slot + 1) % short)
            return pred

        self.step = tf.function(step, input_signature=[tf.TensorSpec((n, channels), tf.float32)])

    def _local(self, height, width, n, short, channels, kwargs):
        tiles = local_tiles(height, width, self.config.radius, strict=self.config.strict_radius)
        chunk = local_chunk(tiles, n, short, channels)
        query_index = tf.constant(tiles.query_index)
        key_index = tf.constant(tiles.key_index)
        allowed = tf.constant(tiles.allowed)
        slot = tf.constant(tiles.slot)
        count = tiles.query_index.shape[0]

        def label_step(query):
            queries = tf.gather(query, query_index)  # (N, C) -> (T, P, C)
            out = [vote_local(self.first_feats, self.first_labels, self.feats, self.labels,
                              queries[i:i + chunk], key_index[i:i + chunk],
                              allowed[i:i + chunk], **kwargs)
                   for i in range(0, count, chunk)]
            out = tf.concat(out, 0)  # (T, P, K)
            return tf.gather(tf.reshape(out, (-1, out.shape[-1])), slot)  # (T*P, K) -> (N, K)
        return label_step

    def _dense(self, n, short, kwargs):
        short_term = tf.range(1 + short) > 0
        chunk = dense_chunk(1 + short, n)

        def label_step(query):
            # (1, N, C) + (N, S, C) -> (M, N, C), slot order kept.
            feats = tf.concat([self.first_feats, tf.transpose(self.feats, (1, 0, 2))[:short]], 0)
            labels = tf.concat([self.first_labels,
                                tf.transpose(self.labels, (1, 0, 2))[:short]], 0)
            out = [vote(feats, labels, query[i:i + chunk], None, short_term, **kwargs)
                   for i in range(0, n, chunk)]
            return tf.concat(out, 0)
        return label_step


class NumpyContext:
    """The context in NumPy buffers, for label steps that take arrays (exported runtimes).

    Args:
      first_feats, first_labels, height, width, config: as `GraphContext`.
      step: the dense label step, `vote`'s interface, returning (Q, K).
      local_step: the radius-restricted step, `vote_local`'s interface, returning (T, P, K), or
        None (then `step` runs with the dense radius mask: same labels, slower).
    """

    def __init__(self, first_feats, first_labels, height, width, config, step, local_step=None):
        first_feats = np.asarray(first_feats, np.float32)
        first_labels = np.asarray(first_labels, np.float32)
        n, channels = first_feats.shape
        short = config.context
        self.config = config
        self.first_feats, self.first_labels = first_feats[None], first_labels[None]
        self.feats = np.repeat(first_feats[:, None], short, axis=1)  # (N, S, C)
        self.labels = np.repeat(first_labels[:, None], short, axis=1)  # (N, S, K)
        self.frames = 0
        self.kwargs = _step_kwargs(config, n)
        self.step_fn, self.local_step = step, local_step
        self.tiles = self.allowed = None
        if config.radius is not None and short and local_step is not None:
            self.tiles = local_tiles(height, width, config.radius, strict=config.strict_radius)
            self.chunk = local_chunk(self.tiles, n, short, channels)
        elif config.radius is not None and short:
            self.allowed = radius_mask(height, width, config.radius, config.strict_radius)

    def step(self, query):
        """Labels (N, K) of a query frame (N, C); the frame then enters the ring."""
        query = np.asarray(query, np.float32)
        pred = self._local(query) if self.tiles is not None else self._dense(query)
        if self.config.minmax:
            pred = np.asarray(minmax_normalize(pred))
        short = self.config.context
        if short:
            slot = self.frames % short
            self.feats[:, slot] = query
            self.labels[:, slot] = pred
        self.frames += 1
        return pred

    def _dense(self, query):
        # (N, S, C) -> (S, N, C) after the first frame (1, N, C): (M, N, C), slot order kept.
        feats = np.concatenate([self.first_feats, self.feats.transpose(1, 0, 2)], 0)
        labels = np.concatenate([self.first_labels, self.labels.transpose(1, 0, 2)], 0)
        m, n, _ = feats.shape
        short_term = np.arange(m) > 0
        chunk = dense_chunk(m, n)
        out = []
        for start in range(0, n, chunk):
            rows = None if self.allowed is None else self.allowed[start:start + chunk]
            out.append(np.asarray(self.step_fn(feats, labels, query[start:start + chunk], rows,
                                               short_term, **self.kwargs)))
        return np.concatenate(out, 0)

    def _local(self, query):
        tiles, chunk = self.tiles, self.chunk
        queries = query[tiles.query_index]  # (N, C) -> (T, P, C)
        out = [np.asarray(self.local_step(
            self.first_feats, self.first_labels, self.feats, self.labels,
            queries[i:i + chunk], tiles.key_index[i:i + chunk], tiles.allowed[i:i + chunk],
            **self.kwargs)) for i in range(0, len(queries), chunk)]
        out = np.concatenate(out, 0)  # (T, P, K)
        return out.reshape(-1, out.shape[-1])[tiles.slot]  # (T*P, K) -> (N, K)
