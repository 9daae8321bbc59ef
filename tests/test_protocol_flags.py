"""tc_keras.propagation.protocol_flags and tc_keras.export.encoder_flags: flags made from the
config's fields, a preset's defaults with single fields overridden."""

import dataclasses

import pytest
from absl import flags

from tc_keras.export import encoder_flags
from tc_keras.propagation import presets
from tc_keras.propagation import protocol_flags


def _parse(*argv):
    values = flags.FlagValues()
    protocol_flags.define_flags(values)
    protocol_flags.define_flags(values)  # idempotent
    encoder_flags.define_flags(values)
    values(["prog", *argv])
    return values


def test_one_flag_per_field_with_its_help_and_the_presets_values():
    values = _parse()
    for field in dataclasses.fields(presets.PropagationConfig):
        assert field.name in values, field.name
        assert field.metadata["help"] in values[field.name].help
    assert "crw 0, default 0, paper 320" in values["size"].help
    assert "crw 12, default 12, paper none" in values["radius"].help
    assert values["label_resize"].parser.enum_values == list(presets.LABEL_RESIZES)
    assert protocol_flags.config_from_flags(values) == presets.PRESETS["default"]


def test_a_preset_with_single_fields_overridden():
    values = _parse("--preset", "paper", "--size", "480", "--radius", "4", "--nominmax",
                    "--topk", "3", "--label_resize", "area")
    want = dataclasses.replace(presets.PRESETS["paper"], size=480, radius=4.0, minmax=False,
                               topk=3, label_resize="area")
    assert protocol_flags.config_from_flags(values) == want
    config = protocol_flags.config_from_flags(_parse("--preset", "crw", "--size", "0",
                                                     "--radius", "none"))
    assert config == dataclasses.replace(presets.PRESETS["crw"], radius=None)
    assert encoder_flags.encoder_kwargs(_parse("--depth", "50", "--seed", "3")) == dict(
        depth=50, seed=3)
    assert encoder_flags.encoder_kwargs(_parse()) == dict(depth=18, seed=0)


def test_bad_values_name_the_flag():
    with pytest.raises(ValueError, match="--radius far: expected a number or 'none'"):
        protocol_flags.config_from_flags(_parse("--radius", "far"))
    with pytest.raises(ValueError, match="--preset crw --topk: topk must be >= 1"):
        protocol_flags.config_from_flags(_parse("--preset", "crw", "--topk", "0"))
    with pytest.raises(flags.IllegalFlagValueError):
        _parse("--output_resize", "cubic")
