"""Label propagation through a video by feature affinity (docs/METHOD.md, "Label propagation").

Three layers, so that each can be reused or exported on its own:

- `tc_keras.propagation.label_step` (`vote`, `vote_local`): the pure label step. Given
  the features and (soft) labels of M context frames and the features of a query frame, each
  query position takes the top-k most similar context positions and averages their labels.
  `keras.ops` only, batched, fixed-rank, no data-dependent Python control flow, so it can be
  traced into a SavedModel / TFLite signature.
  `vote_local` is the same step for a spatial radius, computing only the logits it needs
  (several times faster at 480p); `vote` with a radius mask is its reference.
  `tc_keras.propagation.window_step` is the compiled path's form of it (key windows).
- `Propagator`: streams frames (generator in, generator out), embeds each frame once with any
  callable `embed(frames_uint8 (B, H, W, 3)) -> (B, h, w, C)` (L2-normalised), keeps only the
  context (first frame + N previous; `tc_keras.propagation.context`: graph state and a compiled
  step, whatever the runtime) in fixed-size buffers, so memory does not grow with the length of
  the video, and feeds its own soft predictions back as context (recurrent). Which functions
  compute the labels is an explicit argument, `steps` (`context.KERAS`, `context.DENSE`, or an
  exported model's `label_steps`).
- `propagate_mask` / `propagate_keypoints`: label encodings (one-hot masks with object ids,
  Gaussian keypoint heatmaps; masks: `tc_keras.propagation.label_maps`) and their decoding at
  frame resolution.

Shape legend: B batch, M context frames, H W frame size, h w feature size (stride 8, ceil(H/8) x
ceil(W/8) of the model input size), N = h*w, Q query positions, C channels, K label channels,
J joints.
"""

import itertools

import numpy as np
import tensorflow as tf
from keras import ops

from tc_keras.propagation.context import KERAS, Context
from tc_keras.propagation.label_maps import label_map, mask_labels
from tc_keras.propagation.presets import PRESETS, feature_size, model_size

# Frames per encoder call: at 480p a ResNet-18 costs about 12% less CPU per frame two at a time
# than one at a time (bench/RESULTS.md, issue 22), four gain nothing more.
EMBED_BATCH = 2

# Keypoint heatmaps: Gaussian sigma in feature cells, and the number of top locations whose
# weighted mean gives the keypoint back (docs/METHOD.md, "Label propagation").
KEYPOINT_SIGMA = 0.5
KEYPOINT_TOPK = 3


# ----------------------------------------------------------------------------------------------
# Streaming over a video
# ----------------------------------------------------------------------------------------------

@tf.function(reduce_retracing=True)
def _resize(frame, height, width, antialias):
    """uint8 (H, W, 3) -> uint8 (height, width, 3), bilinear (antialiased when shrinking)."""
    x = tf.image.resize(tf.cast(frame[None], tf.float32), (height, width), antialias=antialias)
    return tf.cast(tf.clip_by_value(tf.round(x[0]), 0.0, 255.0), tf.uint8)


def resize_frame(frame, height, width, antialias=True):
    """uint8 (H, W, 3) -> uint8 (height, width, 3), bilinear; `antialias` low-pass filters when
    shrinking (False: OpenCV's default resize, half-pixel centres and no filter)."""
    if tuple(frame.shape[:2]) == (height, width):
        return frame
    return _resize(frame, height, width, bool(antialias))


