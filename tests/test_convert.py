"""tc_keras.convert.releases and tools/convert_weights.py: the TimeCycle and CRW releases, converted exactly.

Each release is written as a checkpoint file with its exact key names and shapes (seeded random
values; tests/release_reference.py), converted, and its features compared with an independent
forward pass of the original architecture: torch.nn.functional on a file written by torch.save
(skipped without torch), and NumPy float64 on a file written by tests/pth_writer.py (always).
"""

import json

import numpy as np
import pytest
from PIL import Image

from tc_keras.convert import releases as convert
from tc_keras.export import encoder_io
from tc_keras.data import label_io
from tc_keras.data import synthetic
from tests import release_reference as ref
from tests.pth_writer import write_pth
from tests.tool_run import LITE_NOISE, assert_user_error, run_tool

# Converted float32 features against a float64 reference (both L2-normalised); measured ~4e-7.
ATOL = 1e-4
SIZES = [(64, 64), (56, 88)]  # square, and non-square with odd sizes at stride 8 (7x11)
BACKENDS = ["torch", "numpy"]


def _write(release, backend, path):
    """The release's checkpoint as its authors' code saved it (legacy format for TimeCycle)."""
    if release == "timecycle":
        state, wrap, legacy = ref.timecycle_state(0), lambda s: {"epoch": 14, "state_dict": s}, True
    else:
        state, wrap, legacy = ref.crw_state(0), ref.crw_checkpoint, False
    if backend == "torch":
        torch = pytest.importorskip("torch", reason="torch (extra 'test') writes real .pth files")
        tensors = type(state)((k, torch.from_numpy(v)) for k, v in state.items())
        torch.save(wrap(tensors), path, _use_new_zipfile_serialization=not legacy)
    else:  # saved from GPU tensors, as both were; Python 2 strings for the 2019 TimeCycle release
        write_pth(path, wrap(state), legacy=legacy, py2_strings=legacy, cuda=True)
    return state


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{(release, backend): (reference state, converted folder)}, converted on first use."""
    root, done = tmp_path_factory.mktemp("convert"), {}

    def get(release, backend):
        if (release, backend) not in done:
            path = root / f"{release}_{backend}.pth"
            state = _write(release, backend, path)
            convert.convert(release, path, root / f"{release}_{backend}")
            done[release, backend] = state, root / f"{release}_{backend}"
        return done[release, backend]
    return get


def _forward(release, backend):
    return getattr(ref, f"{release}_forward_{backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("release", ["timecycle", "crw"])
def test_features_match_the_original_architecture(converted, release, backend):
    state, folder = converted(release, backend)
    encoder = encoder_io.load_encoder_model(str(folder))  # as every entry point loads it
    channels = {"timecycle": 512, "crw": 256}[release]
    for height, width in SIZES:
        images = np.random.default_rng(height).normal(size=(2, 3, height, width))  # NCHW
        want = _forward(release, backend)(state, images)  # (2, C, H/8, W/8)
        # (B, C, H, W) -> (B, H, W, C) and back
        got = np.asarray(encoder(images.transpose(0, 2, 3, 1).astype(np.float32)))
        got = got.transpose(0, 3, 1, 2)
        assert got.shape == want.shape == (2, channels, -(-height // 8), -(-width // 8))
        diff = np.abs(got - want).max()
        print(f"{release} {backend} {height}x{width}: max abs diff {diff:.2e}")
        assert diff < ATOL, (release, backend, height, width, diff)


def _tracker_inputs():
    """Unit image features (2, 512, 30, 30) and a patch (2, 512, 10, 10) matching a region of
    them, so that the affinity is peaked and its channel order matters."""
    rng = np.random.default_rng(3)
    image = rng.normal(size=(2, 512, 30, 30))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    patch = image[:, :, 4:14, 9:19] + 0.3 * rng.normal(size=(2, 512, 10, 10))
    patch /= np.linalg.norm(patch, axis=1, keepdims=True)
    return image, patch


def _theta(tracker, image, patch):
    # NCHW -> NHWC
    return np.asarray(tracker(image.transpose(0, 2, 3, 1).astype(np.float32),
                              patch.transpose(0, 2, 3, 1).astype(np.float32))["theta"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_timecycle_tracker_theta(converted, backend):
    from tc_keras.model.tracker import Tracker

    state, folder = converted("timecycle", backend)
    image, patch = _tracker_inputs()
    want = getattr(ref, f"timecycle_theta_{backend}")(state, image, patch)
    tracker = Tracker(patch_size=(10, 10))
    convert.tracker_model(tracker).load_weights(str(folder / convert.TRACKER_FILE))
    diff = np.abs(_theta(tracker, image, patch) - want).max()
    print(f"timecycle {backend} theta: max abs diff {diff:.2e}")
    assert diff < ATOL
    # Without the affinity channel permutation the localizer reads the wrong positions.
    w = np.asarray(state["module.afterconv3_trans.weight"])
    tracker.localizer.convs[0].kernel.assign(w.transpose(2, 3, 1, 0))
    assert np.abs(_theta(tracker, image, patch) - want).max() > 100 * ATOL


def test_timecycle_from_release_holds_encoder_and_tracker(converted):
    """The documented way to resume training: a TimeCycle(depth=50) with the release's weights."""
    state, folder = converted("timecycle", "numpy")
    model = convert.timecycle_from_release(folder, num_past=2)
    assert model.encoder.padding == "zeros" and model.depth == 50 and model.num_past == 2
    image, patch = _tracker_inputs()
    want = ref.timecycle_theta_numpy(state, image, patch)
    assert np.abs(_theta(model.tracker, image, patch) - want).max() < ATOL
    frames = np.random.default_rng(4).normal(size=(1, 32, 40, 3)).astype(np.float32)
    saved = encoder_io.load_encoder_model(str(folder))
    np.testing.assert_allclose(np.asarray(model.encoder(frames)), np.asarray(saved(frames)),
                               atol=1e-6)
    with pytest.raises(ValueError, match="crop_size must be 240"):
        convert.timecycle_from_release(folder, crop_size=168)
    with pytest.raises(ValueError, match="not a converted TimeCycle release"):
        convert.timecycle_from_release(converted("crw", "numpy")[1])


