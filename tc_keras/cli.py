"""What the command-line entry points share: a quiet TensorFlow start-up and one-line errors.

Every entry point (tools/*.py, bench/*.py, `python -m tc_keras.train`) hands its absl main to
`run`: a user error becomes one `error: ...` line and exit status 1.

TensorFlow 2.21 prints lines while it loads, before any setting is read (absl's "All log messages
before absl::InitializeLog()", oneDNN and CPU-feature notes); `quiet_tensorflow()` drops them from
the output of the first `import tensorflow` after it (anything else that import prints, and all
of it if the import fails, is written back), sets TF_CPP_MIN_LOG_LEVEL=2 (unless the user set
it) for TensorFlow's C++ logging once it is set up, and hides TensorFlow's Python INFO lines
(checkpoint sharding timings). `run` calls it before main, which covers what main imports; an
entry point whose own imports load TensorFlow calls it above them, its one statement before its
imports (pyproject.toml lets those files have it). Importing this module changes nothing.
"""

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

from absl import app, flags

# C++ log lines (severity letter, date or 0000) and absl's line about logging before set-up.
_CPP_LOG = re.compile(r"^([IWEF])\d{4} ")
_BEFORE_INIT = "WARNING: All log messages before absl::InitializeLog()"

# Errors a user causes (a missing or corrupt file, a bad flag value, a wrong mask): the library
# raises them as ValueError (VideoError and LabelError are ValueErrors) or OSError, with a message
# naming the input.
USER_ERRORS = (ValueError, OSError)


def quiet_tensorflow():
    """Filters TensorFlow's start-up lines from here on (see the module docstring); idempotent.

    Call it before anything imports TensorFlow: lines printed by an earlier import are out.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def run(main):
    """`absl.app.run(main)` after `quiet_tensorflow()`; a user error becomes one `error: ...` line
    and exit status 1."""
    quiet_tensorflow()

    def guarded(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            fail(e)

    app.run(guarded)


def require(name, hint=""):
    """Raises a user error unless flag --name has a value."""
    if not flags.FLAGS[name].value:
        raise ValueError(f"--{name} is required{hint}")


def exactly_one(first, second, hint=""):
    """Raises a user error unless exactly one of flags --first and --second has a value."""
    if bool(flags.FLAGS[first].value) == bool(flags.FLAGS[second].value):
        raise ValueError(f"give either --{first}{hint} or --{second}")


def fail(message):
    """Prints `error: message` to stderr and exits with status 1."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def _drop_startup_noise(text, min_level):
    """`text` without the C++ log records below `min_level` (0 I, 1 W, 2 E) and their
    continuation lines, nor absl's line about logging before InitializeLog."""
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        m = _CPP_LOG.match(line)
        if m:
            dropping = "IWEF".index(m.group(1)) < min_level
        elif line.startswith(_BEFORE_INIT):
            dropping = True
            continue
        if not dropping:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _filtered_stderr():
    """Captures file descriptor 2 (C++ and Python output) and writes it back without the noise."""
    try:
        min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        min_level = 0
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            sys.stderr.write(_drop_startup_noise(text, min_level) if ok else text)
            sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first `import tensorflow` inside `_filtered_stderr`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def quiet_exec_module(module):
                with _filtered_stderr():
                    exec_module(module)
            spec.loader.exec_module = quiet_exec_module
        return spec
