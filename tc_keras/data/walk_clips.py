"""tf.data clips of the contrastive random walk (docs/METHOD.md, "Contrastive random walk").

From the same shards as TimeCycle's clips, read and decoded by tc_keras.data.pipeline:

    shard files -> shuffle -> parallel interleave of TFRecord readers -> (repeat)
      -> parse, pick T frames g apart, keep only their JPEGs -> shuffle clips
      -> decode, resize the short side; a random resized crop of its own for every frame, and for
         every node a jittered box inside its grid window (one crop_and_resize per clip)
      -> batch -> prefetch

Each element is a dict (T = clip_len, S = crop_size, P = node_patch, N = node_grid**2):
    patches  float32 (B, T, N, P, P, 3)  nodes="patches": the node patches of each frame, row-major
                                         over the grid, ImageNet-normalised
    frames   float32 (B, T, S, S, 3)     nodes="cells": whole frames (each feature cell a node)

The reference draws every frame's crop independently (its frame transform runs on each frame
alone), and every patch's jitter too; so does this pipeline. Randomness is stateless, seeded per
clip as in tc_keras.data.pipeline, so `deterministic=True` with a seed repeats its batches.
"""

import math

import tensorflow as tf

from tc_keras import ops as tc_ops
from tc_keras.data import clip_layout, pipeline, shard_files

# The reference's frame augmentation: a random resized crop of each frame to S x S covering
# 80-95% of its area, aspect ratio (width / height) 0.7-1.3; each node's 64 px window then cut
# again by a random resized crop of 70-90% of its area, aspect 3/4-4/3, back to P x P
# (docs/METHOD.md, "Contrastive random walk").
FRAME_SCALE = (0.8, 0.95)
FRAME_RATIO = (0.7, 1.3)
PATCH_SCALE = (0.7, 0.9)
PATCH_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Sub-seeds drawn per clip (start, frame crops, patch jitter).
_NUM_SEEDS = 3


def _select(record, seed, clip_len, frame_gap):
    """One video record -> (the clip's JPEGs (T,), seed, whether the video has T frames).

    Frames s, s+g, ..., s+(T-1)g with s uniform; a shorter video gets the offsets scaled down as
    TimeCycle's clips do (pipeline.clip_offsets); under T frames it is unusable (filtered out).
    """
    jpegs = pipeline.video_jpegs(record)  # (num_frames,)
    n = tf.shape(jpegs)[0]
    usable = n >= clip_len
    # T offsets: clip_offsets' k + 1 = T offsets, the last (T-1)g after the first.
    offsets = pipeline.clip_offsets(n, clip_len - 1, frame_gap, (clip_len - 1) * frame_gap)
    seeds = tf.random.experimental.stateless_split(seed, _NUM_SEEDS)
    start = tf.random.stateless_uniform([], seeds[0], 0, tf.maximum(1, n - offsets[-1]),
                                        dtype=tf.int32)
    indices = tf.clip_by_value(start + offsets, 0, tf.maximum(n - 1, 0))
    padded = tf.concat([jpegs, [b""]], 0)  # never empty
    return tf.gather(padded, indices), seed, usable


