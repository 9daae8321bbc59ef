r"""Propagation benchmark: s/frame end to end against the arithmetic floor, per stage, the label
step before and after issue 22 in the same process, and memory over time.

  python bench/propagate.py --davis_root ../shared/data/davis2016-dev    # ~10 min on 2 cores
  python bench/propagate.py --sizes 240 --depths 18 --frames 8 --long_frames 0   # quicker

1. Speed, for each encoder (random-init ResNet-18 / -50; trained weights cost the same) and each
   size (--sizes: short side in px, 0 = native 854x480), on a real DAVIS dev sequence with the
   default protocol (first + 20 previous frames, radius 12, joint top-10): frames decoded from
   JPEG (a thread ahead), propagated, the masks written as PNGs (a thread behind), as
   tools/propagate.py does. Each configuration runs with the label steps of today
   (`context.KERAS`: key windows, `window_step`), of before (`vote_local` over square key
   regions, what commit b9206ce ran) and today's with the opt-in bfloat16 affinity
   (`context.KERAS_BFLOAT16`, --bfloat16), --repeats times each, alternating, in this process;
   the float32 4096^2 matmul rate is measured right before each configuration.
   Printed per run: s/frame end to end (after 2 warm-up frames) and the process's CPU s/frame;
   the time in the encoder (resize + embed) and in the label step, each against its own floor
   (its FLOPs at the matmul rate); the rest (decoding, writing, upsampling the labels: mostly
   overlapped); the end-to-end time against the exact floor. FLOPs: the encoder's counted by
   TensorFlow's profiler on its graph; the label step's `exact`, the products the protocol needs
   (every query against the first frame, and against the keys within the radius in the 20
   others), and `computed`, what the step's matmuls do (square regions of `vote_local`, or the
   key tiles against their windows, padding and bias channels included).
2. Memory: RSS after 50 frames and after --long_frames frames of one stream (generated 480p
   frames propagated at --memory_size): it must not grow with the video length.

Figures only; nothing is asserted. The machine may be shared: read wall-clock figures with the
CPU column beside them, and ratios taken within one run.
"""

from tc_keras import cli

cli.quiet_tensorflow()  # before the imports below load TensorFlow (see tc_keras/cli.py)

import concurrent.futures
import dataclasses
import os
import pathlib
import resource
import shutil
import time

import numpy as np
import peak_flops
import tensorflow as tf
from absl import flags

from tc_keras.data import davis, label_io, video
from tc_keras.export import encoder_io
from tc_keras.propagation import context as context_lib
from tc_keras.propagation import presets
from tc_keras.propagation import propagate as prop
from tc_keras.propagation.tiles import local_tiles, radius_mask
from tc_keras.propagation.windows import key_windows

ROOT = pathlib.Path(__file__).resolve().parents[1]
_DAVIS = flags.DEFINE_string("davis_root", str(ROOT.parent / "shared" / "data" / "davis2016-dev"),
                             "DAVIS root with JPEGImages/480p and Annotations/480p.")
_SEQUENCE = flags.DEFINE_string("sequence", "blackswan", "DAVIS sequence to propagate.")
_DEPTHS = flags.DEFINE_list("depths", ["18", "50"], "ResNet depths to time.")
_SIZES = flags.DEFINE_list("sizes", ["240", "0"], "Short sides in px (0 = native 480p).")
_FRAMES = flags.DEFINE_integer("frames", 10, "Frames timed per configuration (after 2 warm-up "
                               "frames; 480p configurations time half as many).")
_PRESET = flags.DEFINE_enum("preset", "default", sorted(presets.PRESETS), "Protocol to time.")
_LONG_FRAMES = flags.DEFINE_integer("long_frames", 400, "Length of the long video (memory); 0 "
                                    "skips it.")
_MEMORY_SIZE = flags.DEFINE_integer("memory_size", 120, "Short side (px) for the memory run.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Runs of each label step per configuration.")
_BFLOAT16 = flags.DEFINE_bool("bfloat16", True, "Also time the opt-in bfloat16 affinity "
                              "(context.KERAS_BFLOAT16).")

