"""Tests for tc_keras.data.pipeline: clip structure, ground-truth patches, determinism, sharding."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tc_keras import ops as tc_ops
from tc_keras.data import pipeline, records, shard_files, synthetic

MEAN = np.array(tc_ops.IMAGENET_MEAN)
STD = np.array(tc_ops.IMAGENET_STD)
SMALL = dict(crop_size=48, resize_short=56, shuffle_buffer=8)


def _write_shard(path, videos):
    """videos: [(id, uint8 frames (T, H, W, 3))] -> one TFRecord shard."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for vid, frames in videos:
            jpegs = [records.jpeg_bytes(f, quality=95) for f in frames]
            writer.write(records.encode_example(vid, jpegs, 12.0, *frames.shape[1:3]))
    return str(path)


def _coded_video(num_frames, size=(56, 72)):
    """Flat frames whose brightness is the frame index (survives JPEG, crops and flips)."""
    return np.stack([np.full(size + (3,), 10 + 6 * i, np.uint8) for i in range(num_frames)])


def _frame_index(normalized):
    """Un-normalises (..., H, W, 3) frames and reads back the coded frame index."""
    rgb = (np.asarray(normalized) * STD + MEAN) * 255.0
    return np.round((rgb.mean(axis=(-3, -2, -1)) - 10) / 6).astype(int)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    videos = [(f"v{i}", synthetic.render_video(i, frames=24, size=(56, 72))[0]) for i in range(4)]
    _write_shard(folder / "a.tfrecord", videos[:2])
    _write_shard(folder / "b.tfrecord", videos[2:])
    return folder


def test_shapes_dtypes_ranges(shards):
    ds = pipeline.clip_dataset(shards, batch_size=2, seed=0, **SMALL)
    batch = next(iter(ds))
    assert batch["past"].shape == (2, 4, 48, 48, 3)
    assert batch["target"].shape == (2, 48, 48, 3)
    assert batch["patch"].shape == (2, 16, 16, 3)
    assert batch["theta"].shape == (2, 2, 3)
    assert all(v.dtype == tf.float32 for v in batch.values())
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    for key in ("past", "target", "patch"):
        x = batch[key].numpy()
        assert np.all(x >= lo.min() - 1e-4) and np.all(x <= hi.max() + 1e-4)
        assert x.std() > 0.1
    theta = batch["theta"].numpy().astype(np.float64)
    linear = theta[:, :, :2]
    np.testing.assert_allclose(np.linalg.det(linear), 1 / 9, rtol=1e-5)  # scale 1/3, rotation
    angle = np.arctan2(linear[:, 1, 0], linear[:, 0, 0])
    assert np.all(np.abs(angle) <= math.radians(45) + 1e-6)
    extent = (np.abs(np.cos(angle)) + np.abs(np.sin(angle))) / 3
    assert np.all(np.abs(theta[:, :, 2]) <= 1 - extent[:, None] + 1e-6)  # patch inside the frame


