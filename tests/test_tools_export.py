"""tools/export.py end to end, and tools/propagate.py through Keras, SavedModel and TFLite."""

import keras
import numpy as np
import pytest
from PIL import Image

from tc_keras.data import label_io, synthetic
from tc_keras.export import encoder_io
from tests import broken_files
from tests.tool_run import LITE_NOISE, assert_user_error, run_tool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A training-style workdir (encoder.keras of a seeded random ResNet-18), exported by the tool."""
    root = tmp_path_factory.mktemp("tools_export")
    workdir = root / "workdir"
    workdir.mkdir()
    encoder_io.load_encoder_model("random", depth=18, seed=3).save(workdir / "encoder.keras")
    (workdir / "config.json").write_text("{}")
    result = run_tool("export.py", "--checkpoint", workdir, "--out", root / "export" / "tc")
    assert result.returncode == 0, result.stderr
    assert "saved_model: " in result.stdout and "tflite: " in result.stdout
    return workdir, root / "export"


def test_next_version_and_one_line_errors(exported):
    workdir, out = exported
    result = run_tool("export.py", "--checkpoint", workdir, "--out", out / "tc", "--notflite")
    assert result.returncode == 0, result.stderr
    assert (out / "tc" / "2" / "saved_model.pb").is_file()
    for args, names in (
            (("--checkpoint", workdir, "--out", out / "tc", "--version", 1), ["already exists"]),
            (("--checkpoint", out / "nope", "--out", out / "x"),
             [f"--checkpoint {out / 'nope'}: no such file or folder"]),
            (("--out", out / "x"), ["give either --checkpoint", "or --random"]),
            (("--checkpoint", workdir, "--random", "--out", out / "x"), ["give either"]),
            (("--out", out / "x", "--quantize", "int4"), ["--quantize int4"]),
            (("--checkpoint", workdir), ["--out"])):
        assert_user_error(run_tool("export.py", *args), *names, noise=LITE_NOISE)
    assert not (out / "x").exists()
    # Random weights only when asked for, and then with a warning (here the version exists).
    result = run_tool("export.py", "--random", "--out", out / "tc", "--version", 1)
    assert result.returncode == 1 and "already exists" in result.stderr
    assert "warning: exporting an untrained, randomly initialised encoder" in result.stderr


def test_propagate_masks_identical_across_runtimes(exported, tmp_path):
    """Keras (workdir), SavedModel and TFLite give the same masks through tools/propagate.py."""
    workdir, out = exported
    frames, masks = synthetic.render_video(5, frames=8, size=(64, 96), num_objects=(2, 2))
    video = broken_files.write_video(tmp_path / "clip.mp4", frames, fps=12)
    label_io.write_mask(tmp_path / "mask.png", masks[0], label_io.DAVIS_MASK)
    results = {}
    for name, encoder in (("keras", workdir), ("saved_model", out / "tc"),
                          ("saved_model_v1", out / "tc" / "1"), ("tflite", out / "tc.tflite")):
        # radius 3 cells at this 8x12 feature size, so the radius mask input is exercised.
        result = run_tool("propagate.py", "--video", video, "--labels", tmp_path / "mask.png",
                          "--out", tmp_path / name, "--encoder", encoder, "--radius", 3,
                          "--nooverlay")
        assert result.returncode == 0, (name, result.stderr)
        results[name] = np.stack([np.asarray(Image.open(p))
                                  for p in sorted((tmp_path / name).glob("*.png"))])
    assert results["keras"].shape == (8, 64, 96)
    assert len(np.unique(results["keras"][-1])) > 1  # something was propagated
    for name, got in results.items():
        np.testing.assert_array_equal(got, results["keras"], err_msg=name)


def test_propagate_rejects_broken_export(tmp_path):
    (tmp_path / "bad.tflite").write_bytes(b"junk")
    frames, masks = synthetic.render_video(5, frames=2, size=(32, 32))
    video = broken_files.write_video(tmp_path / "clip.mp4", frames, fps=12)
    label_io.write_mask(tmp_path / "mask.png", masks[0], label_io.DAVIS_MASK)
    result = run_tool("propagate.py", "--video", video, "--labels", tmp_path / "mask.png",
                      "--out", tmp_path / "o", "--encoder", tmp_path / "bad.tflite")
    assert_user_error(result, "bad.tflite", noise=LITE_NOISE)


def test_keras_loader_reads_workdir(exported):
    workdir, _ = exported
    model = encoder_io.load_encoder_model(str(workdir))
    assert isinstance(model, keras.Model)
    assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 4, 4, 512)
