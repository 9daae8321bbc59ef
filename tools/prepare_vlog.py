"""Videos -> TFRecord shards of 12 fps, 256 px high JPEG frames for training.

    python tools/prepare_vlog.py --input /data/vlog --out /data/vlog_shards
    python tools/prepare_vlog.py --input videos.txt --out shards --workers 8 --videos_per_shard 64

--input is a folder (searched recursively for .mp4 .avi .mkv .webm .mov) or a list file with one
path per line. Rerunning the same command resumes: finished shards are kept. Videos that cannot be
used are listed with the reason in OUT/report.json; the run still exits with status 0.
Record format and output layout: tc_keras/data/prepare.py.
"""

from tc_keras import cli  # first: quiets TensorFlow's start-up

from absl import flags, logging  # noqa: E402

from tc_keras.data import prepare  # noqa: E402

_INPUT = flags.DEFINE_string("input", None, "Folder of videos (any nesting) or a list file.")
_OUT = flags.DEFINE_string("out", None, "Output folder for shards, manifest.jsonl, report.json.")
_FPS = flags.DEFINE_float("fps", prepare.DEFAULT_FPS,
                          "Frame rate to resample to, frames per second (paper: 12).")
_HEIGHT = flags.DEFINE_integer("height", prepare.DEFAULT_HEIGHT,
                               "Frame height in pixels; width keeps the aspect, even (paper: 256).")
_WORKERS = flags.DEFINE_integer("workers", 0,
                                "Decoding processes; 0 = number of CPUs, 1 = no subprocesses.")
_PER_SHARD = flags.DEFINE_integer("videos_per_shard", 64, "Videos per TFRecord shard.")
_MIN_FRAMES = flags.DEFINE_integer(
    "min_frames", prepare.DEFAULT_MIN_FRAMES,
    "Videos with fewer frames after resampling are skipped (default 16 = target offset 15 + 1).")
_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of stored frames, 1-100.")
flags.mark_flags_as_required(["input", "out"])


def main(argv):
    del argv
    prepare.prepare(_INPUT.value, _OUT.value, fps=_FPS.value, height=_HEIGHT.value,
                    workers=_WORKERS.value or None, videos_per_shard=_PER_SHARD.value,
                    min_frames=_MIN_FRAMES.value, jpeg_quality=_QUALITY.value)
    logging.info("done")


if __name__ == "__main__":
    cli.run(main)