class Propagator:
    """Streams soft labels through a video: frames in, (frame, labels) out, one at a time.

    Args:
      embed: callable, uint8 frames (B, H', W', 3) at the model size -> (B, h, w, C) L2-normalised
        features, h = ceil(H'/8), w = ceil(W'/8) (a tf.function, e.g. `encoder_io.make_embed`,
        keeps the frames in TensorFlow; any callable returning arrays works).
      config: a `PropagationConfig`.
      steps: the label steps, a `context.LabelSteps`: `context.KERAS` (key windows / `vote`
        compiled: the fast path), `context.DENSE` (`vote` with the dense radius mask: the
        reference) or an exported model's (`tc_keras.export.runtimes`: `runtime.label_steps`), so
        that every runtime runs the same step.

    Only the first frame and the `config.context` most recent frames (features and labels) are
    kept, in fixed-size buffers (`context`, the current video's `context.Context`, says how large:
    `context.nbytes`): memory does not grow with the video length.
    With `config.predict_first`, frame 0 is first predicted from that context (copies of itself)
    and enters it with its prediction, before frame 1 (the reference code's start).
    """

    def __init__(self, embed, config=PRESETS["default"], steps=KERAS):
        self.embed = embed
        self.config = config
        self.steps = steps
        self.context = None

    def feature_size(self, height, width):
        return feature_size(height, width, self.config)

    def _features(self, frames):
        """(B, N, C) features of B uint8 (H, W, 3) frames of one size, embedded in one call at
        the model size."""
        mh, mw = model_size(frames[0].shape[0], frames[0].shape[1], self.config)
        # Each frame a uint8 tensor first: stacking a list of arrays would give int32, which
        # exported embeds refuse.
        feats = self.embed(tf.stack([
            tf.convert_to_tensor(resize_frame(frame, mh, mw, self.config.antialias))
            for frame in frames]))
        expected = (len(frames), *self.feature_size(frames[0].shape[0], frames[0].shape[1]))
        if tuple(feats.shape[:3]) != expected:
            raise ValueError(f"embed returned features {tuple(feats.shape[1:3])} for a {mh}x{mw} "
                             f"(HxW) frame; expected {expected[1:]} (ceil(side / 8))")
        # (B, h, w, C) -> (B, N, C) float32 (an embed may return float64 arrays, bfloat16 tensors)
        return ops.cast(ops.reshape(feats, (len(frames), expected[1] * expected[2], -1)),
                        "float32")

    def run(self, frames, first_labels):
        """Yields (frame, labels (h, w, K) float32) for every frame, the first included.

        Args:
          frames: iterable of uint8 (H, W, 3) frames, all of one size.
          first_labels: (h, w, K) labels of the first frame at the feature size
            (`feature_size(H, W)`).
        """
        it = iter(frames)
        first = next(it, None)
        if first is None:
            raise ValueError("the video has no frames")
        h, w = self.feature_size(*first.shape[:2])
        first_labels = np.asarray(first_labels, np.float32)
        if first_labels.shape[:2] != (h, w):
            raise ValueError(f"first-frame labels are {first_labels.shape[:2]}, expected the "
                             f"feature size {(h, w)}")
        feats0 = self._features([first])[0]
        labels0 = first_labels.reshape(h * w, -1)  # (h, w, K) -> (N, K)
        self.context = context = Context(feats0, labels0, h, w, self.config, self.steps)
        if self.config.predict_first:
            # Frame 0 from copies of itself, fed back (docs/METHOD.md, "Reference protocol").
            context.step(feats0)
        yield first, first_labels
        # The encoder takes EMBED_BATCH frames per call (decoding runs ahead in the tools); the
        # label steps then run one frame after the other.
        t = 1
        while batch := list(itertools.islice(it, EMBED_BATCH)):
            for i, frame in enumerate(batch):
                if frame.shape != first.shape:
                    raise ValueError(f"frame {t + i} is {frame.shape}, the first frame "
                                     f"{first.shape}")
            for frame, feats in zip(batch, ops.unstack(self._features(batch))):
                pred = context.step(feats)  # (N, K)
                yield frame, np.asarray(pred, np.float32).reshape(h, w, -1)
            t += len(batch)


def _peek(frames):
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("the video has no frames")
    return first, it


def _same_size(first, frames):
    """Yields `frames`, checking each has the first frame's shape (identity baseline)."""
    for t, frame in enumerate(frames, start=1):
        if frame.shape != first.shape:
            raise ValueError(f"frame {t} is {frame.shape}, the first frame {first.shape}")
        yield frame


