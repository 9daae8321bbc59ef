"""The pure label step of propagation: labels of a query frame from context frames by affinity.

Written with `keras.ops` only: batched, fixed-rank tensors, no data-dependent Python control flow,
so `propagate_step` can be traced into a SavedModel / TFLite signature as it is. The spatial-radius
restriction is a precomputed boolean tensor (`radius_mask`), not a loop.

Shape legend: M context frames, h w feature size, N = h*w, Q query positions, C channels,
K label channels.
"""

import numpy as np
from keras import ops

# Added to the logits of keys outside the spatial radius: exp(-1e4) is exactly 0 in float32.
MASKED_LOGIT = -1e4


def radius_mask(height, width, radius):
    """(N, N) bool: key position within `radius` feature cells of the query position (Euclidean).

    Rows are query positions, columns key positions, both row-major (y * width + x).
    """
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    pos = np.stack([ys.ravel(), xs.ravel()], -1).astype(np.float32)  # (N, 2)
    d2 = np.sum((pos[:, None, :] - pos[None, :, :]) ** 2, -1)  # (N, N)
    return d2 <= float(radius) ** 2


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
