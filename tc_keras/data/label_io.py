"""Reading and writing labels for propagation and evaluation: mask PNGs, keypoint JSON.

Masks are PNG files (`read_mask`):
- indexed (palette, PIL mode "P"): pixel values are object or part ids, any of 0..254 (0 =
  background; e.g. VIP's 20 part classes 0..19); the palette is kept so that outputs look like
  the input;
- 8-bit grayscale (mode "L") with values 0 and 255 only (DAVIS-2016): one object; it is read as
  id 1 and written back as 0/255 grayscale;
- other grayscale PNGs: the values are ids and are written back as grayscale, if they look like
  ids: at most MAX_GRAYSCALE_IDS (19) distinct non-zero values, none of them 255. Anything
  else (255 beside other non-zero values, or more values) is taken for a soft mask, anti-aliased
  or resized with interpolation, whose edge values would each become an object: `read_mask`
  raises LabelError naming the file and its number of distinct values, unless a `threshold` is
  given (tools/propagate.py --threshold T): then values >= T are the one object, < T background.
  Indexed PNGs always keep their ids (the threshold does not apply to them).
In indexed masks id 255 marks "void" pixels (the DAVIS convention: objects are 1..n): evaluation
ignores them and propagation treats them as background (`split_void`).

Part label maps of a dataset (VIP's Category_ids: grayscale class ids 0..19, 255 void) are read
as they are stored, with no guess about soft masks: `read_ids`.

Keypoints JSON: {"image_size": [W, H], "joint_names": [...], "joints": [[[x, y] * J] * T]} with
x, y in pixels (0 <= x <= W, 0 <= y <= H); null or NaN for a missing joint. `check_keypoints`
rejects an annotated joint outside the frames (it would be propagated from a clamped position).

Errors a user can cause raise `LabelError` (a ValueError) naming the file and what was expected.
"""

import dataclasses
import json
import math
import pathlib
from typing import Optional

import numpy as np
from PIL import Image


# Void label of indexed (palette) annotations (docs/METHOD.md, "DAVIS J and F").
VOID_ID = 255
# A grayscale mask with more distinct non-zero values than this is not a set of ids (VIP has 19
# part classes besides background, docs/METHOD.md "VIP mIoU"; DAVIS-2017 at most 10 objects).
MAX_GRAYSCALE_IDS = 19


def _davis_palette(num_colors=256):
    """The DAVIS annotations' colour palette (id 0 black), a flat tuple of 768 ints for PIL.

    Colour of id i: the bits of i, three at a time, spread over r, g, b from the high bit down.
    """
    out = []
    for i in range(num_colors):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return tuple(out)


# The one palette of the project: masks it writes from scratch (synthetic videos) and the colours
# of objects and joints in overlays when a mask has none of its own.
DAVIS_PALETTE = _davis_palette()


class LabelError(ValueError):
    """A label file (mask PNG, keypoints JSON, results) that cannot be used; names the file."""


@dataclasses.dataclass(frozen=True)
class MaskFormat:
    """How a mask PNG stores its ids: `palette` (768 ints) for indexed PNGs, `binary255` for 0/255
    grayscale (object id 1 is stored as 255)."""

    palette: Optional[tuple] = None
    binary255: bool = False


# An indexed PNG with the DAVIS palette.
DAVIS_MASK = MaskFormat(palette=DAVIS_PALETTE)


def _read_png(path, kind):
    """(mode, palette or None, (H, W) values) of an image file; LabelError naming it otherwise."""
    if not path.is_file():
        raise LabelError(f"{path}: no such {kind} file")
    try:
        with Image.open(path) as im:
            im.load()
            palette = im.getpalette() if im.mode == "P" else None
            return im.mode, palette, np.asarray(im)
    except OSError as e:
        raise LabelError(f"{path}: not a readable image ({e})") from None


def read_mask(path, threshold=None):
    """(H, W) uint8 object ids and the `MaskFormat` of a mask PNG (see the module docstring).

    Args:
      path: the PNG.
      threshold: for grayscale masks, values >= threshold are the one object (1..255); None
        reads 0/255 as one object and a few small values as ids, and refuses a soft mask.
    """
    path = pathlib.Path(path)
    mode, palette, ids = _read_png(path, "mask")
    if mode == "P":
        return ids.astype(np.uint8), MaskFormat(palette=tuple(palette or ()))
    if mode == "1":
        return ids.astype(np.uint8), MaskFormat(binary255=True)
    if mode != "L":
        raise LabelError(f"{path}: a {mode} image; expected an indexed (palette) PNG with object "
                         "ids or an 8-bit grayscale PNG (0 = background, 255 = object)")
    if threshold is not None:
        if not 1 <= threshold <= 255:
            raise LabelError(f"{path}: threshold {threshold} is outside 1..255")
        return (ids >= threshold).astype(np.uint8), MaskFormat(binary255=True)
    values = np.unique(ids)
    if values.max(initial=0) == 255 and set(values.tolist()) <= {0, 255}:
        return (ids > 0).astype(np.uint8), MaskFormat(binary255=True)
    objects = values[values > 0]
    if len(objects) > MAX_GRAYSCALE_IDS or (255 in objects and len(objects) > 1):
        raise LabelError(
            f"{path}: grayscale mask with {len(values)} distinct values ({_some(values)}): a soft "
            f"(anti-aliased or resized) mask, not 0/255 or up to {MAX_GRAYSCALE_IDS} object ids; "
            "binarise it with --threshold T (tools/propagate.py: values >= T are the object) or "
            "save an indexed (palette) PNG of ids")
    return ids.astype(np.uint8), MaskFormat()


