"""tc_keras.train.checkpoints: a run's training state and config, and rebuilding the model from them."""

import json

import numpy as np
import pytest

from tc_keras.export import encoder_io
from tc_keras.train import checkpoints
from tc_keras.train import config as tconfig
from tc_keras.train.checkpoints import training_checkpoint
from tests import broken_files
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


@pytest.mark.parametrize("part", ["data-00000-of-00001", "index"])
def test_checkpoint_problem_names_a_cut_file(tmp_path, part):
    path = training_checkpoint(small_model(num_past=1)).save(str(tmp_path / "ckpt"))
    assert checkpoints.checkpoint_problem(path) is None
    broken_files.cut(f"{path}.{part}")
    problem = checkpoints.checkpoint_problem(path)
    # Restoring it raised a bare IndexError ("Read less bytes than requested") or an OpError.
    assert problem and problem.split(":")[0] in ("IndexError", "DataLossError", "OpError")
    assert checkpoints.checkpoint_problem(tmp_path / "nothing-1") is not None


def test_config_conflicts_name_each_fixed_flag(tmp_path):
    cfg = tconfig.Config(tconfig.DataConfig(), tconfig.ModelConfig(encoder="resnet18"),
                         tconfig.TrainConfig(workdir=str(tmp_path)))
    assert checkpoints.config_conflicts(tmp_path, cfg) == []  # a new workdir
    (tmp_path / encoder_io.CONFIG_FILE).write_text(cfg.to_json())
    other = tconfig.Config(
        tconfig.DataConfig(crop_size=168, resize_short=192, data="elsewhere"),
        tconfig.ModelConfig(encoder="resnet50", sync_batchnorm=True),
        tconfig.TrainConfig(workdir="moved", train_steps=99, checkpoint_every=7))
    assert checkpoints.config_conflicts(tmp_path, other) == [
        "--crop_size: 240 (stored) vs 168 (given)", "--resize_short: 256 (stored) vs 192 (given)",
        "--encoder: resnet18 (stored) vs resnet50 (given)",
        "--sync_batchnorm: false (stored) vs true (given)"]


def test_restore_training_model_from_a_workdir(tmp_path):
    cfg = tconfig.Config(tconfig.DataConfig(num_past=1, crop_size=168, resize_short=192,
                                            target_offset=6),
                         tconfig.ModelConfig(encoder="resnet18"),
                         tconfig.TrainConfig(workdir=str(tmp_path)))
    with pytest.raises(ValueError, match="not a training workdir"):
        checkpoints.load_run_config(tmp_path)
    (tmp_path / encoder_io.CONFIG_FILE).write_text(cfg.to_json())
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


def test_workdir_written_before_bn_groups_resumes_with_the_joint_batch(tmp_path):
    """A config.json without bn_groups was trained with the joint batch: it reads back as
    "joint", and the command that started it (the default, "separate") resumes with "joint", the
    first time and after config.json stores it; an explicit stored "separate" is compared like any
    model flag."""
    cfg = tconfig.Config(tconfig.DataConfig(), tconfig.ModelConfig(encoder="resnet18"),
                         tconfig.TrainConfig(workdir=str(tmp_path)))
    assert cfg.model.bn_groups == "separate"
    assert checkpoints.resumed_config(tmp_path, cfg) == (cfg, [])  # a new workdir
    old = json.loads(cfg.to_json())
    del old["model"]["bn_groups"]
    (tmp_path / encoder_io.CONFIG_FILE).write_text(json.dumps(old))
    assert checkpoints.load_run_config(tmp_path).model.bn_groups == "joint"
    assert checkpoints.config_conflicts(tmp_path, cfg) == [
        "--bn_groups: joint (stored) vs separate (given)"]
    resumed, taken = checkpoints.resumed_config(tmp_path, cfg)
    assert taken == ["--bn_groups=joint"] and resumed.model.bn_groups == "joint"
    assert resumed.model.encoder == "resnet18" and resumed.train == cfg.train
    assert checkpoints.config_conflicts(tmp_path, resumed) == []
    (tmp_path / encoder_io.CONFIG_FILE).write_text(resumed.to_json())  # as the resumed run does
    assert checkpoints.resumed_config(tmp_path, cfg) == (resumed, ["--bn_groups=joint"])
    (tmp_path / encoder_io.CONFIG_FILE).write_text(cfg.to_json())  # a run with "separate"
    assert checkpoints.resumed_config(tmp_path, cfg) == (cfg, [])
    assert checkpoints.config_conflicts(tmp_path, resumed) == [
        "--bn_groups: separate (stored) vs joint (given)"]
