"""Losses against float64 NumPy references and their invariants."""

import numpy as np
import pytest

from tc_keras.model import losses as tl
from tc_keras import ops as tops
from tests.test_ops import np_bilinear, random_thetas


def np_theta_loss(a, b, p=20):
    lin = np.linspace(-1, 1, p)
    gx, gy = np.meshgrid(lin, lin)
    pts = np.stack([gx.ravel(), gy.ravel(), np.ones(p * p)], -1)  # (P*P, 3)
    da = pts @ a.transpose(0, 2, 1) - pts @ b.transpose(0, 2, 1)  # (B, P*P, 2)
    return (da ** 2).sum(-1).mean(-1)


def test_theta_loss_zero_for_equal_and_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = random_thetas(rng, 3), random_thetas(rng, 3)
    np.testing.assert_allclose(np.asarray(tl.theta_loss(a, a)), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(tl.theta_loss(a, b)), np_theta_loss(a, b), rtol=1e-10)
    # A pure translation by d gives |d|^2 at every point.
    c = a.copy()
    c[:, 0, 2] += 0.3
    c[:, 1, 2] -= 0.4
    np.testing.assert_allclose(np.asarray(tl.theta_loss(a, c)), 0.25, rtol=1e-10)


def test_inlier_score_matches_explicit_warped_identity_mask():
    rng = np.random.default_rng(1)
    hh, ww, qh, qw = 6, 7, 3, 3
    logits = rng.normal(size=(2, qh, qw, hh * ww))
    aff = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    theta = random_thetas(rng, 2)
    grid = np.asarray(tops.affine_grid(theta, qh, qw))
    # Identity correspondences: one one-hot image per image position n, warped by theta.
    eye = np.eye(hh * ww).reshape(hh * ww, hh, ww)
    expected = []
    for b in range(2):
        masks = np_bilinear(eye.transpose(1, 2, 0)[None], grid[b:b + 1])[0]  # (qh, qw, N)
        masks = masks / (masks + 1e-5).sum()  # the reference: sum(mask + eps) over all entries
        expected.append((masks * aff[b]).sum())
    got = np.asarray(tl.inlier_score(aff, theta, (hh, ww)))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_inlier_score_is_one_when_affinity_sits_on_theta():
    """An affinity that puts each query position on its own sample point scores 1 (up to the
    reference's 1e-5 per mask entry in the normaliser: 9 / (9 + 1e-5 * 81 * 9))."""
    hh = ww = 9
    theta = np.array([[[1 / 3, 0, 0], [0, 1 / 3, 0]]])  # centre 3x3 cells exactly
    aff = np.zeros((1, 3, 3, 81))
    for i in range(3):
        for j in range(3):
            aff[0, i, j, (3 + i) * 9 + (3 + j)] = 1.0
    expected = 9 / (9 + 1e-5 * 81 * 9)
    np.testing.assert_allclose(np.asarray(tl.inlier_score(aff, theta, (hh, ww))), expected,
                               rtol=1e-6)


def test_inner_product_score():
    rng = np.random.default_rng(2)
    q = np.asarray(tops.l2_normalize(rng.normal(size=(2, 3, 3, 5))))
    assert np.allclose(np.asarray(tl.inner_product_score(q, q)), 1.0)
    np.testing.assert_allclose(np.asarray(tl.inner_product_score(q, -q)), -1.0)


def _outputs(rng, k, theta_long, theta_skip, theta_self=None):
    b = theta_long.shape[0]
    aff = rng.random((b, k, 3, 3, 81))
    aff /= aff.sum(-1, keepdims=True)
    feats = np.asarray(tops.l2_normalize(rng.normal(size=(b, k, 3, 3, 4))))
    return dict(theta_long=theta_long, theta_skip=theta_skip, theta_first=theta_long,
                affinity_first=aff, tracked_first=feats, query=feats[:, 0],
                theta_self=theta_long[:, 0] if theta_self is None else theta_self)


