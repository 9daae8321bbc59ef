"""Affinity, Localizer, SpatialSampler and Tracker layers."""

import numpy as np
import keras
import pytest

from tc_keras import ops as tops
from tc_keras.model.tracker import AFFINITY_TEMPERATURE, Affinity, Localizer, SpatialSampler, Tracker
from tests.layer_check import run_layer_check


def _feats(rng, *shape):
    return np.asarray(tops.l2_normalize(rng.normal(size=shape).astype(np.float32)))


def test_affinity_layer():
    rng = np.random.default_rng(0)
    img, qry = _feats(rng, 2, 6, 5, 8), _feats(rng, 2, 3, 3, 8)
    layer = run_layer_check(Affinity, dict(temperature=0.5), (img, qry), (2, 3, 3, 30), fit=False)
    np.testing.assert_allclose(np.asarray(layer(img, qry)).sum(-1), 1.0, atol=1e-5)
    assert abs(AFFINITY_TEMPERATURE * 512 ** 0.5 - 1.0) < 1e-12


def test_localizer_layer_outputs_fixed_scale_theta():
    aff = np.random.default_rng(1).random((2, 10, 10, 36)).astype(np.float32)
    layer = run_layer_check(Localizer, dict(filters=(8, 4), kernel_size=4, scale=1 / 3), aff,
                            (2, 2, 3))
    theta = np.asarray(layer(aff))
    # Rotation + fixed scale: the 2x2 linear part is (1/3) * an orthonormal matrix.
    lin = theta[:, :, :2] * 3
    np.testing.assert_allclose(lin @ lin.transpose(0, 2, 1), np.tile(np.eye(2), (2, 1, 1)), atol=1e-5)


def test_spatial_sampler_layer():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(2, 9, 9, 4)).astype(np.float32)
    theta = np.tile(np.array([[1 / 3, 0, 0], [0, 1 / 3, 0]], np.float32), (2, 1, 1))
    layer = run_layer_check(SpatialSampler, dict(height=3, width=3), (feats, theta), (2, 3, 3, 4),
                            fit=False)
    # 1/3 scale, no translation: the centre 3x3 cells.
    np.testing.assert_allclose(np.asarray(layer(feats, theta)), feats[:, 3:6, 3:6], atol=1e-5)


def test_tracker_composes_and_round_trips():
    rng = np.random.default_rng(3)
    img, qry = _feats(rng, 2, 21, 21, 16), _feats(rng, 2, 7, 7, 16)
    tracker = Tracker(patch_size=(7, 7), filters=(8, 4))
    out = tracker(img, qry)
    assert out["theta"].shape == (2, 2, 3)
    assert out["affinity"].shape == (2, 7, 7, 441)
    assert out["features"].shape == (2, 7, 7, 16)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out["features"]), axis=-1), 1, atol=1e-4)
    # The tracked features are the image features sampled at theta.
    ref = np.asarray(tops.l2_normalize(tops.affine_sample(img, out["theta"], 7, 7)))
    np.testing.assert_allclose(np.asarray(out["features"]), ref, atol=1e-5)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(tracker))
    assert clone.get_config() == tracker.get_config()
    clone(img, qry)
    clone.set_weights(tracker.get_weights())
    np.testing.assert_allclose(np.asarray(clone(img, qry)["theta"]), np.asarray(out["theta"]), atol=1e-5)


def test_localizer_initialised_as_the_reference_and_parameter_count_pinned():
    """Convolutions without bias, Kaiming normal fan_out; dense N(0, 0.01), zero bias (docs/METHOD.md, "Initialisation")."""
    keras.utils.set_random_seed(0)
    tracker = Tracker(patch_size=(10, 10))
    tracker.build((None, 30, 30, 512), (None, 10, 10, 512))
    loc = tracker.localizer
    # conv 900->128 k4 (no bias) + conv 128->64 k4 (no bias) + dense 1024->3 with bias.
    assert tracker.count_params() == 4 * 4 * 900 * 128 + 4 * 4 * 128 * 64 + 1024 * 3 + 3 == 1_977_347
    for conv in loc.convs:
        assert conv.bias is None
        kernel = np.asarray(conv.kernel)
        fan_out = kernel.shape[0] * kernel.shape[1] * kernel.shape[3]
        assert kernel.std() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)
        # Untruncated: some weights lie beyond two standard deviations.
        assert np.mean(np.abs(kernel) > 2 * kernel.std()) > 0.03
    assert np.asarray(loc.dense.kernel).std() == pytest.approx(0.01, rel=0.1)
    assert not np.asarray(loc.dense.bias).any()
