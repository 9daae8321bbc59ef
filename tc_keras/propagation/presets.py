"""The propagation protocols: `PropagationConfig`, the published presets, the model input size and
the feature grid.

Each field carries its flag's help text (`help`, with its unit), its choices (an enum flag) and,
for an optional field, the word that means None on the command line (`none`); tools make their
protocol flags from them (`tc_keras.propagation.protocol_flags`).

Shape legend: H W frame size, h w feature size (stride 8).
"""

import dataclasses
import math
from typing import Optional

from tc_keras.flag_fields import field as _field
from tc_keras.model.encoder import FEATURE_STRIDE

# How the first frame's label map reaches the feature grid (`PropagationConfig.label_resize`).
LABEL_RESIZES = ("area", "bilinear", "nearest_bilinear")
# How soft labels on the grid become a label map of the frame (`PropagationConfig.output_resize`).
OUTPUT_RESIZES = ("bilinear", "bilinear_nearest")


@dataclasses.dataclass(frozen=True)
class PropagationConfig:
    """How labels are propagated (docs/METHOD.md, "Label propagation"). Use `PRESETS` for the
    published protocols; each field's `help` metadata says what it does."""

    size: Optional[int] = _field(
        None, "Input size in px: frames are resized so that the short side (or, with --square, "
        "each side) is this; 0 = native resolution.", none="0")
    square: bool = _field(False, "Resize frames to size x size (the reference protocol).")
    native_grid: bool = _field(
        False, "Feed frames at the input size as it is, the feature grid being what the "
        "convolutions give (ceil(side / 8) cells); otherwise each side is first rounded to a "
        "multiple of 8 px.")
    antialias: bool = _field(
        True, "Antialias (low-pass) frames when shrinking them to the input size; off = plain "
        "bilinear interpolation (OpenCV's default resize).")
    context: int = _field(20, "Previous frames kept as context besides the first frame (count); "
                          "at the start they are copies of the first frame.")
    radius: Optional[float] = _field(
        12.0, "Spatial radius for short-term (non-first) context frames (feature cells); 'none' "
        "= unrestricted.", none="none")
    strict_radius: bool = _field(
        False, "A short-term key counts only when strictly inside the radius (distance < "
        "radius); otherwise distance <= radius.")
    topk: int = _field(10, "Context positions each query position takes its label from (count).")
    temperature: float = _field(0.05, "Softmax temperature on cosine similarities.")
    joint_topk: bool = _field(
        True, "Top-k over all keys of all context frames jointly, softmax over those k; "
        "otherwise per context frame: softmax over its positions, its top-k probabilities, the "
        "frames' votes averaged.")
    minmax: bool = _field(False, "Min-max normalise each label channel over the frame after "
                          "each step.")
    label_resize: str = _field(
        "area", "First-frame labels to the feature grid: 'area' = one-hot maps area-averaged, "
        "'bilinear' = one-hot maps resized bilinearly without antialiasing, 'nearest_bilinear' "
        "= the label map resized to the input size by nearest neighbour, then one-hot, then "
        "bilinear.", choices=LABEL_RESIZES)
    min_label_pixels: int = _field(
        0, "Drop first-frame objects with fewer pixels than this, counted on the label map "
        "that is one-hot encoded (px; their pixels get no label; 0 = keep all).")
    predict_first: bool = _field(
        False, "Before frame 1, predict frame 0 from its context (copies of itself) and feed "
        "that prediction back as a short-term context frame.")
    output_resize: str = _field(
        "bilinear", "Soft labels to the frame's label map: 'bilinear' = upsampled to the frame, "
        "then argmax; 'bilinear_nearest' = upsampled to the input size, argmax there, then "
        "nearest neighbour to the frame.", choices=OUTPUT_RESIZES)

    def __post_init__(self):
        if self.size is not None and self.size < FEATURE_STRIDE:
            raise ValueError(f"size must be None or at least {FEATURE_STRIDE} px, got {self.size}")
        if self.square and self.size is None:
            raise ValueError("square=True needs a size")
        if self.context < 0:
            raise ValueError(f"context must be >= 0 previous frames, got {self.context}")
        if self.radius is not None and self.radius < 0:
            raise ValueError(f"radius must be None or >= 0 feature cells, got {self.radius}")
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.label_resize not in LABEL_RESIZES:
            raise ValueError(f"label_resize must be one of {LABEL_RESIZES}, got "
                             f"{self.label_resize!r}")
        if self.output_resize not in OUTPUT_RESIZES:
            raise ValueError(f"output_resize must be one of {OUTPUT_RESIZES}, got "
                             f"{self.output_resize!r}")
        if self.min_label_pixels < 0:
            raise ValueError(f"min_label_pixels must be >= 0 px, got {self.min_label_pixels}")


