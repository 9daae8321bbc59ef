"""tc_keras.propagation.metrics against hand-computed cases and brute-force references."""

import numpy as np
import pytest

from tc_keras.propagation import metrics


def square(size=64, top=10, left=10, side=20):
    m = np.zeros((size, size), bool)
    m[top:top + side, left:left + side] = True
    return m


def brute_boundary_f(pred, gt, radius):
    """Reference: explicit distances between boundary pixels."""
    pb = np.argwhere(metrics.boundary(pred))
    gb = np.argwhere(metrics.boundary(gt))
    d = np.linalg.norm(pb[:, None, :] - gb[None, :, :], axis=-1)
    precision = np.mean(d.min(1) <= radius)
    recall = np.mean(d.min(0) <= radius)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def test_iou_known_value_and_empty_union():
    a = square(side=20)                # 400 px
    b = square(left=20, side=20)      # overlaps a in 10x20 = 200 px, union 600
    assert metrics.iou(a, b) == pytest.approx(200 / 600)
    assert metrics.iou(a, a) == 1.0
    empty = np.zeros((8, 8), bool)
    assert metrics.iou(empty, empty) == 1.0
    assert metrics.iou(empty, square(8, 2, 2, 3)) == 0.0


def test_boundary_map_as_the_official_davis_evaluation():
    """Hand-computed: a pixel differing from its right, lower or lower-right neighbour."""
    seg = np.zeros((5, 5), bool)
    seg[1:3, 1:3] = True
    expected = np.array([[1, 1, 1, 0, 0],
                         [1, 0, 1, 0, 0],
                         [1, 1, 1, 0, 0],
                         [0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(metrics.boundary(seg), expected)
    # A 20x20 square: its right column and bottom row (39 px) and the background column and row
    # above-left of it (41 px, the corner included).
    assert np.count_nonzero(metrics.boundary(square(side=20))) == 80
    # The image border is not a boundary.
    assert not metrics.boundary(np.ones((16, 16), bool)).any()
    half = np.zeros((16, 16), bool)
    half[8:] = True
    np.testing.assert_array_equal(np.argwhere(metrics.boundary(half))[:, 0], np.full(16, 7))
    # Last row: compared to the right only; last column: downwards only.
    corner = np.zeros((4, 4), bool)
    corner[3, 3] = True
    np.testing.assert_array_equal(np.argwhere(metrics.boundary(corner)), [[2, 2], [2, 3], [3, 2]])


def test_boundary_f_hand_computed():
    """Single pixels 2 apart: boundaries {(2,2),(2,3),(3,2),(3,3)} and {(2,4),(2,5),(3,4),(3,5)};
    within radius 1 half of each is matched: P = R = F = 0.5."""
    gt = np.zeros((8, 8), bool)
    gt[3, 3] = True
    pred = np.zeros((8, 8), bool)
    pred[3, 5] = True
    assert metrics.boundary_f(pred, gt, 1) == pytest.approx(0.5)


def test_void_pixels_are_ignored_by_j_and_f():
    gt = np.zeros((8, 8), bool)
    gt[2:4, 2:4] = True
    pred = gt.copy()
    pred[2:4, 4:6] = True  # 4 extra pixels
    void = np.zeros((8, 8), bool)
    void[2:4, 4:6] = True
    assert metrics.iou(pred, gt) == pytest.approx(4 / 8)
    assert metrics.iou(pred, gt, void) == 1.0
    assert metrics.boundary_f(pred, gt, 0) < 1.0
    assert metrics.boundary_f(pred, gt, 0, void) == 1.0
    gt_ids, pred_ids = np.stack([gt] * 3).astype(np.uint8), np.stack([pred] * 3).astype(np.uint8)
    scores = metrics.evaluate_frames(gt_ids, pred_ids, [1], [void] * 3)
    assert scores[1]["J"] == [1.0] and scores[1]["F"] == [1.0]
    assert metrics.evaluate_frames(gt_ids, pred_ids, [1])[1]["J"] == [0.5]


def test_boundary_radius_is_8_px_at_480p():
    assert metrics.boundary_radius((480, 854)) == 8
    assert metrics.boundary_radius((64, 64)) == 1


def test_boundary_f_of_shifted_square():
    gt = square()
    # A 1 px shift is within the 1 px tolerance of a 64x64 image: perfect F.
    assert metrics.boundary_f(square(left=11), gt) == 1.0
    shifted = square(left=13)
    assert metrics.boundary_f(shifted, gt) < 1.0
    assert metrics.boundary_f(shifted, gt) == pytest.approx(brute_boundary_f(shifted, gt, 1))


@pytest.mark.parametrize("radius", [1, 2, 4])
def test_boundary_f_matches_brute_force_on_random_blobs(radius):
    rng = np.random.default_rng(radius)
    a = np.zeros((40, 48), bool)
    b = np.zeros((40, 48), bool)
    for m in (a, b):
        for _ in range(3):
            y, x = rng.integers(0, 30, 2)
            m[y:y + rng.integers(4, 12), x:x + rng.integers(4, 16)] = True
    assert metrics.boundary_f(a, b, radius) == pytest.approx(brute_boundary_f(a, b, radius))


def test_boundary_f_empty_cases():
    empty = np.zeros((32, 32), bool)
    obj = square(32, 4, 4, 8)
    assert metrics.boundary_f(empty, empty) == 1.0
    assert metrics.boundary_f(empty, obj) == 0.0
    assert metrics.boundary_f(obj, empty) == 0.0


def test_dilate_disk():
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    d = metrics.dilate(m, 2)
    assert np.count_nonzero(d) == 13  # lattice points with dy^2 + dx^2 <= 4
    assert d[4, 2] and d[2, 4] and not d[2, 2]


def test_decay_bins_and_statistics():
    # 8 values, edges at linspace(1, 8, 5) = 1, 2.75, 4.5, 6.25, 8 -> rounded 1, 3, 5, 6, 8
    # (1-based): first bin frames 1..3, last bin frames 6..8.
    values = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.2, 0.2, 0.2])
    assert metrics.decay(values) == pytest.approx(1.0 - 0.2)
    st = metrics.statistics(values)
    assert st["mean"] == pytest.approx(values.mean())
    assert st["recall"] == pytest.approx(3 / 8)
    assert metrics.decay(np.ones(5)) == 0.0


def test_first_and_last_frames_are_excluded():
    gt = np.zeros((5, 16, 16), np.uint8)
    gt[:, 4:10, 4:10] = 1
    pred = gt.copy()
    pred[0] = 0   # wrong first frame: excluded
    pred[-1] = 0  # wrong last frame: excluded
    pred[2] = 0   # wrong middle frame: counted
    scores = metrics.evaluate_frames(gt, pred, metrics.object_ids(gt[0]))
    assert list(scores) == [1]
    assert scores[1]["J"] == [1.0, 0.0, 1.0]
    assert scores[1]["F"] == [1.0, 0.0, 1.0]
    summary = metrics.davis_summary({"seq": scores})
    assert summary["J-Mean"] == pytest.approx(2 / 3)
    assert summary["J&F-Mean"] == pytest.approx(2 / 3)
    assert summary["J-Recall"] == pytest.approx(2 / 3)
    assert summary["sequences"]["seq"]["J-Mean"] == pytest.approx(2 / 3)


def test_summary_averages_over_objects_not_sequences():
    scores = {"a": {1: {"J": [1.0], "F": [1.0]}, 2: {"J": [0.0], "F": [0.0]}},
              "b": {1: {"J": [1.0], "F": [1.0]}}}
    summary = metrics.davis_summary(scores)
    assert summary["J-Mean"] == pytest.approx(2 / 3)
    assert summary["sequences"]["a"]["J-Mean"] == pytest.approx(0.5)


def test_pck_hand_computed():
    """L = 0.6 x the diagonal of the visible joints' box; PCK = the mean of per-joint PCKs."""
    nan = np.nan
    gt = np.array([[[0, 0], [60, 0], [0, 80], [60, 80]],        # frame 0: excluded
                   [[0, 0], [60, 0], [0, 80], [60, 80]],        # box 60x80: L = 0.6 * 100 = 60
                   [[0, 0], [60, 0], [nan, nan], [nan, nan]]],  # box 60x0: L = 36
                  np.float64)
    pred = gt.copy()
    pred[0] += 1000                                 # frame 0 would fail everything
    pred[1] += [[5, 0], [0, 10], [13, 0], [0, 0]]   # errors 5, 10, 13, 0 px (6 and 12 px)
    pred[2] += [[2, 0], [0, 3], [0, 0], [0, 0]]     # errors 2, 3 px (3.6 and 7.2 px)
    out = metrics.pck(pred, gt)
    assert out["frames"] == 2
    # @0.1 per joint: 2/2, 1/2 (10 > 6, 3 <= 3.6), 0/1, 1/1 -> mean 0.625 (pooled would be 4/6).
    assert out["per_joint@0.1"] == pytest.approx([1.0, 0.5, 0.0, 1.0])
    assert out["PCK@0.1"] == pytest.approx(0.625)
    # @0.2 per joint: 2/2, 2/2, 0/1 (13 > 12), 1/1 -> 0.75.
    assert out["PCK@0.2"] == pytest.approx(0.75)


def test_pck_missing_joints_and_predictions():
    gt = np.array([[[0, 0], [10, 10], [np.nan, np.nan]]] * 2)
    pred = np.array([[[0, 0], [10, 10], [500, 500]]] * 2, np.float64)
    out = metrics.pck(pred, gt)
    assert out["PCK@0.1"] == 1.0  # the joint missing in the ground truth is not scored
    assert np.isnan(out["per_joint@0.1"][2])
    pred[1, 1] = np.nan  # a missing prediction of a visible joint is wrong
    assert metrics.pck(pred, gt)["PCK@0.1"] == 0.5


def test_mean_iou_from_confusion():
    gt = np.array([[0, 0, 1, 1], [2, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    conf = metrics.confusion_matrix(gt, pred, 4)
    miou, per_class = metrics.mean_iou(conf)
    # class 0: inter 1, union 3; class 1: inter 2, union 3; class 2: inter 2, union 3; class 3 absent.
    np.testing.assert_allclose(per_class[:3], [1 / 3, 2 / 3, 2 / 3])
    assert np.isnan(per_class[3])
    assert miou == pytest.approx(5 / 9)
