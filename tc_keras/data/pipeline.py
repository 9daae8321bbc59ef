"""tf.data input pipeline: training clips and ground-truth patches (docs/METHOD.md, "Clip sampling").

From shards written by `tc_keras.data.prepare` (one tf.train.Example per video, JPEG frames):

    shard files -> shuffle -> parallel interleave of TFRecord readers -> (repeat)
      -> parse, pick a clip start, keep only the clip's JPEGs (k past + target + motion frame)
      -> shuffle clips -> decode those JPEGs, resize the short side, one random crop and flip for
         the whole clip, motion-based patch location -> batch -> cut the patches -> prefetch

Each element is a dict (k = num_past, C = crop_size, P = patch_size):
    past    float32 (B, k, C, C, 3)  frames s, s+g, ..., s+(k-1)g, oldest first; ImageNet-normalised
    target  float32 (B, C, C, 3)     frame s + target_offset, normalised
    patch   float32 (B, P, P, 3)     the patch of `target` that the cycle starts from
    theta   float32 (B, 2, 3)        affine_sample(target, theta, P, P) == patch (tc_keras.ops)

Randomness comes from stateless ops seeded per clip from `tf.data.Dataset.random`, so with
`deterministic=True` and a seed every iteration yields the same batches, whatever the parallelism.
"""

import math

import tensorflow as tf

from tc_keras import ops as tc_ops
from tc_keras.data import clip_layout, shard_files

# Clips (docs/METHOD.md, "Training data and schedule"; frame offsets: clip_layout): the short side
# resized to 256 before the crop; the patch rotated by up to 45 degrees.
RESIZE_SHORT = 256
MAX_ROTATION_DEG = 45.0
SHUFFLE_BUFFER = 512
# Reference code: candidate windows of 78 px in a 240 px crop on a 7 x 7 grid, the patch drawn
# among the 10 with most motion, its centre jittered by up to 1/12 of the frame (docs/METHOD.md, "Patch location").
MOTION_WINDOW_FRACTION = 78.0 / 240.0
MOTION_GRID = 7
MOTION_TOP_K = 10
JITTER_FRACTION = 1.0 / 12.0
# The motion frame is 2 frames after the target (docs/METHOD.md, "Patch location").
MOTION_FRAME_GAP = 2
# Sub-seeds drawn per clip (start, crop y, crop x, flip, tie-break, choice, jitter, angle).
_NUM_SEEDS = 8

_FEATURES = dict(
    frames=tf.io.VarLenFeature(tf.string),
    num_frames=tf.io.FixedLenFeature([], tf.int64),
)


def clip_offsets(num_frames, num_past=tc_ops.NUM_PAST, frame_gap=clip_layout.FRAME_GAP,
                 target_offset=clip_layout.TARGET_OFFSET):
    """Frame offsets of a clip relative to its start: (num_past + 1,) int32, target last.

    Nominally [0, g, ..., (k-1)g, target_offset]. A video with fewer than target_offset + 1
    frames gets the offsets scaled by (num_frames - 1) / target_offset, rounded, then made strictly
    increasing and kept inside the video (needs num_frames >= num_past + 1).
    """
    num_frames = tf.cast(num_frames, tf.int32)
    nominal = tf.constant([i * frame_gap for i in range(num_past)] + [target_offset], tf.float32)
    count = num_past + 1
    scale = tf.minimum(1.0, tf.cast(num_frames - 1, tf.float32) / float(target_offset))
    rounded = tf.cast(tf.round(nominal * scale), tf.int32)
    index = tf.range(count, dtype=tf.int32)
    # Smallest strictly increasing sequence >= rounded: o_j = j + max_{i<=j}(r_i - i).
    rising = index + tf.scan(tf.maximum, rounded - index)
    # Capped so the last offsets still fit: o_j <= n - count + j. The minimum of two strictly
    # increasing sequences is strictly increasing.
    return tf.minimum(rising, num_frames - count + index)


def _select_clip(record, seed, num_past, frame_gap, target_offset):
    """Parses one video record -> (the clip's JPEGs (k + 2,), seed, whether the video is usable).

    A video with fewer than k + 1 frames is unusable (filtered out afterwards); its JPEGs are
    then placeholders so that nothing here fails.
    """
    jpegs = video_jpegs(record)  # (num_frames,)
    n = tf.shape(jpegs)[0]
    usable = n >= num_past + 1
    offsets = clip_offsets(n, num_past, frame_gap, target_offset)
    seeds = tf.random.experimental.stateless_split(seed, _NUM_SEEDS)
    start = tf.random.stateless_uniform([], seeds[0], 0, tf.maximum(1, n - offsets[-1]),
                                        dtype=tf.int32)
    indices = start + offsets  # (k + 1,)
    target = indices[-1]
    # Motion frame: the frame MOTION_FRAME_GAP later, else the last frame after the target, else
    # the frame before the target.
    motion = tf.where(target + 1 < n, tf.minimum(target + MOTION_FRAME_GAP, n - 1), target - 1)
    indices = tf.concat([indices, motion[None]], 0)  # (k + 2,)
    indices = tf.clip_by_value(indices, 0, tf.maximum(n - 1, 0))
    padded = tf.concat([jpegs, [b""]], 0)  # never empty
    return tf.gather(padded, indices), seed, usable


