"""tc_keras.ops against float64 NumPy references and invariants."""

import numpy as np
import tensorflow as tf

from tc_keras import ops as tops


def np_bilinear(image, coords):
    """Float64 reference: bilinear sampling with zero padding, align_corners=False."""
    b, h, w, c = image.shape
    out = np.zeros(coords.shape[:3] + (c,))
    for n in range(b):
        for i in range(coords.shape[1]):
            for j in range(coords.shape[2]):
                px = ((coords[n, i, j, 0] + 1) * w - 1) / 2
                py = ((coords[n, i, j, 1] + 1) * h - 1) / 2
                x0, y0 = int(np.floor(px)), int(np.floor(py))
                for yy in (y0, y0 + 1):
                    for xx in (x0, x0 + 1):
                        if 0 <= xx < w and 0 <= yy < h:
                            wt = (1 - abs(px - xx)) * (1 - abs(py - yy))
                            out[n, i, j] += wt * image[n, yy, xx]
    return out


def np_theta(tx, ty, a, s):
    return np.array([[s * np.cos(a), -s * np.sin(a), tx], [s * np.sin(a), s * np.cos(a), ty]])


def random_thetas(rng, b):
    return np.stack([np_theta(*rng.uniform(-0.9, 0.9, 2), rng.uniform(-0.8, 0.8), rng.uniform(0.3, 0.7))
                     for _ in range(b)])


def test_sampler_matches_numpy_float64():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 9, 11, 3))
    theta = random_thetas(rng, 2)
    grid = np.asarray(tops.affine_grid(tf.constant(theta), 5, 4))
    ref = np_bilinear(image, grid)
    got = np.asarray(tops.affine_sample(tf.constant(image), tf.constant(theta), 5, 4))
    np.testing.assert_allclose(got, ref, atol=1e-10)
    # float32 path agrees with the float64 reference too.
    got32 = np.asarray(tops.affine_sample(tf.constant(image, tf.float32),
                                          tf.constant(theta, tf.float32), 5, 4))
    np.testing.assert_allclose(got32, ref, atol=1e-5)


def test_identity_theta_returns_input():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 7, 10, 4)).astype(np.float32)
    ident = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (2, 1, 1))
    out = np.asarray(tops.affine_sample(image, ident, 7, 10))
    np.testing.assert_allclose(out, image, atol=1e-6)


def test_out_of_range_samples_are_zero():
    image = np.ones((1, 6, 6, 2), np.float32)
    theta = np.array([[[0.5, 0, 3.0], [0, 0.5, 0]]], np.float32)  # far to the right
    out = np.asarray(tops.affine_sample(image, theta, 4, 4))
    assert np.all(out == 0)
    # Half a pixel past the last centre: the weight of the missing neighbour is dropped.
    coords = np.array([[[[1.0, 0.0]]]], np.float32)  # right edge, between rows 2 and 3
    edge = np.asarray(tops.bilinear_sample(image, coords))
    np.testing.assert_allclose(edge, 0.5, atol=1e-6)


def test_sampler_gradient_wrt_theta_matches_finite_differences():
    rng = np.random.default_rng(2)
    image = tf.constant(rng.normal(size=(1, 8, 8, 2)))
    theta0 = random_thetas(rng, 1)
    weights = tf.constant(rng.normal(size=(1, 4, 4, 2)))

    def f(th):
        return tf.reduce_sum(tops.affine_sample(image, th, 4, 4) * weights)

    th = tf.Variable(theta0)
    with tf.GradientTape() as tape:
        val = f(th)
    grad = tape.gradient(val, th).numpy()
    eps = 1e-6
    fd = np.zeros_like(theta0)
    for idx in np.ndindex(*theta0.shape):
        tp, tm = theta0.copy(), theta0.copy()
        tp[idx] += eps
        tm[idx] -= eps
        fd[idx] = (f(tf.constant(tp)).numpy() - f(tf.constant(tm)).numpy()) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-6)


def test_same_theta_picks_same_region_at_two_resolutions():
    """A 1/3-scale theta cuts the same region from a 24x24 map and its 8x-pooled 3x3 version."""
    img = np.arange(24 * 24, dtype=np.float64).reshape(1, 24, 24, 1)
    pooled = img.reshape(1, 3, 8, 3, 8, 1).mean(axis=(2, 4))
    # Translation by one third of the frame: the top-left third of the grid.
    theta = np.array([[[1 / 3, 0, -2 / 3], [0, 1 / 3, -2 / 3]]])
    patch = np.asarray(tops.affine_sample(img, theta, 8, 8))
    np.testing.assert_allclose(patch[0, ..., 0], img[0, :8, :8, 0], atol=1e-9)
    cell = np.asarray(tops.affine_sample(pooled, theta, 1, 1))
    np.testing.assert_allclose(cell[0, 0, 0, 0], img[0, :8, :8, 0].mean(), atol=1e-9)


def test_affinity_rows_sum_to_one_and_match_numpy():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(2, 5, 6, 8))
    qry = rng.normal(size=(2, 3, 3, 8))
    temp = 0.25
    got = np.asarray(tops.affinity_softmax(tf.constant(img), tf.constant(qry), temp))
    assert got.shape == (2, 3, 3, 30)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)
    logits = np.einsum("bhwc,bnc->bhwn", qry, img.reshape(2, 30, 8)) / temp
    ref = np.exp(logits - logits.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_l2_normalize_and_frame_normalisation():
    x = np.random.default_rng(4).normal(size=(3, 4, 5)).astype(np.float32)
    y = np.asarray(tops.l2_normalize(x))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, atol=1e-5)
    frames = np.full((1, 2, 2, 3), 255, np.uint8)
    z = np.asarray(tops.normalize_frames(frames))
    np.testing.assert_allclose(z[0, 0, 0], (1 - np.array(tops.IMAGENET_MEAN)) / np.array(tops.IMAGENET_STD),
                               rtol=1e-6)


def test_theta_from_params_matches_numpy():
    tx, ty, a = np.array([0.1, -0.3]), np.array([0.2, 0.5]), np.array([0.3, -1.0])
    got = np.asarray(tops.theta_from_params(tx, ty, a))
    for i in range(2):
        np.testing.assert_allclose(got[i], np_theta(tx[i], ty[i], a[i], 1 / 3), atol=1e-12)
