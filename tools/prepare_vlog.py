"""Videos -> TFRecord shards of 12 fps, 256 px high JPEG frames for training.

    python tools/prepare_vlog.py --input /data/vlog --out /data/vlog_shards
    python tools/prepare_vlog.py --input videos.txt --out shards --workers 8 --videos_per_shard 64
    python tools/prepare_vlog.py --verify --out /data/vlog_shards     # read every shard back

--input is a folder (searched recursively for .mp4 .avi .mkv .webm .mov) or a list file with one
path per line. Rerunning the same command resumes: finished shards are kept (a shard cut short
since is redone). Videos that cannot be used, truncated ones included (unless --keep_truncated),
are listed with the reason in OUT/report.json; the run still exits with status 0 (1 when no video
at all could be stored). --verify reads
every shard of OUT and exits with status 1 naming each truncated or corrupt one.
Record format and output layout: tc_keras/data/prepare.py.
"""

import sys

from absl import flags, logging

from tc_keras import cli
from tc_keras.data import prepare, shard_files

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
    "Videos with fewer frames after resampling are skipped (default: the frames a training clip "
    f"spans, target offset + 1 = {prepare.DEFAULT_MIN_FRAMES}).")
_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of stored frames, 1-100.")
_KEEP_TRUNCATED = flags.DEFINE_bool(
    "keep_truncated", False, "Store a truncated video's frames before the cut, marked "
    "\"truncated\" in manifest.jsonl and report.json (default: skip it, with the reason).")
_VERIFY = flags.DEFINE_bool("verify", False, "Only read every shard of --out back and name the "
                            "truncated or corrupt ones (exit status 1 if any).")


def verify(out):
    bad = shard_files.verify(out)
    shards = shard_files.resolve_shards(out)
    for shard, reason in bad.items():
        print(f"bad shard: {shard}: {reason}", file=sys.stderr)
    if bad:
        raise ValueError(f"{out}: {len(bad)} of {len(shards)} shards are truncated or corrupt; "
                         "remove them and rerun tools/prepare_vlog.py with the same --input and "
                         "--out to redo them")
    print(f"{out}: all {len(shards)} shards read back whole")


def main(argv):
    del argv
    cli.require("out")
    if _VERIFY.value:
        return verify(_OUT.value)
    cli.require("input")
    prepare.prepare(_INPUT.value, _OUT.value, fps=_FPS.value, height=_HEIGHT.value,
                    workers=_WORKERS.value or None, videos_per_shard=_PER_SHARD.value,
                    min_frames=_MIN_FRAMES.value, jpeg_quality=_QUALITY.value,
                    keep_truncated=_KEEP_TRUNCATED.value)
    logging.info("done")


if __name__ == "__main__":
    cli.run(main)
