"""tc_keras.data.label_io: which grayscale masks are ids, soft masks, thresholds, keypoints in frame."""

import numpy as np
import pytest
from PIL import Image

from tc_keras.data import label_io


def _gray(path, ids):
    Image.fromarray(np.asarray(ids, np.uint8), mode="L").save(path)
    return path


def test_grayscale_masks_0_255_and_few_ids(tmp_path):
    ids, fmt = label_io.read_mask(_gray(tmp_path / "a.png", [[0, 255], [255, 0]]))
    assert fmt.binary255 and ids.tolist() == [[0, 1], [1, 0]]
    ids, fmt = label_io.read_mask(_gray(tmp_path / "b.png", [[0, 1], [2, 3]]))
    assert not fmt.binary255 and not fmt.palette and ids.tolist() == [[0, 1], [2, 3]]


def test_part_labels_up_to_20_classes(tmp_path):
    """VIP's classes 0..19: a grayscale mask takes 19 ids besides 0 (more is taken for a soft
    mask), a palette mask any; `read_ids` reads a dataset's id maps as stored (255 kept)."""
    parts = np.arange(20, dtype=np.uint8).reshape(4, 5)
    ids, fmt = label_io.read_mask(_gray(tmp_path / "g.png", parts))
    assert ids.tolist() == parts.tolist() and not fmt.palette and not fmt.binary255
    with pytest.raises(label_io.LabelError, match="21 distinct values"):
        label_io.read_mask(_gray(tmp_path / "g21.png", np.arange(21).reshape(3, 7)))
    label_io.write_mask(tmp_path / "p.png", parts, label_io.DAVIS_MASK)
    assert label_io.read_mask(tmp_path / "p.png")[0].tolist() == parts.tolist()
    with_void = parts.copy()
    with_void[0, 0] = 255
    ids, fmt = label_io.read_ids(_gray(tmp_path / "v.png", with_void))
    assert ids.tolist() == with_void.tolist() and fmt.palette is None
    ids, fmt = label_io.read_ids(tmp_path / "p.png")
    assert ids.tolist() == parts.tolist() and fmt.palette
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(label_io.LabelError, match="rgb.png: a RGB image; expected an 8-bit"):
        label_io.read_ids(tmp_path / "rgb.png")
    with pytest.raises(label_io.LabelError, match="no such label file"):
        label_io.read_ids(tmp_path / "missing.png")


def test_soft_grayscale_mask_is_refused_naming_file_and_values(tmp_path):
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (4, 1))  # 0, 8, ..., 240, 255: a blur
    ramp[:, -1] = 255
    path = _gray(tmp_path / "soft.png", ramp)
    with pytest.raises(label_io.LabelError, match=rf"^{path}: grayscale mask with 32 distinct "
                       r"values \(0, 8, 16, 24, 32, 40, \.\.\., 255\).*--threshold T"):
        label_io.read_mask(path)
    # A few anti-aliased values beside 255 are soft too, not objects 255, 128 and 64.
    with pytest.raises(label_io.LabelError, match="4 distinct values"):
        label_io.read_mask(_gray(tmp_path / "aa.png", [[0, 64], [128, 255]]))
    ids, fmt = label_io.read_mask(path, threshold=128)
    assert fmt.binary255 and ids.tolist() == (ramp >= 128).astype(int).tolist()
    with pytest.raises(label_io.LabelError, match="threshold 0 is outside"):
        label_io.read_mask(path, threshold=0)


def test_palette_mask_keeps_its_ids_under_a_threshold(tmp_path):
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    label_io.write_mask(tmp_path / "p.png", ids, label_io.DAVIS_MASK)
    read, fmt = label_io.read_mask(tmp_path / "p.png", threshold=200)
    assert fmt.palette == label_io.DAVIS_PALETTE and read.tolist() == ids.tolist()


def test_keypoints_outside_the_frames(tmp_path):
    joints = np.array([[0.0, 0.0], [64.0, 48.0], [np.nan, np.nan], [10.0, 20.0]])
    label_io.check_keypoints("k.json", joints, (48, 64), ["a", "b", "c", "d"])  # edges are in
    joints[3] = [10.0, -0.5]
    with pytest.raises(label_io.LabelError, match=r"^k\.json: joint 3 \(d\) of frame 0 is at "
                       r"\(10, -0\.5\), outside the 64x48 frames"):
        label_io.check_keypoints("k.json", joints, (48, 64), ["a", "b", "c", "d"])
