"""Evaluation metrics: DAVIS J and F (region and boundary), JHMDB PCK, part mIoU.

NumPy only (no SciPy or OpenCV): morphology is done with array shifts. Semantics follow docs/METHOD.md,
"Metrics", and the official DAVIS-2017 semi-supervised evaluation, so that figures compare with
the papers' tables:

- Void: pixels marked void in the ground truth (label 255 of a palette annotation whose objects
  are 1..n) are ignored by J and F; pass them as `void`.
- J (region similarity): IoU of one object's predicted and ground-truth masks in one frame, void
  pixels excluded; 1 when the union is empty.
- F (contour accuracy): boundary maps as the official evaluation computes them (`boundary`): a
  pixel is on the boundary when it differs from its right, lower or lower-right neighbour (the
  last row compares to the right only, the last column downwards only; the image border is not a
  boundary). Void pixels are set to background first. A boundary pixel counts as matched when a
  boundary pixel of the other mask lies within a disk of radius ceil(0.008 * image diagonal) (8 px
  at 854x480). Precision = matched predicted boundary / predicted boundary, recall = matched
  ground-truth boundary / ground-truth boundary, F = 2PR / (P + R). Empty boundaries: both empty
  -> P = R = 1 (F = 1); only the prediction empty -> P = 1, R = 0; only the ground truth empty ->
  P = 0, R = 1 (F = 0 either way).
- The first frame (given) and the last frame are excluded from every sequence.
- Per object: mean over frames, recall = fraction of frames with a score > 0.5, decay = mean of the
  first bin minus mean of the last bin after splitting the frames into 4 bins (see `decay`).
- J-Mean / F-Mean: average over all objects of all sequences; J&F-Mean: the mean of the two.
- PCK (JHMDB): the follow-up work's public evaluation; see `pck`.

Shape legend: T time, H W spatial, J joints.
"""

import math
import warnings

import numpy as np

# DAVIS boundary tolerance: a fraction of the image diagonal (docs/METHOD.md, "DAVIS J and F").
BOUNDARY_TOLERANCE = 0.008
# Number of temporal bins for the DAVIS decay statistic.
DECAY_BINS = 4
# A frame "succeeds" for the recall statistic when its score exceeds this (docs/METHOD.md, "DAVIS J and F").
RECALL_THRESHOLD = 0.5
# PCK thresholds reported for JHMDB, and the person size L = 0.6 x the diagonal of the box of the
# visible ground-truth joints (docs/METHOD.md, "JHMDB PCK").
PCK_ALPHAS = (0.1, 0.2)
PCK_BOX_FRACTION = 0.6


# ----------------------------------------------------------------------------------------------
# Region similarity J
# ----------------------------------------------------------------------------------------------

def iou(pred, gt, void=None):
    """IoU of two boolean masks (H, W), pixels where `void` is true ignored; 1.0 for an empty union."""
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    keep = np.ones_like(gt) if void is None else ~np.asarray(void, bool)
    union = np.count_nonzero((pred | gt) & keep)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt & keep) / union


# ----------------------------------------------------------------------------------------------
# Contour accuracy F
# ----------------------------------------------------------------------------------------------

def _shift(mask, dy, dx, fill):
    """mask shifted by (dy, dx): out[y, x] = mask[y - dy, x - dx]; `fill` where that is outside."""
    h, w = mask.shape
    out = np.full_like(mask, fill)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def boundary(mask):
    """Boundary map of a boolean mask (H, W), as the official DAVIS evaluation computes it.

    A pixel (foreground or background) is on the boundary when it differs from its right, lower
    or lower-right neighbour. The last row is compared with its right neighbour only, the last
    column with its lower neighbour only, and the bottom-right pixel never is a boundary: the
    image border itself is not a boundary, so a mask that fills the frame has none.
    """
    seg = np.asarray(mask, bool)
    right = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    below = np.zeros_like(seg)
    below[:-1, :] = seg[1:, :]
    diagonal = np.zeros_like(seg)
    diagonal[:-1, :-1] = seg[1:, 1:]
    edge = (seg ^ right) | (seg ^ below) | (seg ^ diagonal)
    edge[-1, :] = seg[-1, :] ^ right[-1, :]
    edge[:, -1] = seg[:, -1] ^ below[:, -1]
    edge[-1, -1] = False
    return edge


def disk_offsets(radius):
    """Integer offsets (dy, dx) with dy^2 + dx^2 <= radius^2."""
    r = int(radius)
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r]