def test_cycle_losses_zero_cycle_error_for_identity_correspondence_and_weights():
    rng = np.random.default_rng(3)
    gt = random_thetas(rng, 2)
    same = np.repeat(gt[:, None], 4, axis=1)
    out = tl.cycle_losses(_outputs(rng, 4, same, same), gt, (9, 9))
    for i in range(1, 5):
        assert float(out[f"long_{i}"]) == pytest.approx(0.0, abs=1e-12)
        assert float(out[f"skip_{i}"]) == pytest.approx(0.0, abs=1e-12)
    assert float(out["loss"]) == pytest.approx(float(out["sim"]), abs=1e-12)

    other = np.repeat(random_thetas(rng, 2)[:, None], 4, axis=1)
    out_in = _outputs(rng, 4, other, same)
    out = tl.cycle_losses(out_in, gt, (9, 9), similarity="inner_product",
                          long_weight=0.5, skip_weight=0.25, sim_weight=2.0)
    ref_long = np_theta_loss(other[:, 0], gt).mean()
    assert float(out["long"]) == pytest.approx(ref_long, rel=1e-9)
    # tracked_first[:, 0] is the query itself; the other k's are other unit vectors.
    q = out_in["query"]
    ref_sim = -np.mean([(q * out_in["tracked_first"][:, i]).sum(-1).mean() for i in range(4)])
    assert float(out["sim"]) == pytest.approx(ref_sim, rel=1e-9)
    assert float(out["sim_1"]) == pytest.approx(-1.0, rel=1e-9)
    total = 0.5 * ref_long + 0.25 * float(out["skip"]) + 2.0 * float(out["sim"])
    assert float(out["loss"]) == pytest.approx(total, rel=1e-9)


def test_self_localisation_term_is_reported_always_and_weighted_only_when_asked():
    rng = np.random.default_rng(5)
    gt = random_thetas(rng, 3)
    same = np.repeat(gt[:, None], 2, axis=1)
    found = random_thetas(rng, 3)
    out_in = _outputs(rng, 2, same, same, theta_self=found)
    ref = np_theta_loss(found, gt).mean()
    plain = tl.cycle_losses(out_in, gt, (9, 9))
    assert float(plain["self"]) == pytest.approx(ref, rel=1e-9)
    assert float(plain["loss"]) == pytest.approx(float(plain["sim"]), abs=1e-12)
    weighted = tl.cycle_losses(out_in, gt, (9, 9), self_weight=0.5)
    assert float(weighted["loss"]) == pytest.approx(float(plain["sim"]) + 0.5 * ref, rel=1e-9)


def test_unknown_similarity_is_a_clear_error():
    rng = np.random.default_rng(4)
    gt = random_thetas(rng, 1)
    same = np.repeat(gt[:, None], 2, axis=1)
    with pytest.raises(ValueError, match="similarity"):
        tl.cycle_losses(_outputs(rng, 2, same, same), gt, (9, 9), similarity="cosine")
    with pytest.raises(TypeError):  # the similarity and the weights are keyword-only
        tl.cycle_losses(_outputs(rng, 2, same, same), gt, (9, 9), "inlier")


def test_inlier_score_gradient_reaches_theta_unless_stopped():
    """The reference does not detach theta in the inlier term (docs/METHOD.md, "Gradient paths"): the
    score's gradient in theta matches finite differences; `theta_grad=False` stops it."""
    import tensorflow as tf

    rng = np.random.default_rng(6)
    hh = ww = 9
    logits = rng.normal(size=(2, 3, 3, hh * ww)) * 3
    aff = tf.constant(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    theta = tf.Variable(random_thetas(rng, 2))
    with tf.GradientTape(persistent=True) as tape:
        score = tf.reduce_sum(tl.inlier_score(aff, theta, (hh, ww)))
        stopped = tf.reduce_sum(tl.inlier_score(aff, theta, (hh, ww), theta_grad=False))
    grad = tape.gradient(score, theta).numpy()
    assert tape.gradient(stopped, theta) is None
    numeric = np.zeros_like(grad)
    eps = 1e-6
    base = theta.numpy()
    for index in np.ndindex(*base.shape):
        for sign in (1, -1):
            t = base.copy()
            t[index] += sign * eps
            numeric[index] += sign * float(tf.reduce_sum(tl.inlier_score(aff, t, (hh, ww)))) / (2 * eps)
    assert np.abs(grad).max() > 1e-3
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-7)


def test_sim_theta_grad_stop_is_for_the_inlier_term_only():
    rng = np.random.default_rng(7)
    gt = random_thetas(rng, 1)
    same = np.repeat(gt[:, None], 2, axis=1)
    with pytest.raises(ValueError, match="inlier"):
        tl.cycle_losses(_outputs(rng, 2, same, same), gt, (9, 9), similarity="inner_product",
                        sim_theta_grad=False)
