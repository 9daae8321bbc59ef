"""Running the command-line tools in a subprocess, as a user would, and reading their errors."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# TensorFlow's C++ start-up lines, which no environment variable silences under TF 2.21:
# tc_keras.cli.quiet_tensorflow filters them, so no tool prints one.
TF_STARTUP = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} )")
# The TFLite runtime's line when it makes an interpreter (the export and convert tools run .tflite
# files): its own C++ logging, not TensorFlow's start-up; left as it is.
LITE_NOISE = re.compile(r"^INFO: Created")


def run_tool(tool, *args, pythonpath=()):
    """`python tools/<tool> args...` from this checkout; the CompletedProcess (text output)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, pythonpath), str(ROOT)]),
               TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def assert_user_error(result, *names, noise=None):
    """Exit status 1, none of TensorFlow's start-up lines, and apart from `noise` one
    `error: ...` line naming each of `names`."""
    assert result.returncode == 1, result.stderr
    stderr = result.stderr.strip().splitlines()
    assert not any(TF_STARTUP.match(ln) for ln in stderr), result.stderr
    lines = [ln for ln in stderr if not (noise and noise.match(ln))]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for name in names:
        assert str(name) in lines[0], lines[0]