# The label steps timed: today's, those before issue 22 (the local step over square regions), and
# today's with the opt-in bfloat16 affinity (--bfloat16).
STEPS = {"windows": context_lib.KERAS,
         "before": context_lib.LabelSteps("before", context_lib.vote, context_lib.vote_local),
         "bf16": context_lib.KERAS_BFLOAT16}


class Timed:
    """Wraps a callable and adds up its wall time (its results are forced to be computed)."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args):
        start = time.perf_counter()
        out = self.fn(*args)
        if isinstance(out, tf.Tensor):
            out = tf.identity(out)
            out.numpy()  # waits for the value
        self.seconds += time.perf_counter() - start
        return out


def encoder_flops(encoder, height, width):
    """FLOPs of one frame through the encoder, counted by TF's profiler on the traced graph."""
    graph = tf.function(lambda x: encoder(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, height, width, 3), tf.float32)).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops


def label_step_flops(h, w, config, channels, steps):
    """(exact, computed) FLOPs of one label step: 2 C per query-key product."""
    n, short = h * w, config.context
    if config.radius is None or not short:
        dense = 2 * channels * n * n * (1 + short)
        return dense, dense
    exact = n * n + short * int(radius_mask(h, w, config.radius).sum())
    if steps.windows and config.joint_topk:
        windows = key_windows(h, w, config.radius, short, context_lib.MAX_LOGITS)
        a, b = windows.tile
        slots = sum((t1 - t0) * q for t0, t1, q in windows.chunks)
        # The first frame dense; the windows against S frames of a*b keys, a*b bias channels.
        return 2 * channels * exact, 2 * channels * n * n + 2 * (channels + a * b) * (
            slots * short * a * b)
    tiles = local_tiles(h, w, config.radius)
    t, p = tiles.query_index.shape
    return 2 * channels * exact, 2 * channels * t * p * (n + short * tiles.key_index.shape[1])


