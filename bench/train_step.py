"""Train-step speed: s/clip in float32 and bfloat16 for ResNet-18 and ResNet-50, with the reference
code's BatchNorm batches and the joint one, the achieved share of the matmul FLOP/s, and where the
time goes.

    python bench/train_step.py                       # batch 2, 240 px, 4 past frames (~12 minutes)
    python bench/train_step.py --encoders resnet18 --precisions float32 --steps 2

For each encoder and precision (`mixed_bfloat16`: bfloat16 encoder, float32 tracker, as
`--mixed_precision`): builds one TimeCycle per `--bn_groups` value (`separate`, the reference
code's three encoder batches, and `joint`, past and target frames as one; see TimeCycle), runs 2
warm-up steps of each (tracing), then times `--steps` rounds of the compiled `train_step` on a
fixed random batch (data loading excluded), one step of each grouping per round (in turn first)
after one untimed round, so that a busy machine slows both alike: their ratio is the steadier
figure.
FLOPs of one step (forward, backward, update) are counted by TensorFlow's profiler on the traced
step. The achieved FLOP/s are divided by the FLOP/s of a float32 4096^2 matmul measured in the
same run by TensorFlow and, when torch is installed (the test extra), by PyTorch (2 threads, in a
child process: the two runtimes' thread pools are not mixed). Issue 15's target: the ResNet-50
float32 step (reference BatchNorm batches) at >= 0.86 of PyTorch's matmul FLOP/s (the official
PyTorch code's step ran at 0.69 of it; 0.86 is 0.8x its time per clip). Then a TensorFlow profile of `--profile_steps` ResNet-50 float32 steps
(the default grouping): the ops that take the most time. Figures only; no asserts.
"""

import collections
import json
import os
import pathlib
import tempfile
import time

import peak_flops
from absl import flags

from tc_keras import cli

flags.DEFINE_list("encoders", ["resnet18", "resnet50"], "Encoders to time.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras dtype policies to time.")
flags.DEFINE_list("bn_groups", ["separate", "joint"], "TimeCycle bn_groups values to time "
                  "(interleaved).")
flags.DEFINE_integer("batch_size", 2, "Clips per step.")
flags.DEFINE_integer("crop_size", 240, "Crop size (px).")
flags.DEFINE_integer("num_past", 4, "Past frames per clip.")
flags.DEFINE_integer("steps", 3, "Timed steps of each grouping (after 2 warm-up steps).")
flags.DEFINE_integer("profile_steps", 2, "ResNet-50 float32 steps profiled for the op table "
                     "(0 = no profile).")
flags.DEFINE_integer("top_ops", 15, "Rows of the op table.")
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
    """Float operations of one traced train step, counted by TensorFlow's profiler."""
    import tensorflow as tf

    spec = {k: tf.TensorSpec(v.shape, tf.float32) for k, v in batch.items()}
    graph = tf.function(model.train_step).get_concrete_function(spec).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops


def build(depth, precision, batch_size, crop_size, num_past, bn_groups="separate"):
    import keras
    import tensorflow as tf

    from tc_keras.model.timecycle import TimeCycle

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = TimeCycle(depth=depth, num_past=num_past, crop_size=crop_size, bn_groups=bn_groups)
    model.build_from_crop()
    model.compile()
    batch = random_batch(batch_size, crop_size, num_past)
    return model, batch, {k: tf.constant(v) for k, v in batch.items()}


def time_train_steps(depth, precision="float32", batch_size=2, crop_size=240, num_past=4,
                     steps=3, bn_groups=("separate", "joint")):
    """{grouping: dict(seconds_per_step, seconds_per_clip, flops_per_step, loss)} for one encoder
    and policy; the groupings' steps are timed in turn, one of each per round."""
    import tensorflow as tf

    runs = {}
    for groups in bn_groups:
        model, batch, tensors = build(depth, precision, batch_size, crop_size, num_past, groups)
        step = tf.function(model.train_step)
        for _ in range(2):
            logs = step(tensors)
        float(logs["loss"])
        runs[groups] = (model, batch, tensors, step)
    seconds, loss = dict.fromkeys(runs, 0.0), {}
    # One round more, untimed: the first step of a model after another model's warm-up is slower
    # (seen: 4x for ResNet-18 on CPU).
    for round_ in range(steps + 1):
        order = list(runs.items())
        for groups, (_, _, tensors, step) in order if round_ % 2 else order[::-1]:
            start = time.perf_counter()
            loss[groups] = float(step(tensors)["loss"])
            seconds[groups] += (time.perf_counter() - start) * (round_ > 0)
    out = {}
    for groups, (model, batch, _, _) in runs.items():
        per_step = seconds[groups] / steps
        out[groups] = dict(seconds_per_step=per_step, seconds_per_clip=per_step / batch_size,
                           flops_per_step=step_flops(model, batch), loss=loss[groups])
    return out


