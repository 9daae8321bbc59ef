"""The radius-restricted label step over key windows (`windows.KeyWindows`): `vote`'s labels, with
its tie order, computing about 1.3-1.7 products per needed one at radius 12 and gathering only the
query frame.

- Long-term frame (the first), dense: every query against its N keys, then `blocked_topk`.
- Short-term frames: each key tile (a x b positions, all S frames: one contiguous block of the
  ring) against its query window, the radius applied as a bias inside the matmul (`windows`); the
  maxima of blocks of b keys (one tile row in one frame), cheap to take over the logits, give each
  query its top-k blocks in `vote`'s order, and its top-k keys come from those.
- The two top-k's merged, the long-term one first: `vote`'s order (first frame, then the ring's
  slots in order, positions row-major).

`WindowStep` holds the tables as tensors and lays out the ring: features (T, a, S, b, C + A)
(each key with the one-hot of its slot in the tile; a tile row's S frames together, so that the
maxima of a block in every frame are one row) and labels (S, N, K).

Shape legend: N = h*w positions, C channels, K label channels, S short-term frames, T key tiles
of A = a*b positions, Q window slots, G blocks of one frame per query, k = top-k.
"""

import numpy as np
import tensorflow as tf
from keras import ops

# Logit of padding blocks: below any logit, masked ones (about windows.MASKED_BIAS) included.
PADDING_LOGIT = -3e4
# With a lower-precision affinity, the candidates taken from each part per key kept, before
# their float32 logits choose the top k.
RESCORED = 2


def long_block(n):
    """Block length for `blocked_topk` over n keys: the divisor of n nearest 32 in [16, 64], else
    n (one block: a plain top-k)."""
    found = [d for d in range(16, 65) if n % d == 0]
    return min(found, key=lambda d: abs(d - 32)) if found else n


def blocked_topk(logits, topk, block):
    """`ops.top_k(logits, topk)` over the last axis (N candidates) from blocks of `block`.

    The k blocks with the largest maxima hold the top k (a tied block of lower index first, as a
    top-k over all takes the lower index); the top k of their candidates, in index order, is the
    answer: the same values and indices, in the same order, without ranking all N.

    Args:
      logits: (Q, N), N a multiple of `block`.
    Returns:
      values (Q, k) descending, indices (Q, k) int32.
    """
    q, n = ops.shape(logits)[0], ops.shape(logits)[1]
    if block >= n:
        values, index = ops.top_k(logits, topk)
        return values, ops.cast(index, "int32")
    count = n // block
    blocked = ops.reshape(logits, (q * count, block))  # (Q, N) -> (Q*Nb, b)
    _, blocks = ops.top_k(ops.reshape(ops.max(blocked, axis=-1), (q, count)), min(topk, count))
    blocks = ops.sort(ops.cast(blocks, "int32"), axis=-1)  # (Q, kb) ascending
    # Rows of `blocked` (a plain gather: take_along_axis would transpose all the logits).
    rows = ops.expand_dims(ops.arange(q, dtype="int32") * count, -1) + blocks  # (Q, kb)
    candidates = ops.take(blocked, rows, axis=0)  # (Q, kb, b)
    values, picked = ops.top_k(ops.reshape(candidates, (q, -1)), topk)  # (Q, kb*b) -> (Q, k)
    index = ops.reshape(ops.expand_dims(blocks, -1) * block + ops.arange(block, dtype="int32"),
                        (q, -1))  # (Q, kb, b) -> (Q, kb*b)
    return values, ops.take_along_axis(index, ops.cast(picked, "int32"), axis=-1)