def random_boxes(seed, count, height, width, scale, ratio):
    """`count` random resized crop boxes inside a height x width area: float32 (count, 4) as
    (top, left, box height, box width) in pixels (edges). The area is a fraction uniform in
    `scale`, the aspect width/height log-uniform in `ratio`; a side longer than the area's is cut
    to it (torchvision draws again instead); the position is uniform.

    height, width: scalars or (count,) float32 tensors."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    area = tf.random.stateless_uniform([count], seeds[0], *scale) * height * width
    log_ratio = tf.random.stateless_uniform([count], seeds[1], math.log(ratio[0]),
                                            math.log(ratio[1]))
    box_w = tf.minimum(tf.sqrt(area * tf.exp(log_ratio)), width)
    box_h = tf.minimum(tf.sqrt(area / tf.exp(log_ratio)), height)
    top = tf.random.stateless_uniform([count], seeds[2]) * (height - box_h)
    left = tf.random.stateless_uniform([count], seeds[3]) * (width - box_w)
    return tf.stack([top, left, box_h, box_w], axis=-1)


def _cut(frames, boxes, index, size):
    """Bilinear size x size samples at the centres of a size x size grid over each box.

    frames: (T, H, W, 3); boxes: (count, 4) pixel-edge boxes (top, left, h, w) inside the frame;
    index: (count,) the frame of each box. Returns (count, size, size, 3).
    """
    # Frames padded by one edge pixel, so that the outermost samples (up to half a pixel beyond
    # the centres of the border pixels) read the border instead of crop_and_resize's zeros.
    padded = tf.pad(frames, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    top, left, box_h, box_w = tf.unstack(boxes, axis=-1)
    # Sample i of a box at edge coordinate top + (i + 0.5) * h / size, i.e. pixel index
    # top + (i + 0.5) * h / size - 0.5, plus 1 for the padding; crop_and_resize puts its first
    # and last samples at y1 * (H' - 1) and y2 * (H' - 1) of the padded H'.
    first_y = top + 0.5 * box_h / size + 0.5
    last_y = top + (size - 0.5) * box_h / size + 0.5
    first_x = left + 0.5 * box_w / size + 0.5
    last_x = left + (size - 0.5) * box_w / size + 0.5
    shape = tf.cast(tf.shape(padded), tf.float32)
    hm1, wm1 = shape[1] - 1.0, shape[2] - 1.0
    normalised = tf.stack([first_y / hm1, first_x / wm1, last_y / hm1, last_x / wm1], axis=-1)
    return tf.image.crop_and_resize(padded, tf.clip_by_value(normalised, 0.0, 1.0), index,
                                    (size, size))


def _make(jpegs, seed, clip_len, crop_size, resize_short, nodes, node_patch, node_stride):
    """JPEGs (T,) -> dict(patches (T, N, P, P, 3)) or dict(frames (T, S, S, 3)), normalised."""
    seeds = tf.random.experimental.stateless_split(seed, _NUM_SEEDS)
    frames = pipeline.decode_frames(jpegs, clip_len, resize_short, crop_size)  # (T, H, W, 3)
    shape = tf.shape(frames)
    height, width = shape[1], shape[2]
    fh, fw = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    crops = random_boxes(seeds[1], clip_len, fh, fw, FRAME_SCALE, FRAME_RATIO)  # (T, 4)
    if nodes == "cells":
        out = _cut(frames, crops, tf.range(clip_len), crop_size)  # (T, S, S, 3)
        out = tf.ensure_shape(out, [clip_len, crop_size, crop_size, 3])
        return dict(frames=tc_ops.normalize_frames(tf.clip_by_value(out, 0.0, 255.0)))
    grid = tc_ops.node_grid(crop_size, node_patch, node_stride)
    n = grid * grid
    # Window corners on the S x S crop, row-major: (N, 2) as (top, left).
    corners = tf.cast(tf.stack(tf.meshgrid(tf.range(grid), tf.range(grid), indexing="ij"), -1),
                      tf.float32)
    corners = tf.reshape(corners, (n, 2)) * node_stride  # (grid, grid, 2) -> (N, 2)
    jitter = random_boxes(seeds[2], clip_len * n, float(node_patch), float(node_patch),
                          PATCH_SCALE, PATCH_RATIO)
    jitter = tf.reshape(jitter, (clip_len, n, 4))  # (T*N, 4) -> (T, N, 4)
    # The jittered box on the crop, then on the decoded frame through the frame's crop box.
    on_crop = tf.concat([corners[None] + jitter[..., :2], jitter[..., 2:]], axis=-1)  # (T, N, 4)
    crop = crops[:, None, :]  # (T, 1, 4)
    scale = crop[..., 2:] / crop_size  # (T, 1, 2): source pixels per crop pixel (y, x)
    on_frame = tf.concat([crop[..., :2] + on_crop[..., :2] * scale, on_crop[..., 2:] * scale], -1)
    index = tf.repeat(tf.range(clip_len), n)  # (T*N,): the frame of each box
    # (T, N, 4) -> (T*N, 4) -> (T*N, P, P, 3)
    out = _cut(frames, tf.reshape(on_frame, (clip_len * n, 4)), index, node_patch)
    # (T*N, P, P, 3) -> (T, N, P, P, 3)
    out = tf.reshape(out, (clip_len, n, node_patch, node_patch, 3))
    return dict(patches=tc_ops.normalize_frames(tf.clip_by_value(out, 0.0, 255.0)))


def walk_clip_dataset(shards, *, batch_size, clip_len=tc_ops.WALK_CLIP_LEN,
                      frame_gap=clip_layout.FRAME_GAP, crop_size=tc_ops.WALK_FRAME_SIZE,
                      resize_short=pipeline.RESIZE_SHORT, nodes="patches",
                      node_patch=tc_ops.WALK_NODE_PATCH, node_stride=tc_ops.WALK_NODE_STRIDE,
                      shuffle_buffer=pipeline.SHUFFLE_BUFFER, seed=None, deterministic=False,
                      repeat=True, input_context=None):
    """Batches of walk clips (see the module docstring for the element structure).

    Args:
      shards: shard folder, manifest.jsonl, glob, shard file, or a list of them.
      batch_size: clips per batch (per replica under a strategy); incomplete batches are dropped.
      clip_len: T, frames per clip (reference: 4).
      frame_gap: frames between clip frames (at the shards' frame rate; the reference reads
        consecutive frames at 8 fps).
      crop_size: S, side of each frame's random resized crop (reference: 256).
      resize_short: the short side is resized to this first (antialiased).
      nodes: "patches" (a grid of jittered patches per frame, the reference's default) or
        "cells" (whole frames; the model takes each feature cell as a node).
      node_patch, node_stride: patch side and grid step in crop pixels (reference: 64, 32).
      shuffle_buffer, seed, deterministic, repeat, input_context: as
        `tc_keras.data.pipeline.clip_dataset`.
    Returns:
      tf.data.Dataset of dict(patches) or dict(frames).
    """
    if deterministic and seed is None:
        raise ValueError("walk_clip_dataset: deterministic=True needs a seed")
    if nodes not in tc_ops.WALK_NODES:
        raise ValueError(f"walk_clip_dataset: nodes must be one of {tc_ops.WALK_NODES}, "
                         f"got {nodes!r}")
    if clip_len < 2 or not 0 < node_patch <= crop_size or node_stride < 1:
        raise ValueError(f"walk_clip_dataset: needs clip_len >= 2 (got {clip_len}), 0 < "
                         f"node_patch <= crop_size (got {node_patch}, {crop_size}) and "
                         f"node_stride >= 1 (got {node_stride})")
    files = shard_files.resolve_shards(shards)
    if input_context is not None and seed is not None:
        seed = seed + 1_000_003 * input_context.input_pipeline_id
    records = pipeline.video_records(files, shuffle=True, seed=seed, deterministic=deterministic,
                                     repeat=repeat, input_context=input_context)
    ds = tf.data.Dataset.zip((records, pipeline.clip_seeds(seed, deterministic)))
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.map(lambda r, s: _select(r, s, clip_len, frame_gap), **parallel)
    ds = ds.filter(lambda jpegs, s, usable: usable)
    ds = ds.map(lambda jpegs, s, usable: (jpegs, s))
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=not deterministic)
    ds = ds.map(lambda j, s: _make(j, s, clip_len, crop_size, resize_short, nodes, node_patch,
                                   node_stride), **parallel)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)