# An object the reference test code keeps has more than 10 pixels after its first one (it counts
# a colour's pixels from 0 once the colour is seen): at least 12 (docs/METHOD.md, "Reference
# protocol").
REFERENCE_MIN_LABEL_PIXELS = 12

PRESETS = {
    # The reference protocol (docs/METHOD.md, "Reference protocol"): square 320 without
    # antialiasing, first + 7 previous, per-frame top-5 of a softmax per reference frame, votes
    # averaged, min-max normalised per class; labels nearest-resized to 320, one-hot, bilinear to
    # 40x40, objects of fewer than 12 px dropped; frame 0 first predicted from itself; output
    # argmaxed at 320 and nearest-resized to the frame. The protocol gives no temperature of its
    # own; we use the training affinity's T = 512**-0.5 (docs/METHOD.md, "Affinity").
    "paper": PropagationConfig(
        size=320, square=True, antialias=False, context=7, radius=None, topk=5,
        temperature=512 ** -0.5, joint_topk=False, minmax=True, label_resize="nearest_bilinear",
        min_label_pixels=REFERENCE_MIN_LABEL_PIXELS, predict_first=True,
        output_resize="bilinear_nearest"),
    # The follow-up work's protocol as its test code runs it (docs/METHOD.md, "CRW protocol"):
    # native size and grid (854x480 -> 107x60 cells), first + 20 previous, keys strictly within
    # 12 cells, joint top-10, temperature 0.05, labels resized bilinearly without antialiasing.
    "crw": PropagationConfig(
        size=None, native_grid=True, antialias=False, context=20, radius=12.0,
        strict_radius=True, topk=10, temperature=0.05, joint_topk=True, minmax=False,
        label_resize="bilinear"),
    # Default = the follow-up protocol with this code's earlier conventions: sides rounded to a
    # multiple of 8 px, labels area-averaged to the grid, keys within distance <= 12. On
    # davis2016-dev with a random-init ResNet-18 (the only learned-feature signal available when
    # this was chosen; at --size 240 to fit a 2-core CPU) J&F-Mean was: default 0.370 > with
    # context 10 0.340 > paper 0.304 (identity copy 0.252). Random features carry little signal,
    # so this mainly confirms that the stronger published protocol is not worse here; re-check
    # with trained weights.
    "default": PropagationConfig(),
}


def model_size(height, width, config):
    """(height, width) of the frames given to the encoder.

    With `config.native_grid` the (resized) size as it is; otherwise each side rounded to a
    multiple of the feature stride (at least one stride).
    """
    if config.square:
        h = w = config.size
    elif config.size is None:
        h, w = height, width
    else:
        scale = config.size / min(height, width)
        h, w = height * scale, width * scale
    if config.native_grid:
        return max(1, int(round(h))), max(1, int(round(w)))
    s = FEATURE_STRIDE
    return max(s, int(round(h / s)) * s), max(s, int(round(w / s)) * s)


def feature_size(height, width, config):
    """(h, w) feature grid of (height, width) frames: ceil(model size / 8) per side, what the
    encoder's stride-2 stages give (each halves a side rounding up)."""
    mh, mw = model_size(height, width, config)
    return math.ceil(mh / FEATURE_STRIDE), math.ceil(mw / FEATURE_STRIDE)
