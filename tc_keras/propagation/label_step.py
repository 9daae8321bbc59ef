"""The pure label step of propagation: labels of a query frame from context frames by affinity.

Written with `keras.ops` only: batched, fixed-rank tensors, no data-dependent Python control flow,
so `vote` and `vote_local` are traced into SavedModel / TFLite signatures as they are. The
spatial-radius restriction is a precomputed boolean tensor (`tiles.radius_mask`, `tiles.local_tiles`),
not a loop.

Two forms of the same step (and a third, for the compiled path only: `window_step`):

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

from keras import ops

from tc_keras.propagation.tiles import TOPK_BLOCK

# Added to the logits of keys outside the spatial radius: exp(-1e4) is exactly 0 in float32.
MASKED_LOGIT = -1e4


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