def op_table(depth, steps, batch_size, crop_size, num_past, rows):
    """[(op type, seconds per step, share)] of `steps` profiled float32 steps, summed over threads."""
    import tensorflow as tf
    # The profile is written as XSpace protos; TensorFlow ships the proto module under tsl but no
    # public reader of it (TensorBoard's profile plugin is not a dependency): read it directly.
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    model, _, tensors = build(depth, "float32", batch_size, crop_size, num_past)
    step = tf.function(model.train_step)
    for _ in range(2):
        float(step(tensors)["loss"])
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            logs = step(tensors)
        float(logs["loss"])
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(pathlib.Path(logdir).rglob("*.xplane.pb")).read_bytes())
    by_type = collections.Counter()
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # TensorFlow's op executor threads
                continue
            for event in line.events:
                name = names[event.metadata_id].name  # "<op name>:<op type>"
                if ":" in name and not name.startswith("ExecutorState"):
                    by_type[name.rsplit(":", 1)[1]] += event.duration_ps
    total = sum(by_type.values())
    return [(op, ps / 1e12 / steps, ps / total) for op, ps in by_type.most_common(rows)], \
        total / 1e12 / steps


def main(argv):
    del argv
    import tensorflow as tf

    f = flags.FLAGS
    torch_peak = peak_flops.torch_matmul_flops_per_second(f.matmul_size)
    peak = peak_flops.matmul_flops_per_second(f.matmul_size)
    print(f"\ntrain step benchmark: {os.cpu_count()} CPUs, TF {tf.__version__}, batch "
          f"{f.batch_size} clips, {f.num_past} past frames, {f.crop_size} px crop")
    print(f"  float32 {f.matmul_size}^2 matmul: TensorFlow {peak / 1e9:.1f} GFLOP/s, PyTorch "
          + ("not installed" if torch_peak is None else f"{torch_peak / 1e9:.1f} GFLOP/s"))
    print(f"  {'encoder':<10} {'policy':<15} {'BN batches':<10} {'s/step':>7} {'s/clip':>7} "
          f"{'GFLOP/step':>11} {'GFLOP/s':>8} {'/TF mm':>7} {'/torch mm':>10}")
    results = dict(tf_matmul=peak, torch_matmul=torch_peak, steps={}, separate_over_joint={})
    for name in f.encoders:
        for precision in f.precisions:
            runs = time_train_steps(int(name.replace("resnet", "")), precision, f.batch_size,
                                    f.crop_size, f.num_past, f.steps, f.bn_groups)
            for groups, r in runs.items():
                achieved = r["flops_per_step"] / r["seconds_per_step"]
                r.update(achieved=achieved, of_tf_matmul=achieved / peak,
                         of_torch_matmul=None if torch_peak is None else achieved / torch_peak)
                results["steps"][f"{name} {precision} {groups}"] = r
                torch_ratio = "-" if torch_peak is None else f"{achieved / torch_peak:.2f}"
                print(f"  {name:<10} {precision:<15} {groups:<10} {r['seconds_per_step']:7.2f} "
                      f"{r['seconds_per_clip']:7.2f} {r['flops_per_step'] / 1e9:11.1f} "
                      f"{achieved / 1e9:8.1f} {achieved / peak:7.2f} {torch_ratio:>10}",
                      flush=True)
            if {"separate", "joint"} <= set(runs):
                ratio = runs["separate"]["seconds_per_step"] / runs["joint"]["seconds_per_step"]
                results["separate_over_joint"][f"{name} {precision}"] = ratio
                print(f"  {name:<10} {precision:<15} separate / joint s/step: {ratio:.3f} "
                      "(interleaved steps, one run)", flush=True)
    target = results["steps"].get("resnet50 float32 separate")
    if torch_peak is not None and target:
        print(f"  target (issue 15): ResNet-50 float32 at >= 0.86 of PyTorch's matmul: "
              f"{target['of_torch_matmul']:.2f}")
    if f.profile_steps:
        rows, total = op_table(50, f.profile_steps, f.batch_size, f.crop_size, f.num_past,
                               f.top_ops)
        print(f"\n  ResNet-50 float32 step, TensorFlow profile: op time summed over the executor "
              f"threads {total:.2f} s/step")
        for op, seconds, share in rows:
            print(f"    {op:<36} {seconds:7.3f} s/step {100 * share:5.1f}%")
        results["ops"] = rows
    if f.json:
        pathlib.Path(f.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    cli.run(main)
