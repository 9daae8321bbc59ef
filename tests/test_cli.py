"""tc_keras.cli: importing it changes nothing (that its quiet_tensorflow filters TensorFlow's
start-up lines, every tool's error test checks: tests/tool_run.py)."""

import os
import subprocess
import sys

from tests.tool_run import ROOT


def test_import_has_no_side_effects():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = ("import os, sys; from tc_keras import cli; "
            "print(any(type(f).__module__ == cli.__name__ for f in sys.meta_path), "
            "'TF_CPP_MIN_LOG_LEVEL' in os.environ, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(env, PYTHONPATH=str(ROOT)), cwd=ROOT, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False", "False"]
