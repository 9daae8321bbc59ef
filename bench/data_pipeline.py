"""Input pipeline figures: clips/s of `clip_dataset`, and peak memory of prepare on a long video.

    python bench/data_pipeline.py                    # (after pip install -e . or with PYTHONPATH=.)
    python bench/data_pipeline.py --num_videos 32 --batch_size 8 --long_frames 2000

1. Writes a synthetic corpus (tc_keras.data.synthetic), prepares it into shards, and times the
   training pipeline (240 crop, 4 past frames) after a warm-up: clips per second. In the same run
   it times the train step at the same settings (bench/train_step.py, data excluded) and prints
   the ratio pipeline clips/s / train-step clips/s.
2. Peak RSS of `prepare` (one worker, in a fresh process, above the RSS after importing
   TensorFlow) on a short and on a long synthetic video. prepare streams frames; one record per
   video holds the whole video's JPEGs, so the long video should cost about twice its JPEG bytes,
   well below its raw frames (frames x H x W x 3 bytes).

Figures only; nothing here asserts timings.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from absl import flags

from tc_keras import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Scratch folder (default: a temporary folder).")
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 16, "Synthetic videos in the corpus.")
_FRAMES = flags.DEFINE_integer("frames", 60, "Frames per synthetic video.")
_SIZE = flags.DEFINE_integer("size", 256, "Synthetic video height and width, pixels.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Clips per batch.")
_CROP = flags.DEFINE_integer("crop_size", 240, "Crop size, pixels (paper: 240).")
_BATCHES = flags.DEFINE_integer("batches", 30, "Timed batches (after warm-up).")
_DEPTH = flags.DEFINE_integer("depth", 18, "Encoder depth of the train-step measurement (18|50).")
_STEPS = flags.DEFINE_integer("train_steps", 3, "Timed train steps (after 2 warm-up steps).")
_LONG = flags.DEFINE_integer("long_frames", 2000, "Frames of the long video for the RSS test; "
                             "0 skips the memory measurement.")


def pipeline_clips_per_second(shards, *, batch_size=8, crop_size=240, num_past=4, batches=30,
                              warmup=5, **kwargs):
    """Clips per second delivered by `clip_dataset` (after `warmup` batches)."""
    from tc_keras.data import pipeline

    ds = pipeline.clip_dataset(shards, batch_size=batch_size, crop_size=crop_size,
                               num_past=num_past, **kwargs)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    batch["patch"].numpy()  # make sure the last batch is materialised
    return batches * batch_size / (time.perf_counter() - start)


_RSS_SCRIPT = """
import json, resource, sys
import tensorflow  # imported up front so that its (large, fixed) footprint is in the baseline
from tc_keras.data import prepare

def status(key):  # kB from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

baseline = status("VmRSS")
try:  # reset the peak (VmHWM) so that TensorFlow's import-time peak does not count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
report = prepare.prepare(sys.argv[1], sys.argv[2], workers=1)
peak = status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(baseline_mb=baseline / 1024, peak_mb=peak / 1024, frames=report["frames"])))
"""


def prepare_peak_rss_mb(video_path, out_dir):
    """dict(baseline_mb, peak_mb, frames) of prepare on one video, in a fresh process.

    baseline = RSS after importing TensorFlow, before prepare; peak = peak RSS during prepare.
    """
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run, not a resume
    listing = pathlib.Path(out_dir).with_suffix(".txt")
    listing.write_text(f"{video_path}\n")
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(listing), str(out_dir)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    from tc_keras.data import prepare, synthetic

    workdir = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="bench_data_"))
    size = (_SIZE.value, _SIZE.value)
    figures = {}

    start = time.perf_counter()
    synthetic.write_corpus(workdir / "corpus", _NUM_VIDEOS.value, frames=_FRAMES.value, size=size)
    figures["synthetic corpus write, s"] = time.perf_counter() - start
    start = time.perf_counter()
    prepare.prepare(workdir / "corpus" / "videos", workdir / "shards")
    figures["prepare corpus, s"] = time.perf_counter() - start
    figures["pipeline clips/s"] = pipeline_clips_per_second(
        workdir / "shards", batch_size=_BATCH.value, crop_size=_CROP.value, batches=_BATCHES.value)
    step_json = workdir / "train_step.json"
    subprocess.run([sys.executable, str(pathlib.Path(__file__).with_name("train_step.py")),
                    f"--encoders=resnet{_DEPTH.value}", f"--batch_size={_BATCH.value}",
                    f"--crop_size={_CROP.value}", "--num_past=4", f"--steps={_STEPS.value}",
                    "--precisions=float32", "--bn_groups=separate", "--profile_steps=0",
                    f"--json={step_json}"], check=True)
    step = json.loads(step_json.read_text())["steps"][f"resnet{_DEPTH.value} float32 separate"]
    figures[f"train step clips/s (ResNet-{_DEPTH.value}, same settings)"] = 1.0 / step["seconds_per_clip"]
    figures["pipeline / train step (>= 2: training never waits for data)"] = (
        figures["pipeline clips/s"] * step["seconds_per_clip"])

    if _LONG.value:
        short = synthetic.write_corpus(workdir / "short", 1, frames=_FRAMES.value, size=size)[0]
        long = synthetic.write_corpus(workdir / "long", 1, frames=_LONG.value, size=size)[0]
        for name, path in (("short", short), ("long", long)):
            rss = prepare_peak_rss_mb(path, workdir / f"rss_{name}")
            label = f"{name} video ({rss['frames']} frames)"
            figures[f"prepare peak RSS, {label}, MiB"] = rss["peak_mb"]
            figures[f"prepare peak RSS - baseline, {label}, MiB"] = (rss["peak_mb"]
                                                                    - rss["baseline_mb"])
        jpeg = sum(p.stat().st_size for p in (workdir / "rss_long").glob("*.tfrecord"))
        figures["JPEG bytes of the long video (its shard), MiB"] = jpeg / 2**20
        raw = _LONG.value * size[0] * size[1] * 3 / 2**20
        figures["raw frames of the long video, MiB (for reference)"] = raw

    print(f"\ndata pipeline benchmark ({os.cpu_count()} CPUs, workdir {workdir})")
    for key, value in figures.items():
        print(f"  {key:<58} {value:10.1f}")


if __name__ == "__main__":
    cli.run(main)
