"""The propagation protocols: `PropagationConfig`, the published presets, the model input size.

Shape legend: H W frame size, h w feature size (stride 8).
"""

import dataclasses
from typing import Optional

from tc_keras.model.encoder import FEATURE_STRIDE

@dataclasses.dataclass(frozen=True)
class PropagationConfig:
    """How labels are propagated. Use `PRESETS` for the published protocols.

    Attributes:
      size: input size in pixels. With `square`, frames are resized to size x size; otherwise the
        short side is resized to `size` keeping the aspect ratio. None = native resolution. Either
        way each side is rounded to a multiple of 8 (the feature stride).
      square: resize to a square (paper protocol) instead of keeping the aspect ratio.
      context: number of previous frames used as context besides the first frame (M = 1 + context).
        At the start the context is padded with copies of the first frame.
      radius: short-term frames (all but the first) only match keys within this distance in
        feature cells of the query position; None = unrestricted. The first frame is unrestricted.
      topk: number of context positions each query position takes its label from.
      temperature: softmax temperature on cosine similarities.
      joint_topk: True: top-k over all keys of all context frames jointly, softmax over those k
        (follow-up protocol). False: per context frame, softmax over all of its positions, keep
        that frame's top-k probabilities, average the frames' votes (paper protocol).
      minmax: min-max normalise each label channel over the frame after voting (paper protocol).
    """

    size: Optional[int] = None
    square: bool = False
    context: int = 20
    radius: Optional[float] = 12.0
    topk: int = 10
    temperature: float = 0.05
    joint_topk: bool = True
    minmax: bool = False

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


PRESETS = {
    # The reference protocol (docs/METHOD.md, "Reference protocol"): square 320, first + 7 previous, per-frame top-5 of a softmax
    # per reference frame, votes averaged, min-max normalised per class. The protocol gives no
    # temperature of its own; we use the training affinity's T = 512**-0.5 (docs/METHOD.md, "Affinity").
    "paper": PropagationConfig(size=320, square=True, context=7, radius=None, topk=5,
                               temperature=512 ** -0.5, joint_topk=False, minmax=True),
    # The follow-up work's protocol (docs/METHOD.md, "CRW protocol"): native resolution, first + 20 previous,
    # radius 12 cells, joint top-10, temperature 0.05-0.07 (0.05 here).
    "crw": PropagationConfig(size=None, square=False, context=20, radius=12.0, topk=10,
                             temperature=0.05, joint_topk=True, minmax=False),
    # Default = the follow-up protocol. On davis2016-dev with a random-init ResNet-18 (the only
    # learned-feature signal available when this was chosen; at --size 240 to fit a 2-core CPU)
    # J&F-Mean was: crw 0.370 > crw with context 10 0.340 > paper 0.304 (identity copy 0.252).
    # Random features carry little signal, so this mainly confirms that the stronger published
    # protocol is not worse here; re-check with trained weights.
    "default": PropagationConfig(),
}


def model_size(height, width, config):
    """(height, width) of the frames given to the encoder: multiples of the feature stride."""
    if config.square:
        h = w = config.size
    elif config.size is None:
        h, w = height, width
    else:
        scale = config.size / min(height, width)
        h, w = height * scale, width * scale
    s = FEATURE_STRIDE
    return max(s, int(round(h / s)) * s), max(s, int(round(w / s)) * s)
