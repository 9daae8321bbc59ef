"""tc_keras.train.config: flags made from the dataclass fields, validation, config -> kwargs."""

import copy
import dataclasses
import json
import pathlib

import pytest
from absl import flags

from tc_keras.train import config as tconfig
from tc_keras.model import timecycle as tmodel

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_config_validates_and_round_trips():
    cfg = tconfig.Config(tconfig.DataConfig(), tconfig.ModelConfig(), tconfig.TrainConfig(workdir="w"))
    assert tconfig.Config.from_dict(json.loads(cfg.to_json())) == cfg
    kwargs = tconfig.model_kwargs(cfg)
    assert kwargs["depth"] == 50 and kwargs["num_past"] == 4 and kwargs["crop_size"] == 240
    with pytest.raises(ValueError, match="crop_size"):
        tconfig.DataConfig(crop_size=100)
    with pytest.raises(ValueError, match="target_offset"):
        tconfig.DataConfig(num_past=4, frame_gap=2, target_offset=5)
    with pytest.raises(ValueError, match="workdir"):
        tconfig.TrainConfig()
    with pytest.raises(ValueError, match="encoder"):
        tconfig.ModelConfig(encoder="resnet34")


@pytest.mark.parametrize("flagfile", sorted((ROOT / "configs").glob("*.flags")),
                         ids=lambda p: p.name)
def test_shipped_flagfiles_parse_into_valid_configs(flagfile):
    tconfig.define_flags()
    values = copy.deepcopy(flags.FLAGS)  # the global flags stay unparsed for other tests
    values(["train", f"--flagfile={flagfile}"])
    cfg = tconfig.Config.from_flags(values)
    assert cfg.train.workdir and tconfig.model_kwargs(cfg)["crop_size"] == cfg.data.crop_size


def test_every_field_is_one_flag_with_its_default_in_the_help():
    values = flags.FlagValues()
    tconfig.define_flags(values)
    tconfig.define_flags(values)  # idempotent
    fields = [f for section in tconfig.SECTIONS for f in dataclasses.fields(section)]
    assert sorted(values) == sorted(f.name for f in fields)
    for field in fields:
        flag = values[field.name]
        assert flag.default == field.default, field.name
        if field.default != "":
            assert flag.help.endswith(f"Default: {tconfig.shown(field.default)}."), flag.help
    assert values["long_weight"].help.endswith("Default: 0.02.")
    assert values["sim_theta_grad"].help.endswith("Default: true.")
    values(["train", "--workdir=w", "--encoder=resnet18", "--nosim_theta_grad", "--crop_size=168",
            "--resize_short=192"])
    cfg = tconfig.Config.from_flags(values)
    assert (cfg.model.encoder, cfg.model.sim_theta_grad, cfg.data.crop_size) == ("resnet18", False, 168)
    with pytest.raises(flags.IllegalFlagValueError):
        copy.deepcopy(values)(["train", "--encoder=resnet34"])


def test_crop_rule_is_the_models():
    for crop in (168, 192, 240):
        tmodel.check_crop_size(crop)
        tconfig.DataConfig(crop_size=crop, resize_short=256)
    for crop in (100, 144, 180):  # not a multiple of 24 / a patch under 7 cells
        with pytest.raises(ValueError, match="crop_size"):
            tmodel.check_crop_size(crop)
        with pytest.raises(ValueError, match="--crop_size"):
            tconfig.DataConfig(crop_size=crop)
    assert tmodel.patch_cells(240) == 10 and tmodel.MIN_PATCH_CELLS == 7


def test_similarity_rule_is_the_loss_layers_wherever_it_is_checked():
    from tc_keras.model import losses as tlosses

    bad = (dict(similarity="cosine"), dict(similarity="inner_product", sim_theta_grad=False))
    for kwargs, match in zip(bad, ("similarity must be one of", "sim_theta_grad=False")):
        with pytest.raises(ValueError, match=match):
            tlosses.check_similarity(**kwargs)
        with pytest.raises(ValueError, match="--" + match):
            tconfig.ModelConfig(**kwargs)
        with pytest.raises(ValueError, match=match):
            tmodel.TimeCycle(depth=18, **kwargs)
    tconfig.ModelConfig(similarity="inner_product")
    tconfig.ModelConfig(sim_theta_grad=False)


def test_clip_and_model_kwargs_follow_the_config():
    cfg = tconfig.Config(tconfig.DataConfig(num_past=3, crop_size=168, resize_short=192,
                                            target_offset=10),
                         tconfig.ModelConfig(encoder="resnet18", self_weight=0.1,
                                             bn_groups="joint"),
                         tconfig.TrainConfig(workdir="w", freeze_encoder_steps=5, grad_clip_norm=0))
    clip = tconfig.clip_kwargs(cfg)
    assert (clip["num_past"], clip["crop_size"], clip["target_offset"]) == (3, 168, 10)
    model = tconfig.build_model(cfg)
    assert (model.depth, model.num_past, model.crop_size, model.self_weight) == (18, 3, 168, 0.1)
    assert model.freeze_encoder and model.grad_clip_norm is None
    assert model.bn_groups == "joint"
    assert tconfig.model_kwargs(tconfig.Config(
        tconfig.DataConfig(), tconfig.ModelConfig(), cfg.train))["bn_groups"] == "separate"


def test_bn_groups_flag_and_a_stored_config_that_predates_it():
    """--bn_groups is a choice whose help names the reference; a stored config.json written before
    the flag existed was trained with the joint batch and reads back as such."""
    values = flags.FlagValues()
    tconfig.define_flags(values)
    assert values["bn_groups"].default == "separate" and "reference" in values["bn_groups"].help
    with pytest.raises(flags.IllegalFlagValueError):
        values(["train", "--bn_groups=together"])
    with pytest.raises(ValueError, match="--bn_groups"):
        tconfig.ModelConfig(bn_groups="together")
    cfg = tconfig.Config(tconfig.DataConfig(), tconfig.ModelConfig(),
                         tconfig.TrainConfig(workdir="w"))
    old = json.loads(cfg.to_json())
    del old["model"]["bn_groups"]
    assert tconfig.Config.from_dict(old).model.bn_groups == "joint"
    assert tconfig.Config.from_dict(json.loads(cfg.to_json())).model.bn_groups == "separate"
