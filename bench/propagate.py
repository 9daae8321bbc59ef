r"""Propagation benchmark: speed at 480p and memory flatness over long videos. Prints figures.

  python bench/propagate.py                 # ~5 minutes on 2 CPU cores (PYTHONPATH=. if not
                                            # installed with pip install -e .)
  python bench/propagate.py --speed_frames 2 --long_frames 200   # quicker

1. Speed: frames/s on generated 854x480 frames (DAVIS 480p) with random-init ResNet-18 and
   ResNet-50 and the given preset (default: "default", native resolution), and the share of time
   spent in the encoder vs the label step (everything else: resizing, buffers, upsampling).
   The first frame (graph warm-up) is not timed. On CPU only a few frames are timed.
2. Memory: RSS after 50 frames and after `--long_frames` frames of one stream. Frames are 480p,
   generated on the fly, propagated at a small size (--memory_size, short side) so that hundreds of
   frames take about a minute; what is measured is whether memory grows with the video length
   (it must not: only the context is kept).
"""

import dataclasses
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from tc_keras import encoder_io  # noqa: E402
from tc_keras import propagate as prop  # noqa: E402

_PRESET = flags.DEFINE_enum("preset", "default", sorted(prop.PRESETS), "Protocol to time.")
_SPEED_FRAMES = flags.DEFINE_integer("speed_frames", 3, "Frames timed per encoder (after one "
                                     "untimed warm-up frame).")
_DEPTHS = flags.DEFINE_list("depths", ["18", "50"], "ResNet depths to time.")
_LONG_FRAMES = flags.DEFINE_integer("long_frames", 400, "Length of the long video (memory).")
_MEMORY_SIZE = flags.DEFINE_integer("memory_size", 120, "Short side (px) for the memory run.")

HEIGHT, WIDTH = 480, 854  # DAVIS 480p


def frames(count, seed=0):
    """Generated 480p frames: a textured square translating over noise, one at a time."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    patch = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    for t in range(count):
        frame = background.copy()
        x = 100 + (3 * t) % (WIDTH - 300)
        frame[150:246, x:x + 96] = patch
        yield frame


def first_mask(count=1):
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[150:246, 100:196] = 1
    return mask


def rss_mib():
    """Current resident set size in MiB (Linux /proc), and the peak so far."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    current = pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return current, peak


class TimedEmbed:
    def __init__(self, embed):
        self.embed = embed
        self.seconds = 0.0

    def __call__(self, x):
        start = time.perf_counter()
        out = np.asarray(self.embed(x))  # forces the computation
        self.seconds += time.perf_counter() - start
        return out


def bench_speed(depth, config):
    embed = TimedEmbed(encoder_io.load_encoder("random", depth))
    stream = prop.propagate_mask(frames(_SPEED_FRAMES.value + 2), first_mask(), embed, config)
    next(stream)  # frame 0: embedding only
    next(stream)  # frame 1: warm-up of the label step
    embed.seconds = 0.0
    start = time.perf_counter()
    n = 0
    for _ in stream:
        n += 1
    total = time.perf_counter() - start
    print(f"ResNet-{depth} {config_name(config)}: {n / total:.3f} frames/s ({total / n:.2f} s/frame; "
          f"encoder {100 * embed.seconds / total:.0f}%, label step and the rest "
          f"{100 * (1 - embed.seconds / total):.0f}%) over {n} frames", flush=True)


def bench_memory(config):
    config = dataclasses.replace(config, size=_MEMORY_SIZE.value, square=False)
    embed = encoder_io.load_encoder("random", 18)
    marks = {}
    for t, _ in enumerate(prop.propagate_mask(frames(_LONG_FRAMES.value), first_mask(), embed,
                                              config), start=1):
        if t in (50, _LONG_FRAMES.value):
            marks[t] = rss_mib()
    for t, (cur, peak) in marks.items():
        print(f"memory after {t:4d} frames: RSS {cur:7.1f} MiB, peak {peak:7.1f} MiB")
    (c50, p50), (cl, pl) = marks[50], marks[_LONG_FRAMES.value]
    print(f"RSS growth from frame 50 to {_LONG_FRAMES.value}: {cl - c50:+.1f} MiB "
          f"(peak {pl - p50:+.1f} MiB)")


def config_name(config):
    size = "native" if config.size is None else f"{config.size}{'sq' if config.square else ''}"
    return f"[{_PRESET.value}: {size}, context {config.context}, topk {config.topk}]"


def main(argv):
    del argv
    config = prop.PRESETS[_PRESET.value]
    print(f"{HEIGHT}x{WIDTH} frames, {os.cpu_count()} CPUs", flush=True)
    for depth in _DEPTHS.value:
        bench_speed(int(depth), config)
    if _LONG_FRAMES.value >= 50:
        bench_memory(config)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
