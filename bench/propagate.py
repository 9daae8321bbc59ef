r"""Propagation benchmark: s/frame end to end against the arithmetic floor, and memory over time.

  python bench/propagate.py                   # ~5 minutes on 2 CPU cores
  python bench/propagate.py --sizes 240 --depths 18 --frames 8 --long_frames 0   # quicker

1. Speed, for each encoder (random-init ResNet-18 / -50; trained weights cost the same) and each
   size (--sizes: short side in px, 0 = native 854x480), on a real DAVIS dev sequence with the
   default protocol (first + 20 previous frames, radius 12, joint top-10): frames decoded from
   JPEG (a thread ahead), propagated, the masks written as PNGs (a thread behind), as
   tools/propagate.py does. Printed: s/frame end to end (after 2 warm-up frames), the time in the
   encoder (resize + embed) and in the label step, the rest (decoding, writing, upsampling the
   labels: mostly overlapped), and the arithmetic floor: the FLOPs of the encoder (counted by
   TensorFlow's profiler on its graph) and of the label step, divided by the FLOP/s of a float32
   4096^2 matmul measured in the same process. The label step's FLOPs are given two ways:
   `exact`, the products the protocol needs (every query against the first frame, and against
   the keys within the radius in the 20 others); `tiled`, what `vote_local` computes (each tile
   of queries against its whole key region).
2. Memory: RSS after 50 frames and after --long_frames frames of one stream (generated 480p
   frames propagated at --memory_size): it must not grow with the video length.

Figures only; nothing is asserted.
"""

import concurrent.futures
import dataclasses
import os
import pathlib
import resource
import shutil
import sys
import time

from tc_keras import cli  # noqa: F401 (first: quiets TensorFlow's start-up)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tc_keras.propagation import context as context_lib  # noqa: E402
from tc_keras.export import encoder_io  # noqa: E402
from tc_keras.data import label_io  # noqa: E402
from tc_keras.propagation import propagate as prop  # noqa: E402
from tc_keras.propagation import presets  # noqa: E402
from tc_keras.data import davis, video  # noqa: E402
from tc_keras.propagation.tiles import local_tiles, radius_mask  # noqa: E402

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


def matmul_flops_per_second(n=4096, repeats=5):
    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    float(mm(a, b))
    best = min(_timed(lambda: float(mm(a, b))) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def encoder_flops(encoder, height, width):
    """FLOPs of one frame through the encoder, counted by TF's profiler on the traced graph."""
    graph = tf.function(lambda x: encoder(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, height, width, 3), tf.float32)).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops


def label_step_flops(h, w, config, channels):
    """(exact, tiled) FLOPs of one label step: 2 C per query-key product."""
    n, short = h * w, config.context
    if config.radius is None or not short:
        dense = 2 * channels * n * n * (1 + short)
        return dense, dense
    exact = n * n + short * int(radius_mask(h, w, config.radius).sum())
    tiles = local_tiles(h, w, config.radius)
    t, p = tiles.query_index.shape
    tiled = t * p * (n + short * tiles.key_index.shape[1])
    return 2 * channels * exact, 2 * channels * tiled


def bench_speed(depth, size, peak, frames):
    config = dataclasses.replace(presets.PRESETS[_PRESET.value], size=size or None)
    seq = pathlib.Path(_DAVIS.value) / davis.IMAGES / _SEQUENCE.value
    ids, fmt = label_io.read_mask(pathlib.Path(_DAVIS.value) / davis.ANNOTATIONS
                                  / _SEQUENCE.value / "00000.png")
    model = encoder_io.load_encoder_model("random", depth)
    embed = Timed(encoder_io.make_embed(model))
    steps = []

    class TimedContext(context_lib.Context):  # the label step, timed
        def __init__(self, *args):
            super().__init__(*args)
            self.step = Timed(self.step)
            steps.append(self.step)

    prop.Context, original = TimedContext, prop.Context
    out = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_propagate_{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    write = Timed(lambda path, mask: label_io.write_mask(path, mask, fmt))
    try:
        frames_in = video.prefetched(video.iter_frames(seq))
        stream = prop.propagate_mask(frames_in, ids, embed, config)
        for t, (frame, mask) in zip(range(2), stream):  # frame 0 and the traced first step
            write(out / "warm.png", mask)
        embed.seconds = steps[0].seconds = write.seconds = 0.0
        with concurrent.futures.ThreadPoolExecutor(1) as writer:  # as the tool: a thread behind
            start = time.perf_counter()
            count = 0
            for _, mask in stream:
                writer.submit(write, out / f"{count:05d}.png", mask)
                count += 1
                if count == frames:
                    break
        total = (time.perf_counter() - start) / count
    finally:
        frames_in.close()  # the decoding thread stops here, not at garbage collection
        prop.Context = original
        shutil.rmtree(out, ignore_errors=True)
    first = next(video.iter_frames(seq))
    mh, mw = presets.model_size(*first.shape[:2], config)
    enc = encoder_flops(model, mh, mw)
    exact, tiled = label_step_flops(mh // 8, mw // 8, config, model.output_shape[-1])
    e, s = embed.seconds / count, steps[0].seconds / count
    floor, floor_tiled = (enc + exact) / peak, (enc + tiled) / peak
    name = f"ResNet-{depth} {'native 480p' if not size else f'size {size}'} ({mh}x{mw})"
    print(f"{name}: {total:.3f} s/frame end to end over {count} frames | encoder {e:.3f} "
          f"({100 * e / total:.0f}%), label step {s:.3f} ({100 * s / total:.0f}%), rest "
          f"{total - e - s:.3f} (writing PNGs, {write.seconds / count:.3f}, overlaps) | FLOPs: "
          f"encoder {enc / 1e9:.1f} G, label step exact {exact / 1e9:.1f} G / tiled "
          f"{tiled / 1e9:.1f} G | floor {floor:.3f} s (x{total / floor:.1f}), tiled floor "
          f"{floor_tiled:.3f} s (x{total / floor_tiled:.1f})", flush=True)


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
        sys.exit(f"error: {_DAVIS.value}: no {davis.IMAGES}/{_SEQUENCE.value} (the DAVIS dev data)")
    peak = matmul_flops_per_second()
    print(f"{os.cpu_count()} CPUs; float32 4096^2 matmul {peak / 1e9:.1f} GFLOP/s; DAVIS "
          f"{_SEQUENCE.value}, preset {_PRESET.value}", flush=True)
    for size in (int(s) for s in _SIZES.value):
        for depth in (int(d) for d in _DEPTHS.value):
            bench_speed(depth, size, peak, _FRAMES.value if size else max(2, _FRAMES.value // 2))
    if _LONG_FRAMES.value >= 50:
        bench_memory(presets.PRESETS[_PRESET.value])


if __name__ == "__main__":
    app.run(main)
