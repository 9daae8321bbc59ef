r"""Export benchmark: per-frame latency of Keras, SavedModel and TFLite (fp32/fp16/int8); sizes.

  python bench/export.py                 # ~2-3 minutes on 2 CPU cores (PYTHONPATH=. if not
                                         # installed with pip install -e .)
  python bench/export.py --repeats 1 --step_chunks 0    # quicker: encoder only

A seeded random-init ResNet-18 (latency does not depend on the weights) is exported once to a
temporary folder, then, in one process:

1. embed: one 480x856 uint8 frame per call (DAVIS 854x480 rounded to the nearest multiple of 8,
   the size the default native-resolution protocol feeds the encoder). One untimed warm-up call,
   then the median of --repeats calls. TFLite runs ai-edge-litert with --threads threads (XNNPACK).
2. label step (default protocol: M = 21 context frames, joint top-10, radius 12 at the 60x107
   feature size, N = 6420). "dense": `propagate` (vote with the radius mask), chunked as the
   context chunks it (MAX_LOGITS // (M*N) = 248 queries, 26 chunks); --step_chunks chunks are
   timed (after one warm-up) and the per-frame time extrapolated to all chunks of a frame.
   "local": a whole frame through `context.Context` with the runtime's `label_steps`, as
   `Propagator` runs it: the exports' `propagate_local` (vote_local over square key regions; a
   SavedModel's traced into the compiled step, a TFLite interpreter's called on arrays), Keras'
   `context.KERAS` (the key windows of `window_step`) and, for comparison, Keras' `vote_local`;
   one warm-up frame, then the median of --step_frames frames.
3. Sizes on disk: the SavedModel folder and each .tflite file.

Few repeats on a shared 2-core CPU: read the figures to about +-20%.
"""

from tc_keras import cli

cli.quiet_tensorflow()  # before the imports below load TensorFlow (see tc_keras/cli.py)

import itertools
import pathlib
import statistics
import tempfile
import time

import numpy as np
from absl import flags, logging

from tc_keras.export import encoder_io
from tc_keras.export import graphs as export_lib
from tc_keras.export import runtimes as runtime_lib
from tc_keras.model.encoder import FEATURE_STRIDE
from tc_keras.propagation import context, presets
from tc_keras.propagation.label_step import vote, vote_local
from tc_keras.propagation.tiles import radius_mask

_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed embed calls per runtime (median reported).")
_STEP_CHUNKS = flags.DEFINE_integer("step_chunks", 2, "Timed dense label-step chunks per runtime "
                                    "(0 = skip the label step).")
_STEP_FRAMES = flags.DEFINE_integer("step_frames", 2, "Timed frames of the local label step per "
                                    "runtime.")
_THREADS = flags.DEFINE_integer("threads", 2, "TFLite interpreter threads (default 2).")
_DEPTH = flags.DEFINE_enum("depth", "18", ["18", "50"], "ResNet depth (default 18).")

HEIGHT, WIDTH = 480, 856  # DAVIS 854x480, width rounded to a multiple of 8 (model_size)


def _median_time(fn, repeats):
    fn()  # warm-up: graph tracing, allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _size(path):
    path = pathlib.Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = presets.PRESETS["default"]
    encoder = encoder_io.load_encoder_model("random", int(_DEPTH.value), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        written = export_lib.export(encoder, pathlib.Path(tmp) / "tc",
                                    quantize=export_lib.QUANTIZATIONS)
        print(f"export (SavedModel + 3 .tflite): {time.perf_counter() - start:.1f} s")
        runtimes = {
            "keras": (encoder_io.make_embed(encoder), context.KERAS),
            "keras vote_local": (None, context.LabelSteps("vote_local", vote, vote_local)),
            "saved_model": runtime_lib.SavedModelRuntime(written["saved_model"]),
            "tflite fp32": runtime_lib.TFLiteRuntime(written["tflite"], _THREADS.value),
            "tflite fp16": runtime_lib.TFLiteRuntime(written["tflite_fp16"], _THREADS.value),
            "tflite int8": runtime_lib.TFLiteRuntime(written["tflite_int8"], _THREADS.value),
        }
        sizes = {"keras": None, "keras vote_local": None,
                 "saved_model": _size(written["saved_model"]),
                 "tflite fp32": _size(written["tflite"]),
                 "tflite fp16": _size(written["tflite_fp16"]),
                 "tflite int8": _size(written["tflite_int8"])}

        frame = np.random.default_rng(0).integers(0, 256, (1, HEIGHT, WIDTH, 3), np.uint8)
        h, w = HEIGHT // FEATURE_STRIDE, WIDTH // FEATURE_STRIDE
        n, m = h * w, 1 + config.context
        chunk = context.dense_chunk(m, n)
        num_chunks = -(-n // chunk)
        rng = np.random.default_rng(1)
        feats = rng.normal(size=(m, n, 512)).astype(np.float32)
        feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
        labels = rng.random((m, n, 2)).astype(np.float32)
        allowed = radius_mask(h, w, config.radius)[:chunk]
        short_term = np.arange(m) > 0

        print(f"\n{_DEPTH.value}-layer ResNet, frame {HEIGHT}x{WIDTH} -> features {h}x{w}; "
              f"label step M={m}, N={n}; dense: chunk {chunk} queries x {num_chunks} chunks/frame; "
              f"local: whole frames; TFLite threads {_THREADS.value}; embed median of "
              f"{_REPEATS.value}, dense step median of {_STEP_CHUNKS.value} chunks, local median "
              f"of {_STEP_FRAMES.value} frames")
        print(f"{'runtime':<17} {'embed s/frame':>14} {'dense step s/frame':>19} "
              f"{'local step s/frame':>19} {'size MB':>8}")
        kwargs = dict(topk=config.topk, temperature=config.temperature,
                      joint_topk=config.joint_topk)
        for name, runtime in runtimes.items():
            embed, steps = runtime if name.startswith("keras") else (runtime.embed,
                                                                     runtime.label_steps)
            t_embed = t_step = t_local = float("nan")
            if embed is not None:
                t_embed = _median_time(lambda e=embed: np.asarray(e(frame)), _REPEATS.value)
            if _STEP_CHUNKS.value and name != "keras vote_local":
                t_step = num_chunks * _median_time(lambda s=steps: np.asarray(s.step(
                    feats, labels, feats[1, :chunk], allowed, short_term, **kwargs)),
                    _STEP_CHUNKS.value)
            if _STEP_FRAMES.value:
                ctx = context.Context(feats[0], labels[0], h, w, config, steps)
                queries = itertools.cycle(range(1, m))  # the context frames as queries
                t_local = _median_time(
                    lambda c=ctx, q=queries: np.asarray(c.step(feats[next(q)])),
                    _STEP_FRAMES.value)
            size = "-" if sizes[name] is None else f"{sizes[name] / 1e6:.1f}"
            print(f"{name:<17} {t_embed:>14.3f} {t_step:>19.2f} {t_local:>19.2f} {size:>8}",
                  flush=True)


if __name__ == "__main__":
    cli.run(main)