def dilate(mask, radius):
    """Binary dilation of a boolean mask (H, W) by a disk of integer `radius`."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask.copy()
    out = np.zeros_like(mask)
    for dy, dx in disk_offsets(radius):
        out |= _shift(mask, dy, dx, False)
    return out


def boundary_radius(shape):
    """DAVIS matching radius in pixels for an (H, W) image: ceil(0.008 * diagonal)."""
    return int(math.ceil(BOUNDARY_TOLERANCE * math.hypot(shape[0], shape[1])))


def boundary_f(pred, gt, radius=None, void=None):
    """Boundary F-measure of two boolean masks (H, W), void pixels set to background first (see the
    module docstring)."""
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if void is not None:
        keep = ~np.asarray(void, bool)
        pred, gt = pred & keep, gt & keep
    if radius is None:
        radius = boundary_radius(gt.shape)
    pb = boundary(pred)
    gb = boundary(gt)
    n_pred = np.count_nonzero(pb)
    n_gt = np.count_nonzero(gb)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    precision = np.count_nonzero(pb & dilate(gb, radius)) / n_pred
    recall = np.count_nonzero(gb & dilate(pb, radius)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------------------------
# Per-object statistics and the DAVIS summary
# ----------------------------------------------------------------------------------------------

def decay(values, bins=DECAY_BINS):
    """Mean of the first temporal bin minus the mean of the last.

    The n values are split into `bins` bins whose edges are the positions linspace(1, n, bins + 1)
    (1-based) rounded half up; each bin includes both of its edges, so neighbouring bins share a
    frame. With fewer values than that, bins may repeat frames; an empty input gives NaN.
    """
    values = np.asarray(values, np.float64)
    n = len(values)
    if n == 0:
        return float("nan")
    edges = np.floor(np.linspace(1, n, bins + 1) + 0.5 + 1e-10).astype(int) - 1  # 0-based
    first = values[edges[0]:edges[1] + 1]
    last = values[edges[-2]:edges[-1] + 1]
    return float(np.mean(first) - np.mean(last))


def statistics(values):
    """{mean, recall, decay} of one object's per-frame scores."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return {"mean": float("nan"), "recall": float("nan"), "decay": float("nan")}
    return {"mean": float(np.mean(values)),
            "recall": float(np.mean(values > RECALL_THRESHOLD)),
            "decay": decay(values)}


def object_ids(first_gt):
    """Object ids (sorted, background 0 excluded) present in the first ground-truth frame."""
    ids = np.unique(np.asarray(first_gt))
    return [int(i) for i in ids if i != 0]


def evaluate_frames(gt_frames, pred_frames, ids, void_frames=None):
    """Per-frame J and F for each object over frames 1 .. T-2 (first and last excluded).

    Args:
      gt_frames, pred_frames: sequences of T integer label maps (H, W) (0 = background, k = object
        k); they may be generators, but both must have the same length and sizes.
      ids: the object ids to score.
      void_frames: optional sequence of T boolean (H, W) maps of ground-truth void pixels (or None
        entries), ignored by J and F.
    Returns:
      {id: {"J": [T-2 floats], "F": [T-2 floats]}}.
    """
    scores = {k: {"J": [], "F": []} for k in ids}
    gt_list = list(gt_frames)
    pred_list = list(pred_frames)
    void_list = [None] * len(gt_list) if void_frames is None else list(void_frames)
    if len(gt_list) != len(pred_list) or len(void_list) != len(gt_list):
        raise ValueError(f"{len(pred_list)} predicted frames for {len(gt_list)} ground-truth frames")
    for t in range(1, len(gt_list) - 1):
        gt, pred, void = np.asarray(gt_list[t]), np.asarray(pred_list[t]), void_list[t]
        if gt.shape != pred.shape:
            raise ValueError(f"frame {t}: prediction {pred.shape} vs ground truth {gt.shape}")
        radius = boundary_radius(gt.shape)
        for k in ids:
            scores[k]["J"].append(iou(pred == k, gt == k, void))
            scores[k]["F"].append(boundary_f(pred == k, gt == k, radius, void))
    return scores


