"""Running the command-line tools in a subprocess, as a user would, and reading their errors."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# TensorFlow's C++ start-up log lines, which no environment variable silences under TF 2.21.
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} )")
# The same, and the TFLite runtime's delegate line (export and convert tools run .tflite files).
TF_AND_LITE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl|[IWE]\d{4} |INFO: Created)")


def run_tool(tool, *args, pythonpath=()):
    """`python tools/<tool> args...` from this checkout; the CompletedProcess (text output)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, pythonpath), str(ROOT)]),
               TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def assert_user_error(result, *names, noise=TF_NOISE):
    """Exit status 1 and, apart from `noise`, one `error: ...` line naming each of `names`."""
    assert result.returncode == 1, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if not noise.match(ln)]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for name in names:
        assert str(name) in lines[0], lines[0]
