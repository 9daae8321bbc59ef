"""tools/propagate.py and tools/evaluate.py end to end, as a user runs them (subprocesses)."""

import json
import os
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from tc_keras.data import label_io
from tc_keras.data import synthetic
from tests import broken_files
from tests.tool_run import assert_user_error, run_tool

pytestmark = pytest.mark.slow


def write_frames(folder, frames):
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 5-frame 64x64 synthetic clip with two objects: frame folder + palette first mask."""
    root = tmp_path_factory.mktemp("clip")
    frames, masks = synthetic.render_video(3, frames=5, size=(64, 64), num_objects=(2, 2))
    write_frames(root / "frames", frames)
    label_io.write_mask(root / "mask.png", masks[0], label_io.DAVIS_MASK)
    return root, frames, masks


def test_mask_run_keeps_palette_and_size(clip, tmp_path):
    root, frames, masks = clip
    out = tmp_path / "out"
    result = run_tool("propagate.py", "--video", root / "frames", "--labels", root / "mask.png",
                      "--out", out, "--encoder", "random", "--depth", "18")
    assert result.returncode == 0, result.stderr
    with Image.open(root / "mask.png") as im:
        palette = im.getpalette()
    ids0 = set(np.unique(masks[0]).tolist())
    for t in range(len(frames)):
        with Image.open(out / f"{t:05d}.png") as im:
            assert im.mode == "P" and im.size == (64, 64)
            assert im.getpalette() == palette
            assert set(np.unique(np.asarray(im)).tolist()) <= ids0
    assert (out / "overlay.mp4").stat().st_size > 0
    assert not list(tmp_path.glob(".*partial"))
    # Output is not a terminal: plain progress lines, no progress-bar control characters.
    assert "5/5 frames" in result.stdout
    assert not re.search(r"[\r\x08\x1b]", result.stdout + result.stderr), repr(result.stdout)


def test_grayscale_mask_stays_0_255_and_evaluates(clip, tmp_path):
    root, frames, masks = clip
    # A tiny DAVIS layout with one 0/255 object.
    davis = tmp_path / "davis"
    write_frames(davis / "JPEGImages" / "480p" / "seq", frames)
    ann = davis / "Annotations" / "480p" / "seq"
    ann.mkdir(parents=True)
    for t, m in enumerate(masks):
        Image.fromarray(np.where(m == 1, 255, 0).astype(np.uint8), mode="L").save(
            ann / f"{t:05d}.png")
    results = tmp_path / "results"
    result = run_tool("propagate.py", "--davis_root", davis, "--out", results,
                      "--encoder", "identity")
    assert result.returncode == 0, result.stderr
    with Image.open(results / "seq" / "00003.png") as im:
        assert im.mode == "L"
        assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
    result = run_tool("evaluate.py", "--davis_root", davis, "--results", results)
    assert result.returncode == 0, result.stderr
    summary = json.loads((results / "davis_metrics.json").read_text())
    assert 0.0 <= summary["J-Mean"] <= 1.0 and "J&F-Mean" in result.stdout
    # A missing result frame is an error naming it.
    (results / "seq" / "00002.png").unlink()
    result = run_tool("evaluate.py", "--davis_root", davis, "--results", results)
    assert_user_error(result, results / "seq" / "00002.png")


def test_keypoints_run_and_pck(clip, tmp_path):
    root, frames, _ = clip
    gt = np.tile(np.array([[[20.0, 20.0], [40.0, 30.0]]]), (len(frames), 1, 1))
    joints = tmp_path / "joints.json"
    joints.write_text(label_io.keypoints_json(gt, {"joint_names": ["a", "b"],
                                                   "image_size": [64, 64]}))
    out = tmp_path / "kp"
    result = run_tool("propagate.py", "--video", root / "frames", "--labels", joints,
                      "--out", out, "--encoder", "identity")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "00004.json").read_text())["joint_names"] == ["a", "b"]
    result = run_tool("evaluate.py", "--jhmdb_joints", joints, "--results", out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "pck_metrics.json").read_text())["PCK@0.1"] == 1.0


def _soft(mask):
    """A 0/255 mask with anti-aliased edges: 2x box-filtered, as a drawing program saves it."""
    big = np.where(np.kron(mask > 0, np.ones((2, 2))), 255.0, 0.0)
    soft = Image.fromarray(big.astype(np.uint8), mode="L").resize(
        (mask.shape[1], mask.shape[0]), Image.BILINEAR)
    soft = np.asarray(soft).astype(np.float64)
    return np.clip(np.round((soft + np.roll(soft, 1, axis=1)) / 2), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("case", ["mask_size", "no_object", "corrupt_video", "gap", "mixed_sizes",
                                  "truncated_mp4", "truncated_avi", "soft_mask",
                                  "keypoints_outside", "cut_encoder"])
def test_bad_inputs_give_one_line_and_no_output(clip, tmp_path, case):
    root, frames, masks = clip
    video, labels, encoder = root / "frames", root / "mask.png", "identity"
    if case == "cut_encoder":
        encoder = broken_files.cut(pathlib.Path(__file__).parent / "fixtures" /
                                   "encoder_b9206ce.keras", 0.5, out=tmp_path / "encoder.keras")
        named = f"--encoder {encoder}: not a readable .keras file (truncated or corrupt zip"
    elif case.startswith("truncated"):
        # 40 frames of 96x64, cut in half; the mp4 has its index at the start, so both open and
        # used to give about 20 masks and exit 0.
        video = broken_files.truncated_video(tmp_path / f"cut.{case[-3:]}", case[-3:], frames=40)
        labels = tmp_path / "mask96.png"
        ids = np.zeros((64, 96), np.uint8)
        ids[20:40, 30:60] = 1
        label_io.write_mask(labels, ids, label_io.DAVIS_MASK)
        named = f"{video}: truncated video: decoding stopped at frame"
    elif case == "soft_mask":
        labels = tmp_path / "soft.png"
        soft = _soft(masks[0])
        Image.fromarray(soft, mode="L").save(labels)
        named = f"{labels}: grayscale mask with {len(np.unique(soft))} distinct values"
    elif case == "keypoints_outside":
        labels = tmp_path / "joints.json"
        joints = np.array([[[20.0, 20.0], [70.5, 30.0]]] * len(frames))
        labels.write_text(label_io.keypoints_json(joints, {"joint_names": ["head", "hand"]}))
        named = f"{labels}: joint 1 (hand) of frame 0 is at (70.5, 30), outside the 64x64 frames"
    elif case == "mask_size":
        labels = tmp_path / "small.png"
        label_io.write_mask(labels, masks[0][:32], label_io.DAVIS_MASK)
        named = labels
    elif case == "no_object":
        labels = tmp_path / "empty.png"
        label_io.write_mask(labels, np.zeros_like(masks[0]), label_io.DAVIS_MASK)
        named = labels
    elif case == "corrupt_video":
        video = tmp_path / "broken.mp4"
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
        named = video
    else:
        video = write_frames(tmp_path / "bad_frames", frames)
        if case == "gap":
            (video / "00002.png").unlink()
        else:
            Image.fromarray(frames[0][:32]).save(video / "00003.png")
        named = video
    out = tmp_path / "out"
    result = run_tool("propagate.py", "--video", video, "--labels", labels, "--out", out,
                      "--encoder", encoder)
    assert_user_error(result, named)
    assert not out.exists()
    assert not list(tmp_path.glob(".*partial"))


def test_soft_mask_with_threshold_and_palette_ids(clip, tmp_path):
    """--threshold binarises a soft grayscale mask; a palette PNG keeps its ids regardless."""
    root, frames, masks = clip
    labels = tmp_path / "soft.png"
    Image.fromarray(_soft(masks[0]), mode="L").save(labels)
    out = tmp_path / "out"
    result = run_tool("propagate.py", "--video", root / "frames", "--labels", labels, "--out", out,
                      "--encoder", "identity", "--threshold", 128, "--nooverlay")
    assert result.returncode == 0, result.stderr
    with Image.open(out / "00000.png") as im:
        assert im.mode == "L" and set(np.unique(np.asarray(im)).tolist()) == {0, 255}
    ids, fmt = label_io.read_mask(root / "mask.png", threshold=128)  # palette: ids kept
    assert fmt.palette and set(np.unique(ids).tolist()) == set(np.unique(masks[0]).tolist())


def test_tflite_without_its_runtime_is_one_line(clip, tmp_path):
    """An install without ai-edge-litert (simulated: a module of that name that is no package)."""
    root, _, _ = clip
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "ai_edge_litert.py").write_text("")
    model = tmp_path / "tc.tflite"
    model.write_bytes(b"not read")
    out = tmp_path / "out"
    result = run_tool("propagate.py", "--video", root / "frames", "--labels", root / "mask.png",
                      "--out", out, "--encoder", model, pythonpath=[tmp_path / "site"])
    assert_user_error(result, f"cannot run {model}: install the litert extra")
    assert not out.exists()


def test_davis_dev_ground_truth_scores_one(shared_data, tmp_path):
    """The evaluator on real DAVIS masks: ground truth against itself is perfect."""
    davis = shared_data / "davis2016-dev"
    results = tmp_path / "results"
    (results).mkdir()
    os.symlink(davis / "Annotations" / "480p" / "car-shadow", results / "car-shadow")
    result = run_tool("evaluate.py", "--davis_root", davis, "--results", results,
                      "--sequences", "car-shadow")
    assert result.returncode == 0, result.stderr
    summary = json.loads((results / "davis_metrics.json").read_text())
    assert summary["J&F-Mean"] == pytest.approx(1.0)
    assert summary["J-Decay"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------- VIP part labels

VIP_FRAMES = ["000000000001", "000000000026", "000000000051"]  # VIP_Fine: one frame in 25


def _vip_maps():
    """Class maps of two videos, built for the hand-computed mIoU of
    `test_vip_parts_propagate_and_miou`."""
    a0 = np.zeros((16, 16), np.uint8)
    a0[:, :8], a0[:, 8:] = 1, 2
    a1 = a0.copy()
    a1[:4, 8:] = 3  # 32 px of class 3 where frame 0 had class 2
    a2 = a0.copy()
    a2[:4, :8] = 255  # void
    b0 = np.zeros((8, 8), np.uint8)
    b0[:4, :4] = 19
    return {"videos1": [a0, a1, a2], "videos2": [b0, np.zeros((8, 8), np.uint8)]}


def _write_vip(root, videos):
    for name, maps in videos.items():
        (root / "Images" / name).mkdir(parents=True)
        (root / "Annotations" / "Category_ids" / name).mkdir(parents=True)
        for stem, ids in zip(VIP_FRAMES, maps):
            colours = np.asarray(label_io.DAVIS_PALETTE, np.uint8).reshape(-1, 3)[ids]
            Image.fromarray(colours).save(root / "Images" / name / f"{stem}.png")
            Image.fromarray(ids, mode="L").save(
                root / "Annotations" / "Category_ids" / name / f"{stem}.png")
    return root


def test_vip_parts_propagate_and_miou(tmp_path):
    """The identity baseline copies each video's first class map; the tool's mIoU, by hand:
    class 1: 224 / 224 (frame 51's void rows ignored); class 2: 224 / 256; class 3: 0 / 32;
    class 0: 48 / 64 (videos2); class 19: 0 / 16 (predicted, not in the ground truth); the
    other classes have an empty union and are left out: (1 + 0.875 + 0 + 0.75 + 0) / 5."""
    root = _write_vip(tmp_path / "VIP_Fine", _vip_maps())
    results = tmp_path / "results"
    result = run_tool("propagate.py", "--vip_root", root, "--out", results,
                      "--encoder", "identity")
    assert result.returncode == 0, result.stderr
    with Image.open(results / "videos1" / f"{VIP_FRAMES[2]}.png") as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), _vip_maps()["videos1"][0])
    result = run_tool("evaluate.py", "--vip_root", root, "--results", results)
    assert result.returncode == 0, result.stderr
    scores = json.loads((results / "vip_metrics.json").read_text())
    assert scores["mIoU"] == pytest.approx(2.625 / 5) and scores["frames"] == 3
    per_class = scores["per_class_IoU"]
    assert (per_class["1"], per_class["2"], per_class["3"], per_class["0"], per_class["19"]) == (
        pytest.approx(1.0), pytest.approx(0.875), 0.0, pytest.approx(0.75), 0.0)
    assert per_class["5"] is None and "mIoU 0.525" in result.stdout
    # The first frames scored too: exact copies of the ground truth.
    result = run_tool("evaluate.py", "--vip_root", root, "--results", results,
                      "--vip_first_frame", "--json", tmp_path / "all.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "all.json").read_text())["frames"] == 5
    # A missing frame and a class id outside 0..19 are one line each, naming the file.
    (results / "videos2" / f"{VIP_FRAMES[1]}.png").unlink()
    assert_user_error(run_tool("evaluate.py", "--vip_root", root, "--results", results),
                      results / "videos2" / f"{VIP_FRAMES[1]}.png")
    Image.fromarray(np.full((8, 8), 20, np.uint8), mode="L").save(
        results / "videos2" / f"{VIP_FRAMES[1]}.png")
    assert_user_error(run_tool("evaluate.py", "--vip_root", root, "--results", results),
                      "class ids 20 outside 0..19")


def test_twenty_part_classes_through_a_random_encoder(tmp_path):
    """A palette first-frame map with all 20 classes (ids 0..19) propagates through the learned
    path (random ResNet-18, crw protocol at native size: 45x36 px -> 6x5 cells): indexed PNGs
    with the input's palette and only its ids."""
    ids = np.repeat(np.repeat(np.arange(20, dtype=np.uint8).reshape(4, 5), 9, 0), 9, 1)
    frames = np.asarray(label_io.DAVIS_PALETTE, np.uint8).reshape(-1, 3)[ids]
    write_frames(tmp_path / "frames", [frames, np.roll(frames, 2, 1), np.roll(frames, 4, 1)])
    label_io.write_mask(tmp_path / "parts.png", ids, label_io.DAVIS_MASK)
    out = tmp_path / "out"
    result = run_tool("propagate.py", "--video", tmp_path / "frames", "--labels",
                      tmp_path / "parts.png", "--out", out, "--encoder", "random",
                      "--preset", "crw", "--nooverlay")
    assert result.returncode == 0, result.stderr
    for t in range(3):
        got, fmt = label_io.read_ids(out / f"{t:05d}.png")
        assert fmt.palette and got.shape == (36, 45) and set(np.unique(got)) <= set(range(20))
        if t == 0:
            np.testing.assert_array_equal(got, ids)
        assert len(np.unique(got)) > 10  # the parts follow the shifted frames (measured: 20)
