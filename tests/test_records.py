"""Tests for tc_keras.data.records: the hand-written wire format parses as tf.train.Example."""

import numpy as np
import tensorflow as tf

from tc_keras.data import records


def test_encode_example_matches_tensorflow():
    rng = np.random.default_rng(0)
    jpegs = [b"", b"x" * 5, bytes(rng.integers(0, 256, 200, dtype=np.uint8)),
             bytes(rng.integers(0, 256, 70_000, dtype=np.uint8))]  # 1-, 2- and 3-byte lengths
    data = records.encode_example("dir/clip é.mp4", jpegs, 12.5, 256, 300_000)
    ex = tf.train.Example.FromString(data)
    f = ex.features.feature
    assert set(f) == {"id", "frames", "num_frames", "height", "width", "fps"}  # the docstring's
    assert f["id"].bytes_list.value == ["dir/clip é.mp4".encode()]
    assert list(f["frames"].bytes_list.value) == jpegs
    assert f["num_frames"].int64_list.value == [4]
    assert (f["height"].int64_list.value, f["width"].int64_list.value) == ([256], [300_000])
    assert f["fps"].float_list.value == [12.5]
    # And the same through tf.io parsing, as the pipeline reads it.
    parsed = tf.io.parse_single_example(data, dict(
        frames=tf.io.VarLenFeature(tf.string), fps=tf.io.FixedLenFeature([], tf.float32)))
    assert list(parsed["frames"].values.numpy()) == jpegs and parsed["fps"] == 12.5


def test_jpeg_bytes_round_trip():
    frame = np.zeros((16, 24, 3), np.uint8)
    frame[:, 12:] = (200, 100, 50)
    decoded = tf.io.decode_jpeg(records.jpeg_bytes(frame, quality=95)).numpy()
    assert decoded.shape == (16, 24, 3)
    assert np.abs(decoded.astype(int) - frame).mean() < 4
