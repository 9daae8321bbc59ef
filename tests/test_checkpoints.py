"""tc_keras.checkpoints: a run's training state and config, and rebuilding the model from them."""

import json

import numpy as np
import pytest

from tc_keras import checkpoints
from tc_keras import config as tconfig
from tc_keras.checkpoints import training_checkpoint
from tests.test_model import small_model


def test_training_checkpoint_restores_every_variable(tmp_path):
    """Layers kept in lists (encoder blocks, localizer convs) and BatchNorm moving statistics
    included: a plain tf.train.Checkpoint(model=...) misses them under Keras 3."""
    saved = small_model(num_past=1)
    rng = np.random.default_rng(0)
    for v in saved.variables:
        v.assign(rng.normal(size=v.shape).astype(v.dtype))
    path = training_checkpoint(saved).save(str(tmp_path / "ckpt"))
    restored = small_model(num_past=1)
    training_checkpoint(restored).restore(path).assert_existing_objects_matched()
    assert len(restored.variables) == len(saved.variables)
    for a, b in zip(saved.variables, restored.variables):
        assert a.path.split("/", 1)[1] == b.path.split("/", 1)[1]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)




def test_restore_training_model_from_a_workdir(tmp_path):
    cfg = tconfig.Config(tconfig.DataConfig(num_past=1, crop_size=168, resize_short=192,
                                            target_offset=6),
                         tconfig.ModelConfig(encoder="resnet18"),
                         tconfig.TrainConfig(workdir=str(tmp_path)))
    with pytest.raises(ValueError, match="not a training workdir"):
        checkpoints.load_run_config(tmp_path)
    (tmp_path / checkpoints.CONFIG_FILE).write_text(cfg.to_json())
    assert checkpoints.load_run_config(tmp_path) == cfg
    with pytest.raises(ValueError, match="no checkpoint"):
        checkpoints.restore_training_model(tmp_path)
    saved = small_model(num_past=1)
    rng = np.random.default_rng(1)
    for v in saved.variables:
        v.assign(rng.normal(size=v.shape).astype(v.dtype))
    training_checkpoint(saved).save(str(tmp_path / "ckpt" / "ckpt"))
    model, path = checkpoints.restore_training_model(tmp_path)
    assert path.endswith("ckpt-1") and json.loads(cfg.to_json())["model"]["encoder"] == "resnet18"
    for a, b in zip(saved.variables, model.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