class WindowStep:
    """`vote` with a radius over key windows, for one map size.

    Args:
      windows: a `windows.KeyWindows` (chunked by `max_logits`).
      n: N positions; short: S short-term frames (the ring's slots).
      max_logits: the most first-frame logits computed at once.
      dtype: of the ring and the affinity matmuls. None: the features' own (float32 in the
        context): `vote`'s labels. "bfloat16" (opt-in): about twice the matmul rate on CPUs
        with AVX512-BF16; RESCORED * k candidates of each part are chosen by bfloat16 logits (8
        significant bits: near ties may pick other keys than `vote`), and the top k of them by
        the float32 products of the queries with the bfloat16-stored keys, which weigh them.

    `__call__(long_feats (N, C), long_labels (N, K), ring_feats, ring_labels, queries (N, C),
    topk, temperature)` returns the labels (N, K) of `vote(concat([long, ring frames]), ...,
    radius_mask, short_term=[False] + [True] * S)`.
    """

    def __init__(self, windows, n, short, max_logits, dtype=None):
        self.windows, self.n, self.short, self.dtype = windows, n, short, dtype
        self.long_rows = max(1, max_logits // n)
        a, b = windows.tile
        slots = a * b
        self.block = long_block(n)
        self.query_index = [tf.constant(windows.query_index[t0:t1, :q])
                            for t0, t1, q in windows.chunks]
        self.bias = [tf.constant(windows.bias[t0:t1, :q]) for t0, t1, q in windows.chunks]
        # Each query's blocks of one frame (window row w, tile row i: row w * a + i of the block
        # maxima; the padding row past the last).
        self.block_index = tf.constant(windows.block_index, tf.int32)
        # Per window row: its tile (for key positions) and where its chunk starts.
        tile_of_row, chunk_start, start = [], [], 0
        for t0, t1, q in windows.chunks:
            tile_of_row.append(np.repeat(np.arange(t0, t1), q))
            chunk_start.append(start)
            start += (t1 - t0) * q
        self.chunk_start = chunk_start
        self.tile_of_row = tf.constant(np.concatenate(tile_of_row + [[0]]), tf.int32)
        self.key_position = tf.constant(np.maximum(windows.key_position, 0).ravel(), tf.int32)
        # Tile-major order of the positions (past the edge: row n, a zero row appended) and the
        # one-hot of each key's slot in its tile: the ring's layout.
        order = np.where(windows.key_position >= 0, windows.key_position, n)
        self.tile_order = tf.constant(order.ravel(), tf.int32)  # (T*A,)
        self.slot_one_hot = tf.constant(np.tile(np.eye(slots, dtype=np.float32),
                                                (len(order), 1, 1)))  # (T, A, A)

    def ring_frame(self, feats):
        """(N, C) features -> (T*a, b, C + A): one frame as the ring stores it, tile row by tile
        row (the ring: (T, a, S, b, C + A), so that a block's S frames are one row of maxima)."""
        a, b = self.windows.tile
        channels = ops.shape(feats)[1]
        feats = ops.concatenate([feats, ops.zeros((1, channels), feats.dtype)], 0)
        tiles = ops.reshape(ops.take(feats, self.tile_order, axis=0),
                            (-1, a * b, channels))  # (T*A, C) -> (T, A, C)
        dtype = self.dtype or feats.dtype
        tiles = ops.concatenate([ops.cast(tiles, dtype), ops.cast(self.slot_one_hot, dtype)], -1)
        return ops.reshape(tiles, (-1, b, channels + a * b))

    def ring(self, frames):
        """(S, N, C) features of the ring's frames, slot order -> the ring (T, a, S, b, C + A)."""
        a, _ = self.windows.tile
        rows = [self.ring_frame(frame) for frame in frames]  # S x (T*a, b, C + A)
        ring = ops.stack(rows, 1)  # (T*a, S, b, C + A)
        return ops.reshape(ring, (-1, a, *ring.shape[1:]))  # -> (T, a, S, b, C + A)

    def __call__(self, long_feats, long_labels, ring_feats, ring_labels, queries, *, topk,
                 temperature):
        queries = queries / temperature  # as `vote`: scaled queries, not scaled logits
        low = queries if self.dtype is None else ops.cast(queries, self.dtype)
        # In a lower precision, RESCORED times k candidates from each part, scored again.
        chosen = topk if self.dtype is None else min(RESCORED * topk, self.n)
        long_values, long_index = self._long(ops.cast(long_feats, low.dtype), low, chosen)
        short_values, short_index, short_rows = self._short(ring_feats, low, chosen)
        if self.dtype is not None:  # the chosen keys' logits again, in the queries' dtype
            long_values = ops.einsum("qc,qkc->qk", queries,
                                     ops.take(long_feats, long_index, axis=0))
            keys = ops.take(ops.reshape(ring_feats, (-1, ops.shape(ring_feats)[-1])), short_rows,
                            axis=0)[..., :ops.shape(queries)[-1]]  # (N, k, C): slot channels cut
            short_values = ops.einsum("qc,qkc->qk", queries, ops.cast(keys, queries.dtype))
        # Merged, long-term first (`vote`'s order); labels by `vote`'s flat index.
        values, picked = ops.top_k(ops.concatenate([long_values, short_values], -1), topk)
        index = ops.take_along_axis(ops.concatenate([long_index, short_index], -1),
                                    ops.cast(picked, "int32"), axis=-1)  # (N, k)
        labels = ops.concatenate([long_labels, ops.reshape(ring_labels,
                                                           (-1, ops.shape(long_labels)[-1]))], 0)
        weights = ops.softmax(values, axis=-1)
        return ops.einsum("qk,qkl->ql", weights, ops.take(labels, index, axis=0))

    def _long(self, long_feats, queries, topk):
        """Top-k of the first frame for every query: values (N, k), flat indices (N, k)."""
        # Queries in chunks of the logits bound: (Nq, C) x (N, C) -> (Nq, N).
        n, rows = self.n, self.long_rows
        out = [blocked_topk(ops.matmul(queries[i:i + rows], ops.transpose(long_feats)), topk,
                            self.block) for i in range(0, n, rows)]
        return (ops.concatenate([v for v, _ in out], 0), ops.concatenate([i for _, i in out], 0))

    def _short(self, ring_feats, queries, topk):
        """Top-k of the ring's frames within the radius: values (N, k), flat indices (N, k), and
        the rows of the ring holding their keys (N, k)."""
        a, b = self.windows.tile
        s, n = self.short, self.n
        logits, maxima = [], []
        for (t0, t1, q), index, bias in zip(self.windows.chunks, self.query_index, self.bias):
            window = ops.concatenate([ops.take(queries, index, axis=0),
                                      ops.cast(bias, queries.dtype)], -1)  # (Tc, Qc, C+A)
            keys = ops.reshape(ring_feats[t0:t1], (t1 - t0, a * s * b, -1))  # (Tc, a*S*b, C+A)
            chunk = ops.einsum("tqc,tkc->tqk", window, keys)  # (Tc, Qc, a*S*b)
            chunk = ops.reshape(chunk, (-1, b))  # (Tc*Qc*a*S, b): blocks of b keys
            logits.append(chunk)
            maxima.append(ops.reshape(ops.max(chunk, axis=-1), (-1, s)))  # (Tc*Qc*a, S)
        maxima.append(ops.full((1, s), PADDING_LOGIT, queries.dtype))  # the padding row
        maxima = ops.concatenate(maxima, 0)
        # Each query's blocks in `vote`'s order, frame by frame: (N, G, S) -> (N, S, G) -> (N, S*G).
        g = ops.shape(self.block_index)[1]
        blocks = ops.take(maxima, self.block_index, axis=0)
        blocks = ops.reshape(ops.transpose(blocks, (0, 2, 1)), (n, -1))
        _, chosen = ops.top_k(blocks, min(topk, s * g))
        chosen = ops.sort(ops.cast(chosen, "int32"), axis=-1)  # (N, kb) in `vote`'s order
        frame = chosen // g
        block = ops.take_along_axis(self.block_index, chosen % g, axis=-1)  # w * a + i
        # The candidates of each chosen block, from the chunk holding its window row.
        candidates = PADDING_LOGIT  # padding blocks keep it
        for start, chunk in zip(self.chunk_start, logits):
            count = ops.shape(chunk)[0] // (a * s)  # its window rows
            local = ops.clip(block - start * a, 0, count * a - 1)
            got = ops.take(chunk, local * s + frame, axis=0)  # (N, kb, b)
            inside = ops.expand_dims((block >= start * a) & (block < (start + count) * a), -1)
            candidates = ops.where(inside, got, candidates)
        # (N, kb*b) -> (N, k); fewer when there are fewer candidates (the first frame has k).
        candidates = ops.reshape(candidates, (n, -1))
        values, picked = ops.top_k(candidates, min(topk, candidates.shape[-1]))
        picked = ops.cast(picked, "int32")
        block = ops.take_along_axis(block, picked // b, axis=-1)
        frame = ops.take_along_axis(frame, picked // b, axis=-1)
        tile = ops.take(self.tile_of_row, block // a, axis=0)
        slot = (block % a) * b + picked % b
        position = ops.take(self.key_position, tile * (a * b) + slot, axis=0)
        row = ((tile * a + block % a) * s + frame) * b + picked % b  # ring (T, a, S, b) flat
        return values, n + frame * n + position, row  # flat label index after the first frame
