"""ResNet encoders: shapes at training resolution, pinned parameter counts, layer check."""

import numpy as np
import pytest

from tc_keras.model.encoder import ResNetEncoder
from tests.layer_check import run_layer_check

# Pinned counts. Trainable = the torchvision ResNet trunk up to res4 (stem + res2..res4: 8,543,296
# for ResNet-50, 2,782,784 for ResNet-18) plus the 1x1 projection to 512 (1024*512 or 256*512).
PARAMS = {
    50: dict(trainable=9_067_584, total=9_098_176),
    18: dict(trainable=2_913_856, total=2_918_336),
}


@pytest.mark.parametrize("depth", [18, 50])
def test_shapes_and_pinned_parameter_counts(depth):
    enc = ResNetEncoder(depth=depth)
    frame = enc(np.zeros((1, 240, 240, 3), np.float32))
    patch = enc(np.zeros((1, 80, 80, 3), np.float32))
    assert frame.shape == (1, 30, 30, 512)
    assert patch.shape == (1, 10, 10, 512)
    trainable = sum(int(np.prod(w.shape)) for w in enc.trainable_weights)
    assert trainable == PARAMS[depth]["trainable"]
    assert enc.count_params() == PARAMS[depth]["total"]


def test_output_is_unit_norm_and_stride_8_for_any_size():
    enc = ResNetEncoder(depth=18)
    x = np.random.default_rng(0).normal(size=(2, 48, 64, 3)).astype(np.float32)
    y = np.asarray(enc(x))
    assert y.shape == (2, 6, 8, 512)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, atol=1e-4)


def test_layer_check():
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    run_layer_check(ResNetEncoder, dict(depth=18, out_channels=16, normalize=False), x, (2, 4, 4, 16))


def test_bad_depth_is_a_clear_error():
    with pytest.raises(ValueError, match="depth"):
        ResNetEncoder(depth=34)


def test_saved_encoder_model_loads_with_same_outputs(tmp_path):
    import keras
    enc = ResNetEncoder(depth=18)
    model = keras.Sequential([keras.Input((None, None, 3)), enc])
    x = np.random.default_rng(1).normal(size=(1, 32, 40, 3)).astype(np.float32)
    ref = np.asarray(model(x))
    model.save(tmp_path / "encoder.keras")
    loaded = keras.saving.load_model(tmp_path / "encoder.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), ref, atol=1e-5)


@pytest.mark.parametrize("kwargs,channels", [
    (dict(padding="reflect", out_channels=None), 256),  # the CRW release's options
    (dict(padding="zeros", out_channels=16), 16),
])
def test_layer_check_padding_and_projection_options(kwargs, channels):
    x = np.random.default_rng(0).normal(size=(2, 32, 24, 3)).astype(np.float32)
    run_layer_check(ResNetEncoder, dict(depth=18, normalize=False, **kwargs), x,
                    (2, 4, 3, channels))


def test_no_projection_counts_the_trunk_only():
    enc = ResNetEncoder(depth=18, out_channels=None, padding="reflect")
    assert enc(np.zeros((1, 40, 48, 3), np.float32)).shape == (1, 5, 6, 256)
    trainable = sum(int(np.prod(w.shape)) for w in enc.trainable_weights)
    assert trainable == PARAMS[18]["trainable"] - 256 * 512  # the trunk, as pinned above


def test_zero_padding_equals_same_only_where_keras_pads_symmetrically():
    """Keras' "same" pads stride-2 layers symmetrically on odd sizes (25 -> 13 -> 7, 41 -> 21
    -> 11), asymmetrically on even ones: "zeros" (PyTorch's) agrees with it on the first."""
    same = ResNetEncoder(depth=18)
    zeros = ResNetEncoder(depth=18, padding="zeros")
    rng = np.random.default_rng(0)
    odd = rng.normal(size=(1, 25, 41, 3)).astype(np.float32)
    even = rng.normal(size=(1, 32, 32, 3)).astype(np.float32)
    same(odd), zeros(odd)
    zeros.set_weights(same.get_weights())
    np.testing.assert_allclose(np.asarray(zeros(odd)), np.asarray(same(odd)), atol=1e-5)
    assert np.abs(np.asarray(zeros(even)) - np.asarray(same(even))).max() > 1e-2


def test_bad_padding_is_a_clear_error():
    with pytest.raises(ValueError, match="padding"):
        ResNetEncoder(depth=18, padding="circular")
