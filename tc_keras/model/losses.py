"""TimeCycle losses (docs/METHOD.md, "Cycles and losses"). Functions of tensors, `keras.ops` only.

Each returns per-example values or a dict of scalars; `cycle_losses` combines the terms with the
reference code's weights by default.
"""

from keras import ops

from tc_keras import ops as tops

# Reference-code weights: 0.1 * 0.2 * mean_i(L_long^i) + 1.0 * inlier + 0.1 * mean_i(L_skip^i)
# (docs/METHOD.md, "Loss weights"; the 0.2 was added "for stable training").
LONG_WEIGHT = 0.1 * 0.2
SIM_WEIGHT = 1.0
SKIP_WEIGHT = 0.1
# The self-localisation term (patch found in its own frame) is not in the paper: off by default.
SELF_WEIGHT = 0.0
# l_theta warps a 20x20 grid over [-1, 1]^2 (docs/METHOD.md, "l_theta").
THETA_GRID_POINTS = 20
SIMILARITIES = ("inlier", "inner_product")
# The reference normalises the warped identity mask by sum(mask + 1e-5) over all of its
# N * h * w entries, i.e. adds 1e-5 per entry to the denominator (docs/METHOD.md, "Similarity").
INLIER_EPSILON = 1e-5


def check_similarity(similarity, sim_theta_grad=True):
    """Raises ValueError unless `similarity` is one of SIMILARITIES, and `sim_theta_grad` False
    only with "inlier" (the one term whose gradient to theta can be stopped; see cycle_losses)."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if not sim_theta_grad and similarity != "inlier":
        raise ValueError("sim_theta_grad=False applies to similarity 'inlier' only")


def theta_loss(theta_pred, theta_true, num_points=THETA_GRID_POINTS):
    """l_theta per example: mean over a warped point grid of the squared point distance.

    Args:
      theta_pred, theta_true: (B, 2, 3).
    Returns:
      (B,).
    """
    diff = tops.warp_points(theta_pred, num_points) - tops.warp_points(theta_true, num_points)
    return ops.mean(ops.sum(ops.square(diff), axis=-1), axis=-1)


def inlier_score(affinity, theta, feature_size, theta_grad=True):
    """Affinity mass that falls where theta says the query is (the reference's "inlier" term).

    The identity correspondence mask (N x H x W, one-hot per image position) warped by theta to the
    query grid puts, for query position j, the bilinear weights of theta's sample point j on the
    image grid. sum(mask * affinity) is therefore the affinity of j bilinearly sampled at its own
    sample point, summed over j; the mask is normalised to sum 1 over what falls inside the image
    (plus the reference's 1e-5 per mask entry in the denominator).

    As in the reference code, theta is not detached: the bilinear weights are differentiable in
    theta, so this term (weight 1.0) teaches the localizer to point where the affinity mass is
    (docs/METHOD.md, "Gradient paths"). `theta_grad=False` stops that gradient (an ablation): the term
    then shapes the features only.

    Args:
      affinity: (B, h, w, N) softmax over the N = H*W image positions.
      theta: (B, 2, 3).
      feature_size: (H, W) python ints of the image feature grid.
      theta_grad: let the gradient reach theta (reference); False stops it.
    Returns:
      (B,) score in [0, 1].
    """
    height, width = feature_size
    shape = ops.shape(affinity)
    batch, qh, qw = shape[0], shape[1], shape[2]
    if not theta_grad:
        theta = ops.stop_gradient(theta)
    # (B, h, w, N) -> (B, h*w, H, W) -> (B, H, W, h*w): one image-shaped map per query position.
    maps = ops.reshape(affinity, (batch, qh * qw, height, width))
    maps = ops.transpose(maps, (0, 2, 3, 1))
    coords = tops.affine_grid(theta, qh, qw)  # (B, h, w, 2)
    sampled = tops.bilinear_sample(maps, coords)  # (B, h, w, h*w)
    eye = ops.reshape(ops.eye(qh * qw, dtype=sampled.dtype), (1, qh, qw, qh * qw))
    own = ops.sum(sampled * eye, axis=(1, 2, 3))  # (B,) each query position read at its point
    inside = tops.bilinear_sample(ops.ones((batch, height, width, 1), sampled.dtype), coords)
    epsilon = INLIER_EPSILON * height * width * ops.cast(qh * qw, sampled.dtype)
    return own / (ops.sum(inside, axis=(1, 2, 3)) + epsilon)


def inner_product_score(query, tracked):
    """Paper's similarity <x_p, T(x_I, x_p)>, averaged over the h*w positions: (B,) in [-1, 1].

    Args:
      query, tracked: (B, h, w, C) L2-normalised features.
    """
    return ops.mean(ops.sum(query * tracked, axis=-1), axis=(1, 2))


def cycle_losses(outputs, theta_true, feature_size, *, similarity="inlier",
                 long_weight=LONG_WEIGHT, skip_weight=SKIP_WEIGHT, sim_weight=SIM_WEIGHT,
                 self_weight=SELF_WEIGHT, sim_theta_grad=True):
    """All TimeCycle terms for one batch.

    Args:
      outputs: the dict returned by `TimeCycle.call` (see model.py): `theta_long`, `theta_skip`,
        `theta_first` (B, k, 2, 3), `affinity_first` (B, k, h, w, N), `query` (B, h, w, C),
        `tracked_first` (B, k, h, w, C), `theta_self` (B, 2, 3).
      theta_true: (B, 2, 3) ground-truth theta of the patch in the target frame.
      feature_size: (H, W) of the image features.
      similarity: "inlier" (reference code, default) or "inner_product" (paper).
      self_weight: weight of `self`, l_theta of the patch localised in its own (target) frame.
        Not a paper term (0 by default); always reported, as a measure of the localizer.
      sim_theta_grad: the inlier term's gradient reaches theta, hence the localizer (reference
        code); False stops it (ablation). Only "inlier" has the choice: the inner product reads
        features sampled at theta, so its gradient always reaches theta.
    Returns:
      dict of scalars: `loss` (weighted total), `long`, `skip`, `sim`, `self`, and `long_i`,
      `skip_i`, `sim_i` for i = 1..k (i = how many frames back).
    """
    check_similarity(similarity, sim_theta_grad)
    batch, k = ops.shape(outputs["theta_long"])[0], outputs["theta_long"].shape[1]

    def per_step(values):  # (B*k,) per example and step -> (k,) means over the batch
        return ops.mean(ops.reshape(values, (batch, k)), axis=0)

    def steps(x):  # (B, k, ...) -> (B*k, ...): every step of every example in one call
        return ops.reshape(x, (-1,) + tuple(x.shape[2:]))

    theta_true_k = steps(ops.repeat(ops.expand_dims(theta_true, 1), k, axis=1))  # (B*k, 2, 3)
    result = {}
    for name in ("long", "skip"):
        terms = per_step(theta_loss(steps(outputs[f"theta_{name}"]), theta_true_k))  # (k,)
        for i in range(k):
            result[f"{name}_{i + 1}"] = terms[i]
        result[name] = ops.mean(terms)
    if similarity == "inlier":
        scores = inlier_score(steps(outputs["affinity_first"]), steps(outputs["theta_first"]),
                              feature_size, theta_grad=sim_theta_grad)
    else:
        query = ops.broadcast_to(ops.expand_dims(outputs["query"], 1),
                                 ops.shape(outputs["tracked_first"]))
        scores = inner_product_score(steps(query), steps(outputs["tracked_first"]))
    sims = -per_step(scores)  # (k,)
    for i in range(k):
        result[f"sim_{i + 1}"] = sims[i]
    result["sim"] = ops.mean(sims)
    result["self"] = ops.mean(theta_loss(outputs["theta_self"], theta_true))
    result["loss"] = (long_weight * result["long"] + skip_weight * result["skip"]
                      + sim_weight * result["sim"])
    if self_weight:
        result["loss"] = result["loss"] + self_weight * result["self"]
    return result
