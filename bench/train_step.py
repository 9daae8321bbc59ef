"""Train-step speed: seconds per clip for ResNet-18 and ResNet-50, and the achieved share of peak.

    python bench/train_step.py                          # 240 px, 4 past frames, batch 4
    python bench/train_step.py --batch_size 2 --steps 3 --encoders resnet18

For each encoder: builds TimeCycle, runs warm-up steps (tracing), then times `--steps` optimizer
steps of `model.train_step` on a fixed random batch (data loading excluded). FLOPs of one step are
counted by TensorFlow's profiler on the traced step graph (forward, backward and update); achieved
FLOP/s = FLOPs / seconds. In the same process, a large float32 matmul gives the machine's
practical peak FLOP/s; the ratio of the two is printed. Figures only; no asserts.
"""

import json
import os
import pathlib
import time

from absl import app, flags

flags.DEFINE_list("encoders", ["resnet18", "resnet50"], "Encoders to time.")
flags.DEFINE_integer("batch_size", 4, "Clips per step.")
flags.DEFINE_integer("crop_size", 240, "Crop size (px).")
flags.DEFINE_integer("num_past", 4, "Past frames per clip.")
flags.DEFINE_integer("steps", 5, "Timed steps (after 2 warm-up steps).")
flags.DEFINE_integer("matmul_size", 4096, "Side of the square matmul for peak FLOP/s.")
flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")


def random_batch(batch_size, crop_size, num_past, seed=0):
    import numpy as np

    from tc_keras import ops as tops

    rng = np.random.default_rng(seed)
    p = tops.patch_size(crop_size)
    target = rng.normal(size=(batch_size, crop_size, crop_size, 3)).astype(np.float32)
    theta = np.tile(np.array([[1 / 3, 0, 0.1], [0, 1 / 3, -0.1]], np.float32), (batch_size, 1, 1))
    return {"past": rng.normal(size=(batch_size, num_past, crop_size, crop_size, 3)).astype(np.float32),
            "target": target, "theta": theta,
            "patch": np.asarray(tops.affine_sample(target, theta, p, p))}


def step_flops(model, batch):
    """Float operations of one traced train step, counted by the TF profiler."""
    import tensorflow as tf

    spec = {k: tf.TensorSpec(v.shape, tf.float32) for k, v in batch.items()}
    graph = tf.function(model.train_step).get_concrete_function(spec).graph
    profiler = tf.compat.v1.profiler
    opts = profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return profiler.profile(graph, options=opts).total_float_ops


def time_train_step(depth, batch_size=4, crop_size=240, num_past=4, steps=5):
    """dict(seconds_per_step, seconds_per_clip, flops_per_step) for one encoder depth."""
    import tensorflow as tf

    from tc_keras.model import TimeCycle

    model = TimeCycle(depth=depth, num_past=num_past, crop_size=crop_size)
    model.build_from_crop()
    model.compile()
    batch = random_batch(batch_size, crop_size, num_past)
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    step = tf.function(model.train_step)
    for _ in range(2):
        logs = step(tensors)
    float(logs["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        logs = step(tensors)
    float(logs["loss"])
    seconds = (time.perf_counter() - start) / steps
    return dict(seconds_per_step=seconds, seconds_per_clip=seconds / batch_size,
                flops_per_step=step_flops(model, batch))


def matmul_flops_per_second(n=4096, repeats=5):
    """Practical peak: float32 n x n matmul FLOP/s (2 n^3 per product), best of `repeats`."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    float(mm(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        float(mm(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def main(argv):
    del argv
    import tensorflow as tf

    f = flags.FLAGS
    peak = matmul_flops_per_second(f.matmul_size)
    print(f"\ntrain step benchmark: {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"batch {f.batch_size} clips, {f.num_past} past frames, {f.crop_size} px crop")
    print(f"  float32 {f.matmul_size}^2 matmul: {peak / 1e9:8.1f} GFLOP/s (practical peak)")
    print(f"  {'encoder':<10} {'s/step':>8} {'s/clip':>8} {'GFLOP/step':>11} "
          f"{'GFLOP/s':>8} {'of peak':>8}")
    results = {}
    for name in f.encoders:
        r = time_train_step(int(name.replace("resnet", "")), f.batch_size, f.crop_size,
                            f.num_past, f.steps)
        achieved = r["flops_per_step"] / r["seconds_per_step"]
        results[name] = dict(r, achieved_flops_per_second=achieved, of_peak=achieved / peak)
        print(f"  {name:<10} {r['seconds_per_step']:8.2f} {r['seconds_per_clip']:8.2f} "
              f"{r['flops_per_step'] / 1e9:11.1f} {achieved / 1e9:8.1f} {achieved / peak:8.2f}")
    if f.json:
        pathlib.Path(f.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)
