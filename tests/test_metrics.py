"""tc_keras.metrics against hand-computed cases and brute-force references."""

import numpy as np
import pytest

from tc_keras import metrics


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


def test_boundary_is_one_pixel_wide_and_ignores_image_border():
    b = metrics.boundary(square(side=20))
    assert np.count_nonzero(b) == 4 * 20 - 4
    assert not metrics.boundary(np.ones((16, 16), bool)).any()
    # A half-plane touching the border: only the inner edge row is a boundary.
    half = np.zeros((16, 16), bool)
    half[8:] = True
    assert np.array_equal(np.argwhere(metrics.boundary(half))[:, 0], np.full(16, 8))


def test_boundary_radius_is_8_px_at_480p():
    assert metrics.boundary_radius((480, 854)) == 8
    assert metrics.boundary_radius((64, 64)) == 1


def test_boundary_f_of_shifted_square():
    gt = square()
    # A 1 px shift is within the 1 px tolerance of a 64x64 image: perfect F.
    assert metrics.boundary_f(square(left=11), gt) == 1.0
    # A 3 px shift: each square's top and bottom rows match on 18 of 20 pixels and each side
    # column on the 2 pixels next to a corner: 38 of 76 boundary pixels, P = R = F = 0.5.
    shifted = square(left=13)
    assert metrics.boundary_f(shifted, gt) == pytest.approx(0.5)
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


def test_pck_made_up_joints():
    # GT person bbox: x 0..100, y 0..50 -> L = max(100, 50) = 100.
    gt = np.array([[[0, 0], [100, 0], [0, 50], [100, 50]]], np.float64)
    gt = np.repeat(gt, 2, axis=0)  # frame 0 is excluded
    pred = gt.copy()
    pred[1] += [[5, 0], [0, 15], [30, 0], [0, 0]]   # errors 5, 15, 30, 0 px
    pred[0] += 1000                                    # frame 0 would fail everything
    out = metrics.pck(pred, gt)
    assert out["frames"] == 1
    assert out["PCK@0.1"] == pytest.approx(2 / 4)   # <= 10 px: 5, 0
    assert out["PCK@0.2"] == pytest.approx(3 / 4)   # <= 20 px: 5, 15, 0
    assert out["per_joint@0.2"] == [1.0, 1.0, 0.0, 1.0]


def test_pck_ignores_missing_ground_truth():
    gt = np.array([[[0, 0], [10, 10], [np.nan, np.nan]]] * 2)
    pred = np.array([[[0, 0], [10, 10], [500, 500]]] * 2, np.float64)
    assert metrics.pck(pred, gt)["PCK@0.1"] == 1.0


def test_mean_iou_from_confusion():
    gt = np.array([[0, 0, 1, 1], [2, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    conf = metrics.confusion_matrix(gt, pred, 4)
    miou, per_class = metrics.mean_iou(conf)
    # class 0: inter 1, union 3; class 1: inter 2, union 3; class 2: inter 2, union 3; class 3 absent.
    np.testing.assert_allclose(per_class[:3], [1 / 3, 2 / 3, 2 / 3])
    assert np.isnan(per_class[3])
    assert miou == pytest.approx(5 / 9)