def _motion_theta(target, moved, seeds, crop_size, max_rotation):
    """Ground-truth theta (2, 3) of a patch placed where `target` and `moved` differ most."""
    diff = tf.reduce_mean(tf.abs(target - moved), axis=-1)  # (C, C)
    window = int(round(crop_size * MOTION_WINDOW_FRACTION))
    # Integral image with a zero row and column in front: box sums in O(1).
    integral = tf.pad(tf.cumsum(tf.cumsum(diff, 0), 1), [[1, 0], [1, 0]])
    lows = [int(round(i * (crop_size - window) / (MOTION_GRID - 1))) for i in range(MOTION_GRID)]
    y0, x0 = tf.meshgrid(lows, lows, indexing="ij")
    y0, x0 = tf.reshape(y0, [-1]), tf.reshape(x0, [-1])  # (G*G,)
    y1, x1 = y0 + window, x0 + window

    def at(y, x):
        return tf.gather_nd(integral, tf.stack([y, x], -1))

    score = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)  # (G*G,)
    # Tiny noise breaks ties (e.g. a static clip) at random instead of towards the top-left.
    score += tf.random.stateless_uniform(tf.shape(score), seeds[4], 0.0, 1e-3)
    _, best = tf.math.top_k(score, k=MOTION_TOP_K)
    pick = tf.random.stateless_uniform([], seeds[5], 0, MOTION_TOP_K, dtype=tf.int32)
    cell = best[pick]
    centre = tf.cast(tf.stack([x0[cell], y0[cell]]), tf.float32) + window / 2.0  # (x, y) pixels
    centre += tf.random.stateless_uniform([2], seeds[6], -1.0, 1.0) * crop_size * JITTER_FRACTION
    angle = tf.random.stateless_uniform([], seeds[7], -1.0, 1.0) * max_rotation
    # Keep the rotated patch inside the frame: its half extent is s (|cos a| + |sin a|).
    extent = tc_ops.PATCH_SCALE * (tf.abs(tf.cos(angle)) + tf.abs(tf.sin(angle)))
    t = tf.clip_by_value(2.0 * centre / crop_size - 1.0, -1.0 + extent, 1.0 - extent)
    return tc_ops.theta_from_params(t[0], t[1], angle)


def _make_clip(jpegs, seed, num_past, crop_size, resize_short, max_rotation):
    """JPEGs (k + 2,) -> dict(past, target, theta) with one crop and flip for the whole clip."""
    seeds = tf.random.experimental.stateless_split(seed, _NUM_SEEDS)
    frames = decode_frames(jpegs, num_past + 2, resize_short, crop_size)  # (k + 2, H, W, 3)
    shape = tf.shape(frames)
    new_h, new_w = shape[1], shape[2]
    top = tf.random.stateless_uniform([], seeds[1], 0, new_h - crop_size + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[2], 0, new_w - crop_size + 1, dtype=tf.int32)
    frames = frames[:, top:top + crop_size, left:left + crop_size, :]
    flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
    frames = tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
    frames = tf.ensure_shape(frames, [num_past + 2, crop_size, crop_size, 3])
    theta = _motion_theta(frames[num_past], frames[num_past + 1], seeds, crop_size, max_rotation)
    normalized = tc_ops.normalize_frames(frames[:num_past + 1])
    return dict(past=normalized[:num_past], target=normalized[num_past], theta=theta)


def video_jpegs(record):
    """The JPEG frames (num_frames,) tf.string of a serialized video record (a shard's example)."""
    return tf.io.parse_single_example(record, _FEATURES)["frames"].values


def decode_frames(jpegs, count, resize_short, min_size):
    """The first `count` JPEGs of `jpegs` decoded -> float32 (count, H, W, 3) in [0, 255], the short
    side resized to `resize_short` (antialiased; aspect kept, each side at least `min_size`)."""
    frames = tf.stack([tf.io.decode_jpeg(jpegs[i], channels=3) for i in range(count)])
    frames = tf.cast(frames, tf.float32)  # (count, H, W, 3) in [0, 255]
    shape = tf.shape(frames)
    h, w = shape[1], shape[2]
    ratio = resize_short / tf.cast(tf.minimum(h, w), tf.float32)
    new_h = tf.maximum(min_size, tf.cast(tf.round(tf.cast(h, tf.float32) * ratio), tf.int32))
    new_w = tf.maximum(min_size, tf.cast(tf.round(tf.cast(w, tf.float32) * ratio), tf.int32))
    return tf.cond(
        tf.logical_and(tf.equal(new_h, h), tf.equal(new_w, w)),
        lambda: frames,
        lambda: tf.clip_by_value(
            tf.image.resize(frames, tf.stack([new_h, new_w]), antialias=True), 0.0, 255.0))


