"""tc_keras.export.encoder_io: the one loader of an --encoder argument, and the encoder file."""

import pathlib

import keras
import numpy as np
import pytest

from tc_keras.export import encoder_io
from tc_keras.model.encoder import ResNetEncoder
from tests import broken_files


def test_load_encoder_specs(tmp_path):
    assert encoder_io.load_encoder("identity") is None
    frames = np.random.default_rng(0).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    embed = encoder_io.load_encoder("random", 18, seed=1)
    feats = np.asarray(embed(frames))
    assert feats.shape == (1, 4, 6, 512)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), 1.0, atol=1e-4)
    # Weights saved from keras.Sequential([encoder]) load back to the same features.
    keras.utils.set_random_seed(1)
    encoder = ResNetEncoder(depth=18)
    model = keras.Sequential([keras.Input((None, None, 3)), encoder])
    model.save_weights(tmp_path / "enc.weights.h5")
    keras.utils.set_random_seed(7)  # a different init, overwritten by the loaded weights
    loaded = encoder_io.load_encoder(str(tmp_path / "enc.weights.h5"), 18)
    np.testing.assert_allclose(np.asarray(loaded(frames)),
                               np.asarray(encoder_io.make_embed(encoder)(frames)), atol=1e-5)
    assert encoder_io.load_encoder(str(tmp_path), 18) is not None  # a folder: its newest weights file
    with pytest.raises(ValueError, match="nope.h5"):
        encoder_io.load_encoder(str(tmp_path / "nope.h5"))
    (tmp_path / "bad.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="bad.weights.h5"):
        encoder_io.load_encoder(str(tmp_path / "bad.weights.h5"))




def test_save_encoder_writes_atomically_and_loads_back(tmp_path):
    keras.utils.set_random_seed(2)
    encoder = ResNetEncoder(depth=18)
    encoder.build((None, 32, 32, 3))
    path = tmp_path / "run" / encoder_io.ENCODER_FILE
    encoder_io.save_encoder(encoder, path)
    assert sorted(p.name for p in path.parent.iterdir()) == [encoder_io.ENCODER_FILE]
    frames = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    loaded = encoder_io.load_encoder(str(path.parent))  # a workdir: its encoder.keras
    np.testing.assert_allclose(np.asarray(loaded(frames)),
                               np.asarray(encoder_io.make_embed(encoder)(frames)), atol=1e-5)


def test_encoder_files_saved_with_keras_batchnorm_load(tmp_path, monkeypatch):
    """Encoders saved before the fused BatchNorm (tc_keras.model.batchnorm) used Keras' own layer; the
    weights of the BatchNorms a block keeps in a list are stored under the class's name, so their
    files must still load (with every moving statistic, not silently skipped)."""
    from tc_keras.model import batchnorm

    monkeypatch.setattr(batchnorm, "BatchNormalization", keras.layers.BatchNormalization)
    keras.utils.set_random_seed(3)
    old = ResNetEncoder(depth=18)
    old.build((None, 32, 32, 3))
    rng = np.random.default_rng(4)
    for v in old.variables:  # moving statistics too: they must not stay at their initial values
        v.assign(rng.normal(0.5, 0.1, v.shape).astype(np.float32))
    path = tmp_path / encoder_io.ENCODER_FILE
    encoder_io.save_encoder(old, path)
    monkeypatch.undo()
    loaded = encoder_io.load_encoder_model(str(path))
    (encoder,) = [layer for layer in loaded.layers if isinstance(layer, ResNetEncoder)]
    assert type(encoder.stem_bn) is batchnorm.BatchNormalization  # the fused one
    for a, b in zip(old.variables, loaded.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)



def test_cut_or_corrupt_keras_file_is_named_as_such(tmp_path):
    """Keras' own message for a .keras file it cannot open is "File not found"."""
    fixture = pathlib.Path(__file__).parent / "fixtures" / "encoder_b9206ce.keras"
    cut = broken_files.cut(fixture, 0.5, out=tmp_path / "cut.keras")
    flipped = bytearray(fixture.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # inside the weights member
    (tmp_path / "flipped.keras").write_bytes(bytes(flipped))
    for path, why in ((cut, "File is not a zip file"),
                      (tmp_path / "flipped.keras", "model.weights.h5")):
        with pytest.raises(ValueError) as info:
            encoder_io.load_encoder_model(str(path))
        message = str(info.value)
        assert message.startswith(f"--encoder {path}: not a readable .keras file (truncated or "
                                  "corrupt zip: "), message
        assert why in message and "File not found" not in message


def test_encoder_file_saved_before_the_subsystem_move_loads():
    """tests/fixtures/encoder_b9206ce.keras: a ResNet-18 encoder saved by the flat layout of
    commit b9206ce (tc_keras/encoder.py), weights zero but for BatchNorm's scale and moving
    variance (1) and the projection (0.5), so the file is small. It must load after the move."""
    path = pathlib.Path(__file__).parent / "fixtures" / "encoder_b9206ce.keras"
    model = encoder_io.load_encoder_model(str(path))
    encoder = model if isinstance(model, ResNetEncoder) else next(
        layer for layer in model.layers if isinstance(layer, ResNetEncoder))
    assert encoder.depth == 18
    np.testing.assert_array_equal(np.asarray(encoder.projection.kernel), 0.5)
    ones = [v for v in encoder.weights if "moving_variance" in v.path or "gamma" in v.path]
    assert ones and all(np.all(np.asarray(v) == 1) for v in ones)
    assert sum(int(np.count_nonzero(np.asarray(v))) for v in encoder.weights) == (
        encoder.projection.kernel.numpy().size + sum(v.numpy().size for v in ones))
