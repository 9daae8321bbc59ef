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
  long-term frames (the first) stay dense. At 480p (60x107 features, r = 12, 12x12 tiles chosen
  by `choose_tile`) that is 20 x 1296 + 6420 logits per query instead of 21 x 6420. Candidates are
  laid out in `vote`'s order (long-term frames, then each short-term frame's region in increasing
  position), so the top-k breaks ties as `vote` does.

Shape legend: M context frames (L long-term + S short-term), h w feature size, N = h*w,
Q query positions, T tiles of P = ty*tx query positions, R key-region positions per tile,
C channels, K label channels.
"""

import dataclasses

import numpy as np
from keras import ops

# Added to the logits of keys outside the spatial radius: exp(-1e4) is exactly 0 in float32.
MASKED_LOGIT = -1e4
# Candidates per block of the joint top-k (`vote_local`); regions are padded to a multiple of it.
TOPK_BLOCK = 32


# Tile candidates of `vote_local` (`choose_tile`). Smaller tiles waste fewer keys ((ty + 2r)(tx + 2r)
# region vs the (2r + 1)^2 window) but gather more key features per query (R / P copies of the
# context); `choose_tile` weighs the two. TILE_GATHER_COST: the cost of gathering one key's
# features for a tile, in query-key products (2 cores: gathering a key's S*C floats, about 6 GB/s,
# takes as long as about 100 query-key products of S*C multiply-adds, about 300 GFLOP/s).
TILE_SIDES = (4, 6, 8, 10, 12, 16, 24, 32)
TILE_GATHER_COST = 100


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
      key_index: (T, R) int32 flat key positions of each tile's key region, increasing, then
        -1 padding up to a multiple of TOPK_BLOCK (never allowed).
      allowed: (T, P, R) bool, region key within the radius of the tile query.
      slot: (N,) int32, for each position its index into the flattened (T*P) tile outputs.
    """

    query_index: np.ndarray
    key_index: np.ndarray
    allowed: np.ndarray
    slot: np.ndarray


def _region(tile, height, width, radius):
    """(ry, rx) region of a (ty, tx) tile: the tile grown by floor(radius), inside the map."""
    r = int(np.floor(radius))
    return min(tile[0] + 2 * r, height), min(tile[1] + 2 * r, width)


