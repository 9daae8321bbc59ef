"""The pure label step of propagation: labels of a query frame from context frames by affinity.

Written with `keras.ops` only: batched, fixed-rank tensors, no data-dependent Python control flow,
so `propagate_step` can be traced into a SavedModel / TFLite signature as it is. The spatial-radius
restriction is a precomputed boolean tensor (`radius_mask`), not a loop.

Two forms of the same step:

- `vote`: dense, every query against every key of every context frame, keys outside the radius
  masked. Simple; the reference.
- `vote_local`: the same result with the radius exploited. Queries come in tiles of ty x tx
  positions (`LocalTiles`); for the short-term (radius-restricted) frames a tile is matched only
  against its key region, the (ty + 2r) x (tx + 2r) block of positions that holds every key within
  the radius of any of its queries (r = floor(radius)), gathered with a precomputed index; the
  long-term frames (the first) stay dense. At 480p (60x107 features, r = 12, 8x8 tiles) that is
  20 x 1024 + 6420 logits per query instead of 21 x 6420. Candidates are laid out in `vote`'s
  order (long-term frames, then each short-term frame's region in increasing position), so the
  top-k breaks ties as `vote` does.

Shape legend: M context frames (L long-term + S short-term), h w feature size, N = h*w,
Q query positions, T tiles of P = ty*tx query positions, R key-region positions per tile,
C channels, K label channels.
"""

import dataclasses

import numpy as np
from keras import ops

# Added to the logits of keys outside the spatial radius: exp(-1e4) is exactly 0 in float32.
MASKED_LOGIT = -1e4


# Query tile (ty, tx) of `vote_local`. Smaller tiles waste fewer keys ((ty + 2r)(tx + 2r) region
# vs the (2r + 1)^2 window) but gather more key features per query (R / P copies of the context).
# Label step at 480p, r = 12, 2 CPU cores: 8x8 2.4 s/frame, 12x12 2.3, 6x6 2.8, 4x4 4.4, and
# whole-row bands (1 x w, R = 25 rows x 107) 7.5 (dense `vote`: ~8.5).
LOCAL_TILE = (8, 8)


def _within(query_yx, key_yx, radius):
    """Bool (..., Q, R): key within `radius` of query, from (..., Q, 2) and (..., R, 2) cells."""
    d2 = np.sum((query_yx[..., :, None, :].astype(np.float32)
                 - key_yx[..., None, :, :].astype(np.float32)) ** 2, -1)
    return d2 <= float(radius) ** 2


def radius_mask(height, width, radius):
    """(N, N) bool: key position within `radius` feature cells of the query position (Euclidean).

    Rows are query positions, columns key positions, both row-major (y * width + x).
    """
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    pos = np.stack([ys.ravel(), xs.ravel()], -1)  # (N, 2)
    return _within(pos, pos, radius)


@dataclasses.dataclass(frozen=True)
class LocalTiles:
    """Precomputed tiling of an h x w feature map for `vote_local` (numpy; see `local_tiles`).

    Attributes:
      query_index: (T, P) int32 flat query positions of each tile, row-major within the tile.
        Tiles at the bottom/right edge are padded with repeats of their own last row/column.
      key_index: (T, R) int32 flat key positions of each tile's key region, increasing.
      allowed: (T, P, R) bool, region key within the radius of the tile query.
      slot: (N,) int32, for each position its index into the flattened (T*P) tile outputs.
    """

    query_index: np.ndarray
    key_index: np.ndarray
    allowed: np.ndarray
    slot: np.ndarray


