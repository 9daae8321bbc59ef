"""tc_keras.train.config: flags made from the dataclass fields, validation, config -> kwargs."""

import copy
import dataclasses
import json
import pathlib

import pytest
from absl import flags

from tc_keras import flag_fields
from tc_keras.train import config as tconfig
from tc_keras.model import timecycle as tmodel

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cycle(data):
    """A cycle config with these data settings (the cycle's clip rules are Config's)."""
    return tconfig.Config(data, tconfig.ModelConfig(), tconfig.TrainConfig(workdir="w"))


def test_config_validates_and_round_trips():
    cfg = tconfig.Config(tconfig.DataConfig(), tconfig.ModelConfig(), tconfig.TrainConfig(workdir="w"))
    assert tconfig.Config.from_dict(json.loads(cfg.to_json())) == cfg
    kwargs = tconfig.model_kwargs(cfg)
    assert kwargs["depth"] == 50 and kwargs["num_past"] == 4 and kwargs["crop_size"] == 240
    with pytest.raises(ValueError, match="crop_size"):
        _cycle(tconfig.DataConfig(crop_size=100))
    with pytest.raises(ValueError, match="target_offset"):
        _cycle(tconfig.DataConfig(num_past=4, frame_gap=2, target_offset=5))
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
        if field.name in tconfig.WALK_DEFAULTS:
            walk = flag_fields.shown(tconfig.WALK_DEFAULTS[field.name])
            assert flag.help.endswith(f"Default: {flag_fields.shown(field.default)}; {walk} with "
                                      "--objective=walk."), flag.help
        elif field.default != "":
            assert flag.help.endswith(f"Default: {flag_fields.shown(field.default)}."), flag.help
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
        _cycle(tconfig.DataConfig(crop_size=crop, resize_short=256))
    for crop in (100, 144, 180):  # not a multiple of 24 / a patch under 7 cells
        with pytest.raises(ValueError, match="crop_size"):
            tmodel.check_crop_size(crop)
        with pytest.raises(ValueError, match="--crop_size"):
            _cycle(tconfig.DataConfig(crop_size=crop))
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


def _parsed(*argv):
    values = flags.FlagValues()
    tconfig.define_flags(values)
    values(["train", "--workdir=w", *argv])
    return tconfig.Config.from_flags(values)


def test_walk_defaults_fill_the_flags_left_at_their_default():
    cycle, walk = _parsed(), _parsed("--objective=walk")
    assert (cycle.train.batch_size, cycle.train.learning_rate, cycle.train.beta_1,
            cycle.train.grad_clip_norm, cycle.model.encoder, cycle.data.crop_size) == (
        36, 2e-4, 0.5, 10.0, "resnet50", 240)
    assert (walk.train.batch_size, walk.train.learning_rate, walk.train.beta_1,
            walk.train.grad_clip_norm, walk.model.encoder, walk.data.crop_size) == (
        20, 1e-4, 0.9, 0.0, "resnet18", 256)
    given = _parsed("--objective=walk", "--batch_size=36", "--learning_rate=3e-4",
                    "--crop_size=128", "--resize_short=128", "--node_patch=32",
                    "--node_stride=16")
    assert (given.train.batch_size, given.train.learning_rate, given.data.crop_size) == (
        36, 3e-4, 128)
    model = tconfig.build_model(given)
    assert type(model).__name__ == "ContrastiveWalk" and model.num_nodes == 49
    assert (model.depth, model.clip_len, model.temperature, model.edge_dropout, model.head_dim,
            model.grad_clip_norm) == (18, 4, 0.05, 0.1, 128, None)
    make, clips = tconfig.clip_source(given)
    assert make.__name__ == "walk_clip_dataset" and clips["node_patch"] == 32
    assert tconfig.Config.from_dict(json.loads(given.to_json())) == given
    # A config.json written before the walk existed reads as the cycle.
    old = json.loads(cycle.to_json())
    del old["walk"], old["model"]["objective"]
    assert tconfig.Config.from_dict(old) == cycle


@pytest.mark.parametrize("argv,flag", [
    (["--clip_len=2"], "--clip_len"),
    (["--node_patch=12"], "--node_patch"),
    (["--crop_size=100", "--resize_short=256"], "--crop_size"),
    (["--walk_temperature=0"], "--walk_temperature"),
    (["--edge_dropout=1"], "--edge_dropout"),
    (["--rotation_ramp_steps=10"], "--rotation_ramp_steps"),
    (["--lr_milestones=20,10"], "--lr_milestones")])
def test_bad_walk_flags_are_named(argv, flag):
    with pytest.raises(ValueError, match=flag):
        _parsed("--objective=walk", *argv)


def test_learning_rate_drops_at_the_milestones():
    cfg = _parsed("--learning_rate=1e-3", "--lr_milestones=10,20", "--lr_gamma=0.5")
    schedule = tconfig.learning_rate(cfg)
    rates = [float(schedule(step)) for step in (0, 9, 10, 19, 20, 100)]
    assert rates == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    assert tconfig.learning_rate(_parsed()) == 2e-4
