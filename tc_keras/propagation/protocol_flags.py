"""The command-line flags of the propagation protocol, made from `PropagationConfig`'s fields.

`define_flags()` registers --preset and one flag per field: its help text, unit and choices come
from the field's metadata (tc_keras.propagation.presets), and the help lists each preset's
value. Protocol flags have no default of their own: the chosen preset supplies every field and a
flag given on the command line overrides that one field (`config_from_flags`). Optional fields
(--size, --radius) take a number or the field's word for None ('0', 'none'). Library code never
reads absl's FLAGS: tools pass it in.
"""

import dataclasses
import typing

from absl import flags

from tc_keras import flag_fields
from tc_keras.propagation.presets import PRESETS, PropagationConfig

PRESET = "preset"
DEFAULT_PRESET = "default"


def _kind(field):
    """(value type, optional) of a field: Optional[int] -> (int, True)."""
    args = typing.get_args(field.type)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return field.type, False


def shown(value, field):
    """A field's value as typed on the command line ('0' or 'none' for None)."""
    return flag_fields.shown(value, field.metadata["none"])


def define_flags(flag_values=flags.FLAGS):
    """Registers --preset and one flag per `PropagationConfig` field (idempotent)."""
    if PRESET not in flag_values:
        flags.DEFINE_enum(PRESET, DEFAULT_PRESET, sorted(PRESETS),
                          "Propagation protocol (docs/METHOD.md, 'Label propagation'); the "
                          "protocol flags override single fields. Default: default.",
                          flag_values=flag_values)
    for field in dataclasses.fields(PropagationConfig):
        if field.name in flag_values:
            continue
        kind, optional = _kind(field)
        presets = ", ".join(f"{name} {shown(getattr(config, field.name), field)}"
                            for name, config in sorted(PRESETS.items()))
        text = f"{field.metadata['help']} Default: the preset's ({presets})."
        if field.metadata["choices"]:
            flags.DEFINE_enum(field.name, None, list(field.metadata["choices"]), text,
                              flag_values=flag_values)
        else:
            flag_fields.DEFINE[str if optional else kind](field.name, None, text, flag_values=flag_values)


def _value(field, raw):
    """The field value of a flag's value (a string for optional fields)."""
    kind, optional = _kind(field)
    if not optional:
        return raw
    if raw.strip().lower() in ("none", field.metadata["none"]):
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"--{field.name} {raw}: expected a number or "
                         f"'{field.metadata['none']}'") from None


def config_from_flags(flag_values):
    """The --preset's `PropagationConfig` with the protocol flags that were given applied."""
    preset = flag_values[PRESET].value
    overrides = {f.name: _value(f, flag_values[f.name].value)
                 for f in dataclasses.fields(PropagationConfig)
                 if flag_values[f.name].value is not None}
    try:
        return dataclasses.replace(PRESETS[preset], **overrides)
    except ValueError as e:
        given = "".join(f" --{k}" for k in overrides)
        raise ValueError(f"protocol --preset {preset}{given}: {e}") from None