def local_tiles(height, width, radius, tile=LOCAL_TILE):
    """`LocalTiles` for an h x w feature map, a radius in feature cells and a (ty, tx) tile.

    A tile's key region is (ty + 2r) x (tx + 2r) positions (r = floor(radius)), or the whole
    height/width where the map is smaller, shifted inside the map at its borders: one size R for
    all tiles, and it holds every key within the radius of any query of the tile.
    """
    ty, tx = min(tile[0], height), min(tile[1], width)
    r = int(np.floor(radius))
    ry, rx = min(ty + 2 * r, height), min(tx + 2 * r, width)  # region size
    query_index, key_index, query_yx, key_yx = [], [], [], []
    for y0 in range(0, height, ty):
        for x0 in range(0, width, tx):
            qy, qx = np.meshgrid(np.minimum(np.arange(y0, y0 + ty), height - 1),
                                 np.minimum(np.arange(x0, x0 + tx), width - 1), indexing="ij")
            oy, ox = np.clip(y0 - r, 0, height - ry), np.clip(x0 - r, 0, width - rx)
            ky, kx = np.meshgrid(np.arange(oy, oy + ry), np.arange(ox, ox + rx), indexing="ij")
            query_index.append((qy * width + qx).ravel())
            key_index.append((ky * width + kx).ravel())
            query_yx.append(np.stack([qy.ravel(), qx.ravel()], -1))
            key_yx.append(np.stack([ky.ravel(), kx.ravel()], -1))
    query_index = np.stack(query_index).astype(np.int32)  # (T, P)
    # A position repeated as padding takes the output of its first (real) occurrence.
    _, slot = np.unique(query_index.ravel(), return_index=True)  # (N,), positions in order
    return LocalTiles(query_index=query_index,
                      key_index=np.stack(key_index).astype(np.int32),
                      allowed=_within(np.stack(query_yx), np.stack(key_yx), radius),
                      slot=slot.astype(np.int32))


# ----------------------------------------------------------------------------------------------
# The pure label step
# ----------------------------------------------------------------------------------------------

def vote(context_feats, context_labels, queries, allowed=None, short_term=None, *, topk,
         temperature, joint_topk=True):
    """Labels of Q query positions from M context frames (the core of the label step).

    Args:
      context_feats: (M, N, C) L2-normalised context features.
      context_labels: (M, N, K) context labels (one-hot, soft, or heatmaps).
      queries: (Q, C) L2-normalised query features.
      allowed: optional (Q, N) bool, key n is within the spatial radius of query q.
      short_term: optional (M,) bool, context frames that `allowed` applies to.
      topk, temperature, joint_topk: see `PropagationConfig` (python values).
    Returns:
      (Q, K) propagated labels.
    """
    m = ops.shape(context_feats)[0]
    n = ops.shape(context_feats)[1]
    k_labels = ops.shape(context_labels)[-1]
    q = ops.shape(queries)[0]
    logits = ops.einsum("qc,mnc->qmn", queries, context_feats) / temperature  # (Q, M, N)
    if allowed is not None:
        if short_term is None:
            short_term = ops.ones((m,), "bool")
        blocked = ops.logical_and(ops.reshape(short_term, (1, -1, 1)),
                                  ops.logical_not(ops.expand_dims(allowed, 1)))  # (Q, M, N)
        logits = ops.where(blocked, ops.cast(MASKED_LOGIT, logits.dtype), logits)
    # (M, N, K) -> (M*N, K): labels addressed by a flat key index m*N + n
    flat_labels = ops.reshape(context_labels, (-1, k_labels))
    if joint_topk:
        values, index = ops.top_k(ops.reshape(logits, (q, -1)), topk)  # (Q, M*N) -> (Q, k)
        weights = ops.softmax(values, axis=-1)
        picked = ops.take(flat_labels, index, axis=0)  # (Q, k, K)
        return ops.einsum("qk,qkl->ql", weights, picked)
    probs = ops.softmax(logits, axis=-1)  # (Q, M, N), each frame on its own
    values, index = ops.top_k(probs, topk)  # (Q, M, k)
    offset = ops.reshape(ops.arange(m, dtype=index.dtype) * ops.cast(n, index.dtype), (1, -1, 1))
    picked = ops.take(flat_labels, index + offset, axis=0)  # (Q, M, k, K)
    return ops.mean(ops.einsum("qmk,qmkl->qml", values, picked), axis=1)