def _padded(ry, rx):
    """Slots of a ry x rx key region padded to whole TOPK_BLOCK blocks."""
    return -(-ry * rx // TOPK_BLOCK) * TOPK_BLOCK


def choose_tile(height, width, radius):
    """The (ty, tx) query tile of `vote_local` with the least estimated work on an h x w map.

    Work of a tiling = tiles x (padded) region x (queries per tile + TILE_GATHER_COST): the
    query-key products and the key features gathered. At 30x53 features (size 240) and radius 12
    this picks full-height bands 8 cells wide; at 60x107 (480p) 12x12 tiles.
    """
    best = None
    for ty in sorted({min(s, height) for s in TILE_SIDES} | {height}):
        for tx in sorted({min(s, width) for s in TILE_SIDES} | {width}):
            ry, rx = _region((ty, tx), height, width, radius)
            region = _padded(ry, rx)
            tiles = -(-height // ty) * -(-width // tx)
            work = tiles * region * (ty * tx + TILE_GATHER_COST)
            if best is None or work < best[0]:
                best = (work, (ty, tx))
    return best[1]


def local_tiles(height, width, radius, tile=None):
    """`LocalTiles` for an h x w feature map, a radius in feature cells and a (ty, tx) tile.

    A tile's key region is (ty + 2r) x (tx + 2r) positions (r = floor(radius)), or the whole
    height/width where the map is smaller, shifted inside the map at its borders: one size for
    all tiles, and it holds every key within the radius of any query of the tile. Regions are
    padded to a multiple of TOPK_BLOCK slots (key index -1, never allowed). `tile` None:
    `choose_tile`.
    """
    tile = choose_tile(height, width, radius) if tile is None else tile
    ty, tx = min(tile[0], height), min(tile[1], width)
    r = int(np.floor(radius))
    ry, rx = _region((ty, tx), height, width, radius)
    pad = _padded(ry, rx) - ry * rx
    query_index, key_index, query_yx, key_yx = [], [], [], []
    for y0 in range(0, height, ty):
        for x0 in range(0, width, tx):
            qy, qx = np.meshgrid(np.minimum(np.arange(y0, y0 + ty), height - 1),
                                 np.minimum(np.arange(x0, x0 + tx), width - 1), indexing="ij")
            oy, ox = np.clip(y0 - r, 0, height - ry), np.clip(x0 - r, 0, width - rx)
            ky, kx = np.meshgrid(np.arange(oy, oy + ry), np.arange(ox, ox + rx), indexing="ij")
            query_index.append((qy * width + qx).ravel())
            key_index.append(np.concatenate([(ky * width + kx).ravel(), np.full(pad, -1)]))
            query_yx.append(np.stack([qy.ravel(), qx.ravel()], -1))
            key_yx.append(np.stack([ky.ravel(), kx.ravel()], -1))
    query_index = np.stack(query_index).astype(np.int32)  # (T, P)
    # A position repeated as padding takes the output of its first (real) occurrence.
    _, slot = np.unique(query_index.ravel(), return_index=True)  # (N,), positions in order
    allowed = _within(np.stack(query_yx), np.stack(key_yx), radius)  # (T, P, ry*rx)
    allowed = np.pad(allowed, [(0, 0), (0, 0), (0, pad)])  # padding slots: never allowed
    return LocalTiles(query_index=query_index,
                      key_index=np.stack(key_index).astype(np.int32),
                      allowed=allowed, slot=slot.astype(np.int32))


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
    # The temperature scales the queries, not the M*N logits (one pass less over the largest
    # tensor of the step); `vote_local` does the same.
    queries = queries / temperature
    logits = ops.einsum("qc,mnc->qmn", queries, context_feats)  # (Q, M, N)
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

    The joint top-k does not sort all L*N + S*R candidates of a query: the top k of the long-term
    frames and the top k of the short-term ones (from blocks of `TOPK_BLOCK` candidates: see
    `_short_topk`) are merged, giving the same keys in the same order as a top-k over all of them
    (ties broken by the lower index in `vote`'s frame-major order).

    Args:
      long_feats: (L, N, C) L2-normalised features of the unrestricted context frames (the first).
      long_labels: (L, N, K) their labels.
      short_feats: (N, S, C) features of the radius-restricted (short-term) context frames.
      short_labels: (N, S, K) their labels.
      queries: (T, P, C) L2-normalised query features, tile by tile (`LocalTiles.query_index`).
      key_index: (T, R) int32 flat key positions of each tile's region (`LocalTiles.key_index`);
        -1 marks padding (never allowed: a masked candidate, weight exactly 0).
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
    queries = queries / temperature  # as `vote`: scaled queries, not scaled logits
    flat_queries = ops.reshape(queries, (-1, c))  # (T, P, C) -> (T*P, C)
    # Long-term frames, dense: (T*P, C) x (L*N, C) -> (T, P, L*N).
    long_logits = ops.einsum("qc,kc->qk", flat_queries, ops.reshape(long_feats, (-1, c)))
    long_logits = ops.reshape(long_logits, (t, p, -1))
    # Short-term frames within each tile's region, position-major: (T, P, R, S). Padding slots
    # (key index -1, never allowed) read position 0 and are masked like keys out of the radius.
    key_index = ops.maximum(key_index, 0)
    region_feats = ops.take(short_feats, key_index, axis=0)  # (T, R, S, C)
    region_feats = ops.reshape(region_feats, (t, -1, c))  # (T, R, S, C) -> (T, R*S, C)
    short_logits = ops.einsum("tpc,tkc->tpk", queries, region_feats)  # (T, P, R*S)
    short_logits = ops.reshape(short_logits, (t, p, r, n_short))  # (T,P,R*S) -> (T,P,R,S)
    short_logits = ops.where(ops.expand_dims(allowed, -1), short_logits,
                             ops.cast(MASKED_LOGIT, short_logits.dtype))
    # Labels addressed by a flat index: long-term l*N + n, short-term L*N + n*S + s.
    flat_labels = ops.concatenate([ops.reshape(long_labels, (-1, k_labels)),
                                   ops.reshape(short_labels, (-1, k_labels))], 0)  # (M*N, K)
    if joint_topk:
        values, label_index = _joint_topk(long_logits, short_logits, key_index, topk,
                                          n_long * n)
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
    short_logits = ops.transpose(short_logits, (0, 1, 3, 2))  # (T, P, R, S) -> (T, P, S, R)
    values, index = ops.top_k(ops.softmax(short_logits, axis=-1), ops.minimum(topk, r))
    index = ops.cast(index, key_index.dtype)  # (T, P, S, k)
    k_short = ops.shape(index)[-1]
    frame = ops.reshape(ops.arange(n_short, dtype=index.dtype), (1, 1, -1, 1))
    # (T, P, S, k) region slots -> key positions: one gather per tile, over (S*k) slots.
    keys = _region_keys(key_index, ops.reshape(index, (t, p, -1)))
    label_index = n_long * n + ops.reshape(keys, (t, p, n_short, k_short)) * n_short + frame
    picked = ops.take(flat_labels, label_index, axis=0)  # (T, P, S, k, K)
    votes = votes + ops.sum(ops.einsum("tpmk,tpmkl->tpml", values, picked), axis=2)
    return votes / ops.cast(n_long + n_short, votes.dtype)


def _region_keys(key_index, slots):
    """Key positions of region slots: (T, R) key_index, (T, P, k) slots -> (T, P, k)."""
    t, r = ops.shape(key_index)[0], ops.shape(key_index)[1]
    tile_offset = ops.reshape(ops.arange(t, dtype=key_index.dtype) * r, (-1, 1, 1))
    return ops.take(ops.reshape(key_index, (-1,)), tile_offset + slots, axis=0)


def _joint_topk(long_logits, short_logits, key_index, topk, n_long_keys):
    """Top-k over every candidate of each query, in `vote`'s order, without sorting them all.

    The long-term frames' top k comes from a top-k over their L*N logits; the short-term frames'
    from blocks (`_short_topk`); the top k of the union of the two, long-term first, is the answer.

    Args:
      long_logits: (T, P, L*N), frame-major.
      short_logits: (T, P, R, S), position-major (candidate order: frame s, then region slot).
      key_index: (T, R) key position of each region slot (padding clipped to 0).
      topk: k.
      n_long_keys: L*N.
    Returns:
      values (T, P, k) sorted descending, and their flat label indices (T, P, k).
    """
    long_values, long_index = ops.top_k(long_logits, ops.minimum(topk, n_long_keys))
    long_index = ops.cast(long_index, key_index.dtype)
    short_values, frame, slot = _short_topk(short_logits, topk)
    n_short = ops.shape(short_logits)[3]
    short_index = n_long_keys + _region_keys(key_index, slot) * n_short + frame
    values = ops.concatenate([long_values, short_values], -1)  # long-term first: `vote`'s order
    values, picked = ops.top_k(values, ops.minimum(topk, ops.shape(values)[-1]))
    index = ops.concatenate([long_index, short_index], -1)
    return values, ops.take_along_axis(index, ops.cast(picked, index.dtype), axis=-1)


def _short_topk(short_logits, topk):
    """Top-k of (T, P, R, S) position-major logits in frame-major order: values, frame, slot.

    Each frame's R region slots are cut into blocks of TOPK_BLOCK; the k blocks with the largest
    maxima hold the top k (a tied block of lower frame-major index is taken first, as a top-k over
    all candidates takes the lower index), and the top k of those k * TOPK_BLOCK candidates, in
    frame-major order, is the answer: the same candidates in the same order as a top-k over all.
    """
    t, p, r, n_short = (ops.shape(short_logits)[i] for i in range(4))
    # Block length: TOPK_BLOCK where it divides the region (local_tiles pads regions so that it
    # does), else the whole region (still exact, just more candidates).
    block = ops.where(r % TOPK_BLOCK == 0, TOPK_BLOCK, r)
    region_blocks = r // block
    # (T, P, R, S) -> (T, P, Rb, b, S) -> max over b -> (T, P, Rb, S) -> (T, P, S, Rb)
    block_max = ops.max(ops.reshape(short_logits, (t, p, region_blocks, block, n_short)), axis=3)
    block_max = ops.reshape(ops.transpose(block_max, (0, 1, 3, 2)), (t, p, -1))  # (T,P,S*Rb)
    k_blocks = ops.minimum(topk, n_short * region_blocks)
    _, blocks = ops.top_k(block_max, k_blocks)
    blocks = ops.sort(blocks, axis=-1)  # (T, P, kb) frame-major block numbers, ascending
    frame = ops.expand_dims(blocks // region_blocks, -1)  # (T, P, kb, 1)
    slot = ops.expand_dims(blocks % region_blocks, -1) * block + ops.arange(block)  # (T,P,kb,b)
    # Candidates (T, P, kb*b) in frame-major order; (T, P, R*S) holds slot * S + frame.
    candidates = ops.take_along_axis(ops.reshape(short_logits, (t, p, -1)),
                                     ops.reshape(slot * n_short + frame, (t, p, -1)), axis=-1)
    values, picked = ops.top_k(candidates, ops.minimum(topk, k_blocks * block))
    frame = ops.take_along_axis(ops.reshape(ops.broadcast_to(frame, ops.shape(slot)), (t, p, -1)),
                                picked, axis=-1)
    slot = ops.take_along_axis(ops.reshape(slot, (t, p, -1)), picked, axis=-1)
    return values, frame, slot


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