def read_ids(path):
    """(H, W) uint8 ids and the `MaskFormat` of a PNG of class ids, values as stored.

    For label maps whose values are ids by definition (a dataset's part annotations, predictions
    written from them): an indexed PNG gives its indices (palette kept), an 8-bit grayscale PNG
    its values (written back as grayscale). No 0/255 or soft-mask interpretation (`read_mask`).
    """
    path = pathlib.Path(path)
    mode, palette, ids = _read_png(path, "label")
    if mode not in ("P", "L"):
        raise LabelError(f"{path}: a {mode} image; expected an 8-bit grayscale or indexed "
                         "(palette) PNG of class ids")
    return ids.astype(np.uint8), MaskFormat(palette=tuple(palette) if palette else None)


def _some(values, n=6):
    shown = ", ".join(str(v) for v in values[:n])
    return shown + (f", ..., {values[-1]}" if len(values) > n else "")


def split_void(ids, fmt):
    """(ids with void pixels set to background 0, bool (H, W) void map or None).

    Only indexed (palette) masks have void pixels (id 255); for other formats the ids are returned
    unchanged with None.
    """
    if not fmt.palette:
        return ids, None
    void = np.asarray(ids) == VOID_ID
    return np.where(void, 0, ids).astype(np.uint8), void


def write_mask(path, ids, fmt):
    """Writes (H, W) ids as a PNG in the same format as the input mask."""
    ids = np.asarray(ids, np.uint8)
    if fmt.binary255:
        im = Image.fromarray(np.where(ids > 0, 255, 0).astype(np.uint8), mode="L")
    elif fmt.palette:
        im = Image.fromarray(ids, mode="P")
        im.putpalette(list(fmt.palette))
    else:
        im = Image.fromarray(ids, mode="L")
    im.save(path)


def check_mask(path, ids, frame_size):
    """Raises LabelError unless the mask has an object and the frames' (H, W) size."""
    if ids.shape != tuple(frame_size):
        raise LabelError(f"{path}: mask is {ids.shape[1]}x{ids.shape[0]} but the frames are "
                         f"{frame_size[1]}x{frame_size[0]}; the first-frame mask must match")
    if not np.any(ids):
        raise LabelError(f"{path}: the mask has no object (every pixel is background 0)")


def check_keypoints(path, joints, frame_size, names=None, frame=0):
    """Raises LabelError unless every annotated joint of (J, 2) `joints` lies in the frames.

    Args:
      path: the keypoints file (named in the message); joints: one frame's (x, y) pixels, NaN
        for a missing joint; frame_size: (H, W) of the video; names: joint names or None;
      frame: the frame index, for the message.
    """
    h, w = frame_size
    for j, (x, y) in enumerate(np.asarray(joints, np.float64)):
        if np.isnan(x) or np.isnan(y) or (0 <= x <= w and 0 <= y <= h):
            continue
        name = f" ({names[j]})" if names and j < len(names) else ""
        raise LabelError(f"{path}: joint {j}{name} of frame {frame} is at ({x:g}, {y:g}), outside "
                         f"the {w}x{h} frames (0 <= x <= {w}, 0 <= y <= {h}); fix it or write "
                         "null for a joint that is not visible")


def read_keypoints(path):
    """(joints (T, J, 2) float64 with NaN for missing, metadata dict) from a keypoints JSON."""
    path = pathlib.Path(path)
    try:
        data = json.loads(path.read_text())
        joints = np.array([[[np.nan if v is None else v for v in xy] for xy in frame]
                           for frame in data["joints"]], np.float64)
    except FileNotFoundError:
        raise LabelError(f"{path}: no such keypoints file") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LabelError(f"{path}: not a keypoints JSON with a 'joints' list of frames of [x, y] "
                         f"pairs ({e})") from None
    if joints.ndim != 3 or joints.shape[-1] != 2 or joints.shape[0] == 0:
        raise LabelError(f"{path}: 'joints' must be T frames x J joints x [x, y], got shape "
                         f"{joints.shape}")
    meta = {k: v for k, v in data.items() if k != "joints"}
    return joints, meta


def keypoints_json(joints, meta):
    """JSON text for (T, J, 2) joints in the input format (NaN written as null)."""
    rows = [[[None if not math.isfinite(v) else round(float(v), 3) for v in xy] for xy in frame]
            for frame in np.asarray(joints)]
    return json.dumps({**meta, "joints": rows})
