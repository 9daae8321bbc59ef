"""Label maps to and from the feature grid, as each protocol does it (docs/METHOD.md, "Label
propagation").

- `mask_labels`: a first-frame id map -> the ids kept and their one-hot labels on the grid
  (`PropagationConfig.label_resize`, `min_label_pixels`).
- `label_map`: soft labels on the grid -> the label channel of each pixel of the frame
  (`PropagationConfig.output_resize`).
- `nearest_index` / `resize_nearest`: nearest-neighbour resizing as PIL computes it (half-pixel
  centres: what the reference code's label loading runs) and as OpenCV's INTER_NEAREST does
  (top-left corners: what the reference code's output conversion runs).

Bilinear resizes here are TensorFlow's without antialiasing, which equal OpenCV's default
(INTER_LINEAR): half-pixel centres, the border pixels repeated.

Shape legend: H W frame size, H' W' model input size, h w feature grid, K label channels.
"""

import numpy as np
import tensorflow as tf

from tc_keras.propagation.presets import feature_size, model_size


def nearest_index(src, dst, centred):
    """Source index of each of `dst` output positions of a nearest-neighbour resize from `src`.

    centred: PIL's NEAREST, floor((i + 0.5) * src / dst); otherwise OpenCV's INTER_NEAREST,
    floor(i * src / dst). Both clamped to src - 1.
    """
    pos = (np.arange(dst, dtype=np.float64) + (0.5 if centred else 0.0)) * (src / dst)
    return np.minimum(np.floor(pos).astype(np.int64), src - 1)


def resize_nearest(array, height, width, centred):
    """(H, W, ...) array -> (height, width, ...) by nearest neighbour (see `nearest_index`)."""
    rows = nearest_index(array.shape[0], height, centred)
    cols = nearest_index(array.shape[1], width, centred)
    return array[rows[:, None], cols[None, :]]


def mask_labels(mask, config):
    """The ids kept and their labels on the feature grid, from a first-frame id map.

    'area' and 'bilinear' resize the one-hot maps of the (H, W) map to the grid (area averages,
    or bilinear without antialiasing); 'nearest_bilinear' first resizes the id map to the model
    input size by nearest neighbour (PIL's), then the one-hot maps bilinearly. Objects with fewer
    than `config.min_label_pixels` pixels on the map that is one-hot encoded are dropped: their
    pixels get no label at all (every channel 0), as in the reference code.

    Args:
      mask: (H, W) integer ids, 0 = background (kept whatever its size).
      config: a `PropagationConfig`.
    Returns:
      ids (K,) of `mask`'s dtype, background first, and float32 labels (h, w, K).
    Raises:
      ValueError when no object is left.
    """
    mask = np.asarray(mask)
    height, width = mask.shape
    if config.label_resize == "nearest_bilinear":
        mask = resize_nearest(mask, *model_size(height, width, config), centred=True)
    ids, counts = np.unique(mask, return_counts=True)
    kept = (ids == 0) | (counts >= config.min_label_pixels)
    if not np.any(kept & (ids != 0)):
        found = ", ".join(f"id {i}: {c} px" for i, c in zip(ids, counts) if i != 0)
        raise ValueError(f"the first-frame mask has no object of at least "
                         f"{config.min_label_pixels} px at {mask.shape[1]}x{mask.shape[0]} "
                         f"(min_label_pixels; {found or 'no object'})")
    ids = np.union1d(ids[kept], [0]).astype(mask.dtype)
    onehot = (mask[..., None] == ids).astype(np.float32)  # (H', W', K)
    method = "area" if config.label_resize == "area" else "bilinear"
    labels = tf.image.resize(onehot[None], feature_size(height, width, config), method=method,
                             antialias=False)
    return ids, labels[0].numpy()


@tf.function(reduce_retracing=True)
def _upsampled_argmax(soft, height, width):
    """(h, w, K) soft labels -> (height, width) channel of the largest after bilinear upsampling."""
    up = tf.image.resize(soft[None], (height, width), method="bilinear")[0]
    return tf.argmax(up, axis=-1, output_type=tf.int32)


def label_map(soft, frame_size, config):
    """(H, W) int32 label channel of each pixel from (h, w, K) soft labels on the grid.

    'bilinear': upsampled to the frame, argmax (ties to the lower channel: background).
    'bilinear_nearest': upsampled to the model input size, argmax there, then resized to the
    frame by nearest neighbour (OpenCV's).
    """
    height, width = frame_size
    soft = np.asarray(soft, np.float32)
    if config.output_resize == "bilinear":
        return _upsampled_argmax(soft, height, width).numpy()
    mh, mw = model_size(height, width, config)
    return resize_nearest(_upsampled_argmax(soft, mh, mw).numpy(), height, width, centred=False)