def davis_summary(sequence_scores):
    """DAVIS table from per-object per-frame scores.

    Args:
      sequence_scores: {sequence: {object id: {"J": [...], "F": [...]}}} (from `evaluate_frames`).
    Returns:
      {"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay": float,
       "objects": {"<seq>_<id>": {"J-Mean", ..., "F-Decay"}}, "sequences": {seq: {"J-Mean",
       "F-Mean", "J&F-Mean"}}}; the global figures average over all objects of all sequences.
    """
    objects = {}
    for seq, per_object in sequence_scores.items():
        for k, scores in per_object.items():
            row = {}
            for m in ("J", "F"):
                st = statistics(scores[m])
                row.update({f"{m}-Mean": st["mean"], f"{m}-Recall": st["recall"],
                            f"{m}-Decay": st["decay"]})
            objects[f"{seq}_{k}"] = row
    out = {}
    keys = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
    for key in keys:
        vals = [row[key] for row in objects.values()]
        out[key] = float(np.nanmean(vals)) if vals else float("nan")
    out["J&F-Mean"] = 0.5 * (out["J-Mean"] + out["F-Mean"])
    sequences = {}
    for seq, per_object in sequence_scores.items():
        rows = [objects[f"{seq}_{k}"] for k in per_object]
        jm = float(np.mean([r["J-Mean"] for r in rows])) if rows else float("nan")
        fm = float(np.mean([r["F-Mean"] for r in rows])) if rows else float("nan")
        sequences[seq] = {"J-Mean": jm, "F-Mean": fm, "J&F-Mean": 0.5 * (jm + fm)}
    out["objects"] = objects
    out["sequences"] = sequences
    return out


# ----------------------------------------------------------------------------------------------
# JHMDB PCK
# ----------------------------------------------------------------------------------------------

def pck(pred, gt, alphas=PCK_ALPHAS, exclude_first=True):
    """Percentage of correct keypoints, as the follow-up work's public JHMDB evaluation computes it.

    A joint is correct when its distance to the ground truth is at most alpha * L, where
    L = 0.6 x the diagonal of the bounding box of that frame's visible ground-truth joints.
    Ground-truth joints with a NaN coordinate are not visible and not scored; a NaN prediction of a
    visible joint is wrong. The first frame (given as input) is excluded by default. Each joint's
    PCK is its fraction of correct scored frames; the PCK is the mean over the joints (joints never
    scored are left out of the mean).

    Args:
      pred, gt: (T, J, 2) joint (x, y) positions in pixels.
      alphas: thresholds, fractions of L.
      exclude_first: drop frame 0.
    Returns:
      {"PCK@<alpha>": mean over joints of the per-joint fraction in [0, 1], ...,
       "per_joint@<alpha>": [J fractions, NaN for a joint never scored], "frames": frames scored}.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape or gt.ndim != 3 or gt.shape[-1] != 2:
        raise ValueError(f"expected matching (T, J, 2) joints, got {pred.shape} and {gt.shape}")
    if exclude_first:
        pred, gt = pred[1:], gt[1:]
    valid = np.all(np.isfinite(gt), axis=-1)  # (T, J)
    visible = np.where(valid[..., None], gt, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames with no visible joint: NaN
        extent = np.nanmax(visible, axis=1) - np.nanmin(visible, axis=1)  # (T, 2) box w, h
    size = PCK_BOX_FRACTION * np.hypot(extent[:, 0], extent[:, 1])  # (T,)
    dist = np.linalg.norm(pred - gt, axis=-1)  # (T, J)
    dist = np.where(np.isfinite(dist), dist, np.inf)
    scored = np.count_nonzero(valid, axis=0)  # (J,)
    out = {"frames": int(gt.shape[0])}
    for a in alphas:
        correct = (dist <= a * size[:, None]) & valid
        with np.errstate(invalid="ignore", divide="ignore"):
            per_joint = np.where(scored > 0, np.count_nonzero(correct, axis=0) / scored, np.nan)
        out[f"PCK@{a:g}"] = float(np.nanmean(per_joint)) if np.any(scored) else float("nan")
        out[f"per_joint@{a:g}"] = [float(v) for v in per_joint]
    return out


# ----------------------------------------------------------------------------------------------
# Part labels mIoU
# ----------------------------------------------------------------------------------------------

def confusion_matrix(gt, pred, num_classes):
    """(num_classes, num_classes) counts, rows = ground truth, columns = prediction.

    Labels outside [0, num_classes) in the ground truth (e.g. 255 = ignore) are skipped.
    """
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    keep = (gt >= 0) & (gt < num_classes)
    gt, pred = gt[keep], np.clip(pred[keep], 0, num_classes - 1)
    return np.bincount(gt * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def mean_iou(confusion):
    """mIoU from an accumulated confusion matrix: classes with an empty union are skipped.

    Returns (mIoU, per-class IoU with NaN for skipped classes).
    """
    confusion = np.asarray(confusion, np.float64)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(union > 0, inter / union, np.nan)
    valid = union > 0
    return (float(np.mean(per_class[valid])) if valid.any() else float("nan")), per_class