def clip_seeds(seed, deterministic):
    """One (2,) int64 seed per clip, for stateless ops (see the module docstring)."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=not deterministic)
    return seeds.batch(2, drop_remainder=True)


def _add_patch(batch, patch_size):
    batch["patch"] = tc_ops.affine_sample(batch["target"], batch["theta"], patch_size, patch_size)
    return batch


def video_records(files, *, shuffle=True, seed=None, deterministic=False, repeat=True,
                  input_context=None):
    """Serialized per-video tf.train.Examples from shard files, read in parallel.

    Under a tf.distribute input context the files are split between input pipelines; with fewer
    files than pipelines, every pipeline reads all files and keeps every n-th record.
    """
    files = list(files)
    record_shard = None
    if input_context is not None and input_context.num_input_pipelines > 1:
        n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
        if len(files) >= n:
            files = files[i::n]
        else:
            record_shard = (n, i)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=not deterministic)
    if repeat:
        ds = ds.repeat()

    def read(path):
        records = tf.data.TFRecordDataset(path)
        return records.shard(*record_shard) if record_shard else records

    return ds.interleave(read, cycle_length=min(len(files), 16), block_length=1,
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def clip_dataset(shards, *, batch_size, num_past=tc_ops.NUM_PAST, frame_gap=clip_layout.FRAME_GAP,
                 target_offset=clip_layout.TARGET_OFFSET, crop_size=tc_ops.CROP_SIZE,
                 resize_short=RESIZE_SHORT, patch_size=None, max_rotation_deg=MAX_ROTATION_DEG,
                 rotation_scale=None, shuffle_buffer=SHUFFLE_BUFFER, seed=None,
                 deterministic=False, repeat=True, input_context=None):
    """Batches of training clips (see the module docstring for the element structure).

    Args:
      shards: shard folder, manifest.jsonl, glob, shard file, or a list of them.
      batch_size: clips per batch (per replica under a strategy); incomplete batches are dropped.
      num_past: k, context frames before the target (paper: 4).
      frame_gap: frames between context frames (paper: 2 at 12 fps).
      target_offset: target frame = clip start + target_offset (paper: 15).
      crop_size: side of the square crop shared by the clip (paper: 240).
      resize_short: the short side is resized to this before cropping (paper: 256).
      patch_size: patch side P; default round(crop_size / 3) (80 for 240).
      max_rotation_deg: patch rotation is uniform in +-this (paper: 45).
      rotation_scale: optional scalar float32 tf.Variable in [0, 1], read for every clip: the
        rotation range is then +-rotation_scale * max_rotation_deg (a ramp; see tc_keras.train.trainer).
      shuffle_buffer: clips in the shuffle buffer (each holds k + 2 JPEGs, not decoded frames).
      seed: base seed; None = random.
      deterministic: same batches on every iteration (needs a seed); keeps element order in the
        parallel stages.
      repeat: repeat the shards forever (one clip per video per pass).
      input_context: tf.distribute.InputContext for per-replica input pipelines.
    Returns:
      tf.data.Dataset of dict(past, target, patch, theta).
    """
    if deterministic and seed is None:
        raise ValueError("clip_dataset: deterministic=True needs a seed")
    if resize_short < crop_size:
        raise ValueError(f"clip_dataset: resize_short={resize_short} must be >= "
                         f"crop_size={crop_size}")
    if patch_size is None:
        patch_size = tc_ops.patch_size(crop_size)
    files = shard_files.resolve_shards(shards)
    if input_context is not None and seed is not None:
        seed = seed + 1_000_003 * input_context.input_pipeline_id
    records = video_records(files, shuffle=True, seed=seed, deterministic=deterministic,
                            repeat=repeat, input_context=input_context)
    ds = tf.data.Dataset.zip((records, clip_seeds(seed, deterministic)))
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.map(lambda r, s: _select_clip(r, s, num_past, frame_gap, target_offset), **parallel)
    ds = ds.filter(lambda jpegs, s, usable: usable)
    ds = ds.map(lambda jpegs, s, usable: (jpegs, s))
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=not deterministic)
    max_rotation = math.radians(max_rotation_deg)

    def rotation():  # read when each clip is made: `rotation_scale` may change (a ramp)
        scale = 1.0 if rotation_scale is None else tf.cast(rotation_scale, tf.float32)
        return max_rotation * scale

    ds = ds.map(lambda j, s: _make_clip(j, s, num_past, crop_size, resize_short,
                                        rotation()),
                **parallel)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda b: _add_patch(b, patch_size), **parallel)
    return ds.prefetch(tf.data.AUTOTUNE)


def distributed_clip_dataset(strategy, shards, global_batch_size, make=clip_dataset, **kwargs):
    """Per-replica clip datasets under `strategy` (a tf.distribute.DistributedDataset).

    Each input pipeline reads its own subset of the shard files (or of the records, with fewer
    files than pipelines) with batch size global_batch_size / replicas. `make`: the dataset
    function (`clip_dataset`, or `walk_clips.walk_clip_dataset`); kwargs: its arguments.
    """
    def dataset_fn(input_context):
        batch = input_context.get_per_replica_batch_size(global_batch_size)
        return make(shards, batch_size=batch, input_context=input_context, **kwargs)

    return strategy.distribute_datasets_from_function(dataset_fn)