def bench_speed(depth, size, steps, frames):
    """Seconds per frame: end to end, CPU, encoder, label step, PNG writing."""
    config = dataclasses.replace(presets.PRESETS[_PRESET.value], size=size or None)
    seq = pathlib.Path(_DAVIS.value) / davis.IMAGES / _SEQUENCE.value
    ids, fmt = label_io.read_mask(pathlib.Path(_DAVIS.value) / davis.ANNOTATIONS
                                  / _SEQUENCE.value / "00000.png")
    model = encoder_io.load_encoder_model("random", depth)
    embed = Timed(encoder_io.make_embed(model))
    timed = []

    class TimedContext(context_lib.Context):  # the label step, timed
        def __init__(self, *args):
            super().__init__(*args)
            self.step = Timed(self.step)
            timed.append(self.step)

    prop.Context, original = TimedContext, prop.Context
    out = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_propagate_{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    write = Timed(lambda path, mask: label_io.write_mask(path, mask, fmt))
    try:
        frames_in = video.prefetched(video.iter_frames(seq))
        stream = prop.propagate_mask(frames_in, ids, embed, config, steps)
        for t, (frame, mask) in zip(range(2), stream):  # frame 0 and the traced first step
            write(out / "warm.png", mask)
        embed.seconds = timed[0].seconds = write.seconds = 0.0
        with concurrent.futures.ThreadPoolExecutor(1) as writer:  # as the tool: a thread behind
            start, cpu = time.perf_counter(), time.process_time()
            count = 0
            for _, mask in stream:
                writer.submit(write, out / f"{count:05d}.png", mask)
                count += 1
                if count == frames:
                    break
        total = (time.perf_counter() - start) / count
        cpu = (time.process_time() - cpu) / count
    finally:
        frames_in.close()  # the decoding thread stops here, not at garbage collection
        prop.Context = original
        shutil.rmtree(out, ignore_errors=True)
    return dict(total=total, cpu=cpu, encoder=embed.seconds / count,
                step=timed[0].seconds / count, write=write.seconds / count, model=model,
                config=config)


def report(depth, size, peak, runs):
    """One line per run: each stage against its floor at the matmul rate `peak` (FLOP/s, and
    FLOP per CPU-second: the CPU time against the floor's, steadier on a shared machine)."""
    peak, peak_cpu = peak
    config, model = runs[0][1]["config"], runs[0][1]["model"]
    first = next(video.iter_frames(pathlib.Path(_DAVIS.value) / davis.IMAGES / _SEQUENCE.value))
    mh, mw = presets.model_size(*first.shape[:2], config)
    enc = encoder_flops(model, mh, mw)
    name = f"ResNet-{depth} {'native 480p' if not size else f'size {size}'} ({mh}x{mw})"
    for label, run in runs:
        exact, computed = label_step_flops(mh // 8, mw // 8, config, model.output_shape[-1],
                                           STEPS[label])
        t, e, s = run["total"], run["encoder"], run["step"]
        print(f"{name}, {label:7s}: {t:.3f} s/frame (CPU {run['cpu']:.3f}) | encoder {e:.3f} "
              f"(x{e * peak / enc:.1f} its floor) | label step {s:.3f} (x{s * peak / exact:.1f} "
              f"exact, x{s * peak / computed:.1f} computed) | rest {t - e - s:.3f} (PNGs "
              f"{run['write']:.3f}, overlap) | GFLOP encoder {enc / 1e9:.1f}, label exact "
              f"{exact / 1e9:.1f} / computed {computed / 1e9:.1f} | x{t * peak / (enc + exact):.2f}"
              f" exact floor (CPU x{run['cpu'] * peak_cpu / (enc + exact):.2f})", flush=True)


def frames(count, seed=0, height=480, width=854):
    """Generated 480p frames: a textured square translating over noise, one at a time."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    patch = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    for t in range(count):
        frame = background.copy()
        x = 100 + (3 * t) % (width - 300)
        frame[150:246, x:x + 96] = patch
        yield frame


def rss_mib():
    """Current resident set size in MiB (Linux /proc), and the peak so far."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    current = pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return current, peak


def bench_memory(config):
    config = dataclasses.replace(config, size=_MEMORY_SIZE.value, square=False)
    embed = encoder_io.load_encoder("random", 18)
    first = np.zeros((480, 854), np.uint8)
    first[150:246, 100:196] = 1
    marks = {}
    for t, _ in enumerate(prop.propagate_mask(frames(_LONG_FRAMES.value), first, embed, config),
                          start=1):
        if t in (50, _LONG_FRAMES.value):
            marks[t] = rss_mib()
    for t, (cur, peak) in marks.items():
        print(f"memory after {t:4d} frames: RSS {cur:7.1f} MiB, peak {peak:7.1f} MiB")
    (c50, p50), (cl, pl) = marks[50], marks[_LONG_FRAMES.value]
    print(f"RSS growth from frame 50 to {_LONG_FRAMES.value}: {cl - c50:+.1f} MiB "
          f"(peak {pl - p50:+.1f} MiB)")


def main(argv):
    del argv
    if not (pathlib.Path(_DAVIS.value) / davis.IMAGES / _SEQUENCE.value).is_dir():
        raise FileNotFoundError(f"{_DAVIS.value}: no {davis.IMAGES}/{_SEQUENCE.value} (the DAVIS "
                                "dev data)")
    print(f"{os.cpu_count()} CPUs; DAVIS {_SEQUENCE.value}, preset {_PRESET.value}", flush=True)
    for size in (int(s) for s in _SIZES.value):
        for depth in (int(d) for d in _DEPTHS.value):
            peak = peak_flops.matmul_rates()
            print(f"float32 4096^2 matmul {peak[0] / 1e9:.1f} GFLOP/s, {peak[1] / 1e9:.1f} GFLOP "
                  "per CPU-second", flush=True)
            count = _FRAMES.value if size else max(2, _FRAMES.value // 2)
            runs = [(label, bench_speed(depth, size, steps, count))
                    for _ in range(_REPEATS.value) for label, steps in STEPS.items()
                    if label != "bf16" or _BFLOAT16.value]
            report(depth, size, peak, runs)
    if _LONG_FRAMES.value >= 50:
        bench_memory(presets.PRESETS[_PRESET.value])


if __name__ == "__main__":
    cli.run(main)