def vote_local(long_feats, long_labels, short_feats, short_labels, queries, key_index, allowed,
               *, topk, temperature, joint_topk=True):
    """`vote` for tiles of queries, short-term frames matched only within their key regions.

    Equals `vote(concat([long_feats, short_feats.transpose(1, 0, 2)]), (labels likewise), q,
    radius_mask rows of q, short_term=[False] * L + [True] * S)` for the queries q of each tile, up
    to float rounding (see the module docstring); `local_tiles` gives `key_index` and `allowed`.
    Short-term frames are laid out position-major, (N, S, C): a region gathers N-rows of S*C
    contiguous floats, several times faster than S separate gathers of C floats.

    Args:
      long_feats: (L, N, C) L2-normalised features of the unrestricted context frames (the first).
      long_labels: (L, N, K) their labels.
      short_feats: (N, S, C) features of the radius-restricted (short-term) context frames.
      short_labels: (N, S, K) their labels.
      queries: (T, P, C) L2-normalised query features, tile by tile (`LocalTiles.query_index`).
      key_index: (T, R) int32 flat key positions of each tile's region (`LocalTiles.key_index`).
      allowed: (T, P, R) bool, region key within the radius of the query (`LocalTiles.allowed`).
      topk, temperature, joint_topk: see `PropagationConfig` (python values or scalar tensors).
    Returns:
      (T, P, K) propagated labels.
    """
    n_long, n, c = ops.shape(long_feats)[0], ops.shape(long_feats)[1], ops.shape(long_feats)[2]
    n_short = ops.shape(short_feats)[1]
    k_labels = ops.shape(long_labels)[-1]
    t, p = ops.shape(queries)[0], ops.shape(queries)[1]
    r = ops.shape(key_index)[1]
    flat_queries = ops.reshape(queries, (-1, c))  # (T, P, C) -> (T*P, C)
    # Long-term frames, dense: (T*P, C) x (L*N, C) -> (T, P, L*N).
    long_logits = ops.einsum("qc,kc->qk", flat_queries, ops.reshape(long_feats, (-1, c)))
    long_logits = ops.reshape(long_logits / temperature, (t, p, -1))
    # Short-term frames within each tile's region.
    region_feats = ops.take(short_feats, key_index, axis=0)  # (T, R, S, C)
    region_feats = ops.reshape(region_feats, (t, -1, c))  # (T, R, S, C) -> (T, R*S, C)
    short_logits = ops.einsum("tpc,tkc->tpk", queries, region_feats) / temperature  # (T,P,R*S)
    short_logits = ops.reshape(short_logits, (t, p, r, n_short))  # (T,P,R*S) -> (T,P,R,S)
    # Frame-major like `vote`'s logits (this order breaks top-k ties as `vote` does).
    short_logits = ops.transpose(short_logits, (0, 1, 3, 2))  # (T, P, S, R)
    short_logits = ops.where(ops.expand_dims(allowed, 2), short_logits,
                             ops.cast(MASKED_LOGIT, short_logits.dtype))
    # Labels addressed by a flat index: long-term l*N + n, short-term L*N + n*S + s.
    flat_labels = ops.concatenate([ops.reshape(long_labels, (-1, k_labels)),
                                   ops.reshape(short_labels, (-1, k_labels))], 0)  # (M*N, K)
    tile_offset = ops.reshape(ops.arange(t, dtype=key_index.dtype) * r, (-1, 1, 1))
    flat_key_index = ops.reshape(key_index, (-1,))  # (T, R) -> (T*R,)

    def short_label_index(frame, slot):
        """(T, P, k) short-term frame and region slot -> (T, P, k) flat label index."""
        key = ops.take(flat_key_index, tile_offset + slot, axis=0)
        return n_long * n + key * n_short + frame

    if joint_topk:
        short_logits = ops.reshape(short_logits, (t, p, -1))  # (T, P, S, R) -> (T, P, S*R)
        logits = ops.concatenate([long_logits, short_logits], -1)  # (T, P, L*N + S*R)
        values, index = ops.top_k(logits, ops.minimum(topk, ops.shape(logits)[-1]))  # (T, P, k)
        index = ops.cast(index, key_index.dtype)
        short = ops.maximum(index - n_long * n, 0)  # (T, P, k) index into S*R
        label_index = ops.where(index < n_long * n, index,
                                short_label_index(short // r, short % r))
        weights = ops.softmax(values, axis=-1)
        picked = ops.take(flat_labels, label_index, axis=0)  # (T, P, k, K)
        return ops.einsum("tpk,tpkl->tpl", weights, picked)
    # Per frame: softmax over each frame's keys (masked keys weigh exactly 0), top-k of it.
    long_logits = ops.reshape(long_logits, (t, p, n_long, n))  # (T, P, L*N) -> (T, P, L, N)
    values, index = ops.top_k(ops.softmax(long_logits, axis=-1), ops.minimum(topk, n))
    index = ops.cast(index, key_index.dtype)  # (T, P, L, k)
    long_offset = ops.reshape(ops.arange(n_long, dtype=index.dtype) * n, (1, 1, -1, 1))
    picked = ops.take(flat_labels, index + long_offset, axis=0)  # (T, P, L, k, K)
    votes = ops.sum(ops.einsum("tpmk,tpmkl->tpml", values, picked), axis=2)  # (T, P, K)
    values, index = ops.top_k(ops.softmax(short_logits, axis=-1), ops.minimum(topk, r))
    index = ops.cast(index, key_index.dtype)  # (T, P, S, k)
    k_short = ops.shape(index)[-1]
    frame = ops.reshape(ops.arange(n_short, dtype=index.dtype), (1, 1, -1, 1)) + 0 * index
    # (T, P, S, k) -> (T, P, S*k) for the label lookup, and back.
    label_index = short_label_index(ops.reshape(frame, (t, p, -1)),
                                    ops.reshape(index, (t, p, -1)))
    label_index = ops.reshape(label_index, (t, p, n_short, k_short))  # (T,P,S*k) -> (T,P,S,k)
    picked = ops.take(flat_labels, label_index, axis=0)  # (T, P, S, k, K)
    votes = votes + ops.sum(ops.einsum("tpmk,tpmkl->tpml", values, picked), axis=2)
    return votes / ops.cast(n_long + n_short, votes.dtype)


def minmax_normalize(labels, epsilon=1e-6):
    """Rescales each channel of (..., N, K) labels to [0, 1] over the N positions."""
    lo = ops.min(labels, axis=-2, keepdims=True)
    hi = ops.max(labels, axis=-2, keepdims=True)
    return (labels - lo) / ops.maximum(hi - lo, epsilon)


def propagate_step(context_feats, context_labels, query_feats, *, topk, temperature,
                   radius_mask=None, short_term=None, joint_topk=True, minmax=False):
    """One frame of label propagation, whole frame at once (the function to export).

    Args:
      context_feats: (M, h, w, C) L2-normalised features of the context frames.
      context_labels: (M, h, w, K) their labels.
      query_feats: (h, w, C) L2-normalised features of the frame to label.
      topk, temperature, joint_topk, minmax: see `PropagationConfig` (python values).
      radius_mask: optional (N, N) bool tensor from `radius_mask(h, w, radius)`.
      short_term: optional (M,) bool, frames the radius applies to (all but the first).
    Returns:
      (h, w, K) labels of the query frame.
    """
    shape = ops.shape(context_feats)
    m, h, w, c = shape[0], shape[1], shape[2], shape[3]
    k_labels = ops.shape(context_labels)[-1]
    feats = ops.reshape(context_feats, (m, h * w, c))  # (M, h, w, C) -> (M, N, C)
    labels = ops.reshape(context_labels, (m, h * w, k_labels))  # (M, h, w, K) -> (M, N, K)
    queries = ops.reshape(query_feats, (h * w, c))  # (h, w, C) -> (N, C)
    out = vote(feats, labels, queries, radius_mask, short_term, topk=topk,
               temperature=temperature, joint_topk=joint_topk)  # (N, K)
    if minmax:
        out = minmax_normalize(out)
    return ops.reshape(out, (h, w, k_labels))  # (N, K) -> (h, w, K)