def propagate_mask(frames, first_mask, embed, config=PRESETS["default"], steps=KERAS):
    """Propagates an object mask through a video.

    Args:
      frames: iterable of uint8 (H, W, 3) frames.
      first_mask: (H, W) integer object ids of the first frame (0 = background).
      embed: see `Propagator`; None gives the "identity" baseline (copy the first mask).
      config: a `PropagationConfig` (its labels in and out: `label_maps`).
      steps: the label steps (see `Propagator`).
    Yields:
      (frame, (H, W) mask with the ids of `first_mask`) for every frame, the first included (as
      given); objects dropped by `config.min_label_pixels` do not appear after it.
    """
    first, rest = _peek(frames)
    first_mask = np.asarray(first_mask)
    if first_mask.shape != first.shape[:2]:
        raise ValueError(f"mask is {first_mask.shape[1]}x{first_mask.shape[0]} but frames are "
                         f"{first.shape[1]}x{first.shape[0]}")
    ids = np.unique(first_mask)
    if not np.any(ids != 0):
        raise ValueError("the first-frame mask has no object (all background)")
    if embed is None:
        yield first, first_mask
        for frame in _same_size(first, rest):
            yield frame, first_mask
        return
    ids, labels0 = mask_labels(first_mask, config)
    prop = Propagator(embed, config, steps)
    stream = prop.run(_chain(first, rest), labels0)
    next(stream)
    yield first, first_mask
    for frame, soft in stream:
        yield frame, ids[label_map(soft, first_mask.shape, config)]


def _chain(first, rest):
    yield first
    yield from rest


def keypoint_heatmaps(joints, image_size, feature_size, sigma=KEYPOINT_SIGMA):
    """(J, 2) pixel (x, y) joints of an (H, W) image -> (h, w, J) Gaussian heatmaps.

    Feature cell (i, j) is centred on pixel ((j + 0.5) * W / w, (i + 0.5) * H / h); sigma is in
    feature cells. A joint with a NaN coordinate gets an all-zero map.
    """
    (height, width), (h, w) = image_size, feature_size
    joints = np.asarray(joints, np.float64)
    fx = joints[:, 0] * w / width - 0.5  # (J,)
    fy = joints[:, 1] * h / height - 0.5
    gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    d2 = (gx[..., None] - fx) ** 2 + (gy[..., None] - fy) ** 2  # (h, w, J)
    maps = np.exp(-d2 / (2.0 * sigma ** 2))
    return np.nan_to_num(maps, nan=0.0).astype(np.float32)


def decode_keypoints(heatmaps, image_size, topk=KEYPOINT_TOPK):
    """(h, w, J) heatmaps -> (J, 2) pixel (x, y): weighted mean of each map's top-k cells."""
    (height, width) = image_size
    h, w, j = heatmaps.shape
    flat = np.asarray(heatmaps, np.float64).reshape(h * w, j).T  # (h, w, J) -> (J, N)
    index = np.argsort(-flat, axis=1)[:, :topk]  # (J, k)
    weights = np.maximum(np.take_along_axis(flat, index, axis=1), 0.0) + 1e-12
    fx = (index % w + 0.5) * width / w
    fy = (index // w + 0.5) * height / h
    total = weights.sum(1)
    return np.stack([(weights * fx).sum(1) / total, (weights * fy).sum(1) / total], -1)


def propagate_keypoints(frames, first_joints, embed, config=PRESETS["default"], steps=KERAS):
    """Propagates keypoints as Gaussian heatmaps.

    Args:
      frames: iterable of uint8 (H, W, 3) frames.
      first_joints: (J, 2) pixel (x, y) joints of the first frame; NaN = not annotated.
      embed: see `Propagator`; None gives the identity baseline (copy the first joints).
      config: a `PropagationConfig`.
      steps: the label steps (see `Propagator`).
    Yields:
      (frame, (J, 2) joints in pixels) for every frame, the first included; joints that were NaN
      in the first frame stay NaN.
    """
    first, rest = _peek(frames)
    first_joints = np.asarray(first_joints, np.float64)
    missing = np.any(~np.isfinite(first_joints), axis=-1)
    if embed is None:
        yield first, first_joints
        for frame in _same_size(first, rest):
            yield frame, first_joints
        return
    prop = Propagator(embed, config, steps)
    size = first.shape[:2]
    feature_size = prop.feature_size(*size)
    maps = keypoint_heatmaps(first_joints, size, feature_size)
    stream = prop.run(_chain(first, rest), maps)
    next(stream)
    yield first, first_joints
    for frame, soft in stream:
        joints = decode_keypoints(soft, size)
        joints[missing] = np.nan
        yield frame, joints
