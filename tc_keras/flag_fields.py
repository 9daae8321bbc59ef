"""Frozen-dataclass fields that become absl flags: each default, help text and choices written once.

`field` declares one; `DEFINE` maps a field's type to absl's flag definer; `shown` writes a value
as a user types it. The training config (tc_keras.train.config) and the propagation protocol
(tc_keras.propagation.presets, protocol_flags) make their flags this way.
"""

import dataclasses

from absl import flags

DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
          bool: flags.DEFINE_bool}


def field(default, help, choices=None, none=None):
    """A config field: its default, its flag's help text (with the unit), its choices (an enum
    flag) and, for an optional field, the word a user types for None."""
    return dataclasses.field(default=default,
                             metadata=dict(help=help, choices=choices, none=none))


def shown(value, none="none"):
    """A flag value as a user types it on the command line (`none` for None)."""
    if value is None:
        return none
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)
