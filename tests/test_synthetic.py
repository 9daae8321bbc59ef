"""Tests for tc_keras.data.synthetic: determinism, masks, motion, the written corpus."""

import json

import numpy as np
from PIL import Image

from tc_keras.data import synthetic, video


def test_render_shapes_and_determinism():
    frames, masks = synthetic.render_video(7, frames=6, size=(48, 64), num_objects=(2, 2))
    assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8
    assert masks.shape == (6, 48, 64) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1, 2} and masks.max() >= 1
    again, again_masks = synthetic.render_video(7, frames=6, size=(48, 64), num_objects=(2, 2))
    np.testing.assert_array_equal(frames, again)
    np.testing.assert_array_equal(masks, again_masks)
    other, _ = synthetic.render_video(8, frames=6, size=(48, 64), num_objects=(2, 2))
    assert np.abs(other.astype(int) - frames).mean() > 10


def test_streaming_matches_in_memory():
    frames, masks = synthetic.render_video(3, frames=4, size=(32, 32))
    for t, (frame, mask) in enumerate(synthetic.iter_video(3, frames=4, size=(32, 32))):
        np.testing.assert_array_equal(frame, frames[t])
        np.testing.assert_array_equal(mask, masks[t])


def test_objects_move_and_background_is_textured():
    frames, masks = synthetic.render_video(1, frames=10, size=(64, 64), num_objects=1, pan=0.0)
    ys, xs = np.nonzero(masks[0] == 1)
    ys9, xs9 = np.nonzero(masks[9] == 1)
    shift = np.hypot(xs9.mean() - xs.mean(), ys9.mean() - ys.mean())
    assert shift > 1.0  # centroid moved over 9 frames
    # With a static background only the object's pixels (at t=0 or t=9) change.
    changed = np.any(frames[0] != frames[9], axis=-1)
    assert not np.any(changed & (masks[0] == 0) & (masks[9] == 0))
    assert frames[0][masks[0] == 0].std() > 10  # textured, not flat


def test_static_scene():
    frames, _ = synthetic.render_video(2, frames=3, size=(32, 48), pan=0.0, speed=0.0)
    np.testing.assert_array_equal(frames[0], frames[2])


def test_write_corpus(tmp_path):
    paths = synthetic.write_corpus(tmp_path, 2, frames=5, size=(32, 48), fps=12, seed=4)
    assert [p.name for p in paths] == ["vid_0000.mp4", "vid_0001.mp4"]
    assert video.video_info(paths[1]) == dict(frames=5, fps=12.0, width=48, height=32)
    _, masks = synthetic.render_video((4, 1), frames=5, size=(32, 48))
    first = Image.open(tmp_path / "masks" / "vid_0001" / "00000.png")
    assert first.mode == "P"
    np.testing.assert_array_equal(np.asarray(first), masks[0])
    assert len(list((tmp_path / "masks" / "vid_0001").glob("*.png"))) == 5
    assert json.loads((tmp_path / "corpus.json").read_text())["seed"] == 4
    # The encoded video is close to the rendered frames.
    frames, _ = synthetic.render_video((4, 0), frames=5, size=(32, 48))
    decoded = np.stack(list(video.iter_frames(paths[0])))
    assert np.abs(decoded.astype(float) - frames).mean() < 8
    # A second call keeps finished videos.
    mtime = paths[0].stat().st_mtime_ns
    synthetic.write_corpus(tmp_path, 2, frames=5, size=(32, 48), fps=12, seed=4)
    assert paths[0].stat().st_mtime_ns == mtime