def _numpy_affine_sample(image, theta, size):
    """float64 reference: (H, W, C) image, (2, 3) theta -> (size, size, C), zero padding."""
    h, w = image.shape[:2]
    centres = (2 * np.arange(size) + 1) / size - 1
    gx, gy = np.meshgrid(centres, centres)
    x = theta[0, 0] * gx + theta[0, 1] * gy + theta[0, 2]
    y = theta[1, 0] * gx + theta[1, 1] * gy + theta[1, 2]
    px, py = ((x + 1) * w - 1) / 2, ((y + 1) * h - 1) / 2
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    out = np.zeros((size, size, image.shape[2]))
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - np.abs(px - xi)) * (1 - np.abs(py - yi))
            valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            out += (weight * valid)[..., None] * image[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
    return out


def test_theta_resamples_the_patch(shards):
    ds = pipeline.clip_dataset(shards, batch_size=4, seed=1, crop_size=60, resize_short=60)
    batch = next(iter(ds))
    again = tc_ops.affine_sample(batch["target"], batch["theta"], 20, 20)
    np.testing.assert_allclose(again.numpy(), batch["patch"].numpy(), atol=1e-5)
    # Independent float64 reference of the same convention (align_corners=False, zero padding).
    for target, theta, patch in zip(batch["target"].numpy(), batch["theta"].numpy(),
                                    batch["patch"].numpy()):
        expected = _numpy_affine_sample(target.astype(np.float64), theta.astype(np.float64), 20)
        np.testing.assert_allclose(patch, expected, atol=1e-4)


def test_patch_goes_where_things_move(tmp_path):
    # One object moving over a static background: the patch should sit on the object.
    frames, masks = synthetic.render_video(5, frames=24, size=(64, 64), num_objects=1, pan=0.0)
    shard = _write_shard(tmp_path / "s.tfrecord", [("moving", frames)])
    ds = pipeline.clip_dataset(shard, batch_size=8, seed=2, crop_size=64, resize_short=64,
                               shuffle_buffer=0)
    coverage = []
    for batch in ds.take(4):
        targets = (batch["target"].numpy() * STD + MEAN) * 255.0
        for target, theta in zip(targets, batch["theta"].numpy()):
            # Which frame and whether flipped: the closest rendered frame.
            errors = [(np.abs(target - f).mean(), t, flip) for t in range(24)
                      for flip, f in ((False, frames[t]), (True, frames[t][:, ::-1]))]
            _, t, flip = min(errors)
            mask = (masks[t][:, ::-1] if flip else masks[t]).astype(np.float32)
            sampled = tc_ops.affine_sample(mask[None, :, :, None], theta[None], 21, 21)
            coverage.append(float(np.mean(sampled)))
    # The object fills ~3% of the frame; a patch placed at random would be ~3% object.
    object_fraction = float(np.mean(masks > 0))
    assert np.mean(coverage) > 4 * object_fraction, (coverage, object_fraction)
    assert np.mean(np.array(coverage) > 0) > 0.8, coverage


def test_deterministic_mode_repeats(shards):
    def batches(seed=None, ds=None):
        if ds is None:
            ds = pipeline.clip_dataset(shards, batch_size=2, seed=seed, deterministic=True,
                                       **SMALL)
        return [{k: v.numpy() for k, v in b.items()} for b in ds.take(3)]

    ds = pipeline.clip_dataset(shards, batch_size=2, seed=7, deterministic=True, **SMALL)
    first = batches(ds=ds)
    for again in (batches(ds=ds), batches(7)):  # the same dataset twice, and a rebuilt one
        for a, b in zip(first, again):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    other = batches(8)
    assert any(not np.array_equal(a["theta"], b["theta"]) for a, b in zip(first, other))
    with pytest.raises(ValueError, match="seed"):
        pipeline.clip_dataset(shards, batch_size=2, deterministic=True)


@pytest.mark.parametrize("num_frames", [5, 8, 12, 15, 16, 40])
def test_clip_offsets(num_frames):
    offsets = pipeline.clip_offsets(num_frames).numpy()
    assert offsets[0] == 0 and np.all(np.diff(offsets) > 0) and offsets[-1] <= num_frames - 1
    if num_frames >= 16:
        np.testing.assert_array_equal(offsets, [0, 2, 4, 6, 15])
    else:
        assert offsets[-1] == num_frames - 1  # the gap is scaled down to fit the video


def test_short_video_gap_rescaled_and_too_short_dropped(tmp_path):
    shard = _write_shard(tmp_path / "s.tfrecord", [("short", _coded_video(8)),
                                                   ("too_short", _coded_video(4) + 100)])
    ds = pipeline.clip_dataset(shard, batch_size=4, seed=3, **SMALL)
    batch = next(iter(ds))
    past = _frame_index(batch["past"].numpy())  # (B, k)
    target = _frame_index(batch["target"].numpy())  # (B,)
    np.testing.assert_array_equal(past, [[0, 1, 2, 3]] * 4)  # 8 frames: offsets 0 1 2 3 7
    np.testing.assert_array_equal(target, [7] * 4)


def test_clip_start_varies_with_nominal_gaps(tmp_path):
    shard = _write_shard(tmp_path / "s.tfrecord", [("long", _coded_video(30))])
    ds = pipeline.clip_dataset(shard, batch_size=8, seed=4, **SMALL)
    starts = []
    for batch in ds.take(3):
        past = _frame_index(batch["past"].numpy())
        target = _frame_index(batch["target"].numpy())
        np.testing.assert_array_equal(past - past[:, :1], [[0, 2, 4, 6]] * 8)
        np.testing.assert_array_equal(target - past[:, 0], [15] * 8)
        starts += list(past[:, 0])
    assert min(starts) >= 0 and max(starts) <= 14 and len(set(starts)) > 4


def _ids(records):
    spec = dict(id=tf.io.FixedLenFeature([], tf.string))
    return sorted(tf.io.parse_single_example(r, spec)["id"].numpy().decode() for r in records)


def test_input_context_shards_files_or_records(shards):
    files = shard_files.resolve_shards(shards)
    ctx = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i)
           for i in range(2)]
    got = [_ids(pipeline.video_records(files, repeat=False, input_context=c)) for c in ctx]
    assert got == [["v0", "v1"], ["v2", "v3"]]  # one file each
    got = [_ids(pipeline.video_records(files[:1], repeat=False, input_context=c)) for c in ctx]
    assert got == [["v0"], ["v1"]]  # fewer files than pipelines: every other record


def test_distributed_per_replica_batches(shards):
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPU devices (set up in conftest)")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dist = pipeline.distributed_clip_dataset(strategy, shards, 4, seed=0, **SMALL)
    batch = next(iter(dist))
    local = strategy.experimental_local_results(batch["past"])
    assert [x.shape for x in local] == [(2, 4, 48, 48, 3)] * 2


def test_missing_shards_error_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        pipeline.clip_dataset(tmp_path / "nope", batch_size=2)


def _angles(batch):
    linear = batch["theta"].numpy()[:, :, :2].astype(np.float64)
    return np.arctan2(linear[:, 1, 0], linear[:, 0, 0])


def test_rotation_scale_variable_is_read_per_clip(shards):
    """A ramp: the pipeline reads the variable when it makes each clip."""
    scale = tf.Variable(0.0)
    ds = pipeline.clip_dataset(shards, batch_size=4, seed=2, rotation_scale=scale,
                               deterministic=True, **SMALL)
    np.testing.assert_allclose(_angles(next(iter(ds))), 0.0, atol=1e-6)
    scale.assign(0.5)
    angles = _angles(next(iter(ds)))
    assert np.abs(angles).max() > 1e-3
    assert np.all(np.abs(angles) <= math.radians(22.5) + 1e-6)