def test_config_names_the_source(converted):
    _, folder = converted("crw", "numpy")
    config = json.loads((folder / "config.json").read_text())
    source = config["source"]
    assert source["release"] == "crw" and source["file"].endswith("crw_numpy.pth")
    assert len(source["sha256"]) == 64 and source["epoch"] == 3
    # Tensors: stem 1 + 4 (BatchNorm), layer1 2 x 10, layer2 and layer3 2 x 10 + 5 (downsample).
    assert source["converted"] == 75
    assert any(k.startswith("encoder.model.layer4.") for k in source["ignored_keys"])
    assert "selfsim_fc.0.weight" in source["ignored_keys"]
    assert config["encoder"] == {"depth": 18, "out_channels": None, "padding": "reflect",
                                 "channels": 256}
    assert config["preset"] == "crw" and config["tracker"] is None
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "encoder.keras"]


def test_wrong_or_broken_checkpoints_are_clear_errors(tmp_path):
    crw = write_pth(tmp_path / "crw.pth", {"model": ref.crw_state(1)})
    with pytest.raises(convert.ConversionError) as info:
        convert.convert("timecycle", crw, tmp_path / "out")
    message = str(info.value)
    assert "crw.pth" in message and "not the timecycle release" in message
    assert "module.encoderVideo.conv1.weight" in message
    assert "found encoder.model.conv1.weight" in message
    state = ref.crw_state(1)
    del state["encoder.model.layer2.0.bn1.running_var"]
    state["encoder.model.layer3.1.conv2.weight"] = state["encoder.model.layer3.1.conv2.weight"][:8]
    broken = write_pth(tmp_path / "broken.pth", {"model": state})
    with pytest.raises(convert.ConversionError, match=r"broken\.pth: 1 of the 75 crw keys are "
                       r"missing: encoder\.model\.layer2\.0\.bn1\.running_var"):
        convert.convert("crw", broken, tmp_path / "out")
    del state["encoder.model.layer3.1.conv2.weight"]
    state["encoder.model.layer2.0.bn1.running_var"] = np.ones(128, np.float32)
    state["encoder.model.layer3.1.conv2.weight"] = np.zeros((256, 256, 1, 3, 3), np.float32)
    with pytest.raises(convert.ConversionError, match=r"layer3\.1\.conv2\.weight expected "
                       r"\(256, 256, 3, 3\) found \(256, 256, 1, 3, 3\)"):
        convert.convert("crw", write_pth(tmp_path / "shape.pth", {"model": state}),
                        tmp_path / "out")
    with pytest.raises(convert.ConversionError, match="no state dict of tensors"):
        convert.convert("crw", write_pth(tmp_path / "epoch.pth", {"epoch": 3}), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*partial"))


# ------------------------------------------------------------------------------ the tools
def _one_error_line(result, *names):
    assert_user_error(result, *names, noise=LITE_NOISE)


@pytest.mark.slow
def test_converted_encoder_through_convert_export_and_propagate_tools(tmp_path):
    """CRW: convert, export (SavedModel + TFLite) and propagate with the unchanged tools."""
    checkpoint = write_pth(tmp_path / "pretrained.pth", ref.crw_checkpoint(ref.crw_state(0)))
    folder = tmp_path / "weights" / "crw"
    result = run_tool("convert_weights.py", "--from", "crw", "--checkpoint", checkpoint,
                      "--out", folder)
    assert result.returncode == 0, result.stderr
    assert f"encoder: {folder}/encoder.keras (256 channels)" in result.stdout
    _one_error_line(run_tool("convert_weights.py", "--from", "crw", "--checkpoint", checkpoint,
                             "--out", folder), folder, "already exists")
    _one_error_line(run_tool("convert_weights.py", "--from", "timecycle", "--checkpoint",
                             checkpoint, "--out", tmp_path / "x"), checkpoint, "module.")
    _one_error_line(run_tool("convert_weights.py", "--from", "crw", "--out", tmp_path / "x"),
                    "--checkpoint")
    result = run_tool("export.py", "--checkpoint", folder, "--out", tmp_path / "export" / "crw")
    assert result.returncode == 0, result.stderr
    frames, masks = synthetic.render_video(5, frames=6, size=(64, 96), num_objects=(2, 2))
    video = tmp_path / "frames"
    video.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(video / f"{t:05d}.png")
    label_io.write_mask(tmp_path / "mask.png", masks[0], label_io.DAVIS_MASK)
    results = {}
    for name, encoder in (("keras", folder), ("saved_model", tmp_path / "export" / "crw"),
                          ("tflite", tmp_path / "export" / "crw.tflite")):
        result = run_tool("propagate.py", "--video", video, "--labels", tmp_path / "mask.png",
                          "--out", tmp_path / name, "--encoder", encoder, "--preset", "crw",
                          "--radius", 3, "--nooverlay")
        assert result.returncode == 0, (name, result.stderr)
        results[name] = np.stack([np.asarray(Image.open(p))
                                  for p in sorted((tmp_path / name).glob("*.png"))])
    assert results["keras"].shape == (6, 64, 96)
    for name, got in results.items():
        np.testing.assert_array_equal(got, results["keras"], err_msg=name)
