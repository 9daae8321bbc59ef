"""Video collection -> TFRecord shards of JPEG frames (docs/METHOD.md, "Training data and schedule").

Every video is decoded with `video.iter_frames`, resampled to `fps` (12) and resized to `height`
(256, aspect kept, width even), and stored as ONE tf.train.Example per video with features id,
frames (one JPEG per frame), num_frames, height, width, fps (tc_keras/data/records.py).

Output folder:

    shard-00000-of-00004.tfrecord   videos [0, M) of the sorted input list, M = videos_per_shard
    shard-00000-of-00004.json       what went into that shard (manifest rows, skipped videos,
                                    the shard's size in bytes)
    manifest.jsonl                  one row per stored video: id, source, frames, fps, size, shard
                                    (and `truncated`, see below)
    report.json                     counts, the skipped videos, each with its reason, and the
                                    videos stored truncated

A shard and its .json are written under `.partial` names and renamed when complete, so a killed
run never leaves a complete-looking shard; a rerun skips shards whose .tfrecord and .json both
exist (and hold the same videos made with the same settings, and the shard has the size its
.json records: a shard cut short later is redone) and redoes the rest. Unreadable, corrupt,
empty, non-video and too-short videos are skipped and listed in report.json; they never stop the
run. A truncated video (its data stops before the end its header declares: a cut download) is
skipped too, with reason "... truncated video: decoding stopped at frame N of M ..."; with
`keep_truncated` its frames before the cut are stored and its manifest row says
`"truncated": "<why>"`. `verify(out_dir)` reads every shard back and names the bad ones. Videos
are decoded in worker processes (tc_keras.data.pool: spawned, so they never inherit TensorFlow's
threads, and they end with this process even when it is killed); the main process writes the
shards. Memory per video is about twice its JPEG bytes, never its raw frames.

Not safe to run two prepares on the same output folder at once.
"""

import contextlib
import json
import math
import os
import pathlib
import re
import time

from absl import logging

from tc_keras import atomic
from tc_keras.data import clip_layout, pool, records, video

# docs/METHOD.md, "Training data and schedule": frames at 12 fps, height 256.
DEFAULT_FPS = 12.0
DEFAULT_HEIGHT = 256
# A clip needs frames s .. s + target offset.
DEFAULT_MIN_FRAMES = clip_layout.CLIP_FRAMES
SHARD_PATTERN = "shard-{index:05d}-of-{count:05d}.tfrecord"
_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.tfrecord$")


def find_videos(input_path):
    """Sorted [(id, path, folder_fps)] from a folder tree (any nesting) or a list file.

    Folder: every file with a video extension (.mp4 .avi .mkv .webm .mov, any case); the id is
    the path relative to the folder. List file: one video file or frame folder per line; blank
    lines and lines starting with # are ignored; relative paths are relative to the list file's
    folder; the id is the path as written. A frame folder (numbered .jpg/.png frames) has no
    timestamps: give its frame rate after the path, e.g. `DAVIS/JPEGImages/480p/blackswan fps=24`.
    `folder_fps` is that rate (None for video files).
    """
    root = pathlib.Path(input_path)
    if root.is_dir():
        found = [(p.relative_to(root).as_posix(), p, None) for p in root.rglob("*")
                 if p.suffix.lower() in video.VIDEO_EXTENSIONS and p.is_file()]
    elif root.is_file():
        found = []
        for number, line in enumerate(root.read_text().splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            folder_fps = None
            name, _, last = line.rpartition(" ")
            if name and last.startswith("fps="):
                try:
                    folder_fps = float(last[len("fps="):])
                except ValueError:
                    folder_fps = -1.0
                if not folder_fps > 0:
                    raise ValueError(f"{root}, line {number}: {last!r}: expected fps=<frames per "
                                     "second> after a frame folder")
                line = name.strip()
            p = pathlib.Path(line)
            found.append((line, p if p.is_absolute() else root.parent / p, folder_fps))
    else:
        raise FileNotFoundError(f"{root}: no such folder or list file")
    if not found:
        raise FileNotFoundError(f"{root}: no videos ({' '.join(video.VIDEO_EXTENSIONS)}) found")
    unique = {vid: (path, folder_fps) for vid, path, folder_fps in found}
    return [(vid, path, folder_fps) for vid, (path, folder_fps) in sorted(unique.items())]


def _source(path, folder_fps):
    """How a video is named in shard metadata and reports: its path, and a frame folder's rate."""
    return str(path) if folder_fps is None else f"{path} fps={folder_fps:g}"


def encode_video(video_id, path, fps, height, min_frames, jpeg_quality=90, folder_fps=None,
                 keep_truncated=False):
    """Decodes one video (or frame folder at `folder_fps`) into JPEG frames; never raises.

    Returns dict(id, source, record=serialized Example, frames=count, fps, height, width, and
    truncated=<why> for a truncated video kept with `keep_truncated`), or dict(id, source, reason)
    for a video that cannot be used.
    """
    out = dict(id=video_id, source=_source(path, folder_fps))
    jpegs = []
    try:
        for frame in video.iter_frames(path, fps=fps, height=height, folder_fps=folder_fps):
            jpegs.append(records.jpeg_bytes(frame, jpeg_quality))
            shape = frame.shape
    except video.TruncatedVideo as e:
        if not keep_truncated:
            return dict(out, reason=str(e))
        out["truncated"] = e.detail  # the source names the file
    except video.VideoError as e:
        return dict(out, reason=str(e))
    except Exception as e:  # noqa: BLE001 - one bad video must not stop a 100K-video run
        return dict(out, reason=f"{type(e).__name__}: {e}")
    if not jpegs or len(jpegs) < min_frames:
        cut = f" ({out.pop('truncated')})" if "truncated" in out else ""
        return dict(out, reason=f"too short: {len(jpegs)} frames at {fps} fps, need "
                    f"{min_frames}{cut}")
    record = records.encode_example(video_id, jpegs, fps, shape[0], shape[1])
    return dict(out, record=record, frames=len(jpegs), fps=float(fps), height=shape[0],
                width=shape[1])


def _encode_job(args):
    """encode_video on a tuple of its arguments (what the process pool runs)."""
    return encode_video(*args)


class _ShardWriter:
    """Writes one shard under a temporary name; `finish` renames it, then its .json, into place."""

    def __init__(self, out_dir, name):
        import tensorflow as tf

        self.path = out_dir / name
        self.meta_path = self.path.with_suffix(".json")
        self.staged = atomic.Staged(self.path)
        self.writer = tf.io.TFRecordWriter(str(self.staged.path))
        self.rows, self.skipped = [], []

    def add(self, result):
        if "reason" in result:
            self.skipped.append(dict(id=result["id"], source=result["source"],
                                     reason=result["reason"]))
            return
        self.writer.write(result["record"])
        row = dict(id=result["id"], source=result["source"], frames=result["frames"],
                   fps=result["fps"], size=[result["height"], result["width"]],
                   shard=self.path.name)
        if "truncated" in result:
            row["truncated"] = result["truncated"]
        self.rows.append(row)

    def finish(self, sources, settings):
        self.writer.close()
        size = self.staged.path.stat().st_size
        self.staged.commit()
        atomic.write_text(self.meta_path, json.dumps(dict(
            sources=sources, settings=settings, videos=self.rows, skipped=self.skipped,
            bytes=size), indent=1))


def _finished(out_dir, name, sources, settings):
    """The shard's metadata if it is complete (the size its .json records), holds exactly
    `sources` and was made with the same settings (fps, height, ...), else None."""
    path = out_dir / name
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None
    same = meta.get("sources") == sources and meta.get("settings") == settings
    if same and meta.get("bytes", path.stat().st_size) != path.stat().st_size:
        logging.warning("redoing %s: %d bytes, its .json says %d (cut short?)", path,
                        path.stat().st_size, meta["bytes"])
        return None
    return meta if same else None


def _clean_stale(out_dir, num_shards):
    for p in out_dir.iterdir():
        if p.name.endswith(atomic.PARTIAL):
            p.unlink()  # a killed run's leftovers; the shard is redone
            continue
        m = _SHARD_RE.match(p.name) or _SHARD_RE.match(p.with_suffix(".tfrecord").name)
        if m and int(m.group(2)) != num_shards:
            logging.warning("removing %s: from an earlier run with a different video list", p)
            p.unlink()


class NothingStored(ValueError):
    """No video of the input could be stored (each one's reason is in report.json)."""


def prepare(input_path, out_dir, *, fps=DEFAULT_FPS, height=DEFAULT_HEIGHT, workers=None,
            videos_per_shard=64, min_frames=DEFAULT_MIN_FRAMES, jpeg_quality=90,
            keep_truncated=False):
    """Converts a folder tree or list file of videos into TFRecord shards (see module docstring).

    Args:
      input_path: folder (searched recursively) or list file.
      out_dir: output folder (created).
      fps, height: resampling rate and output frame height.
      workers: decoding processes; None = os.cpu_count(); 1 = decode in this process.
      videos_per_shard: videos per TFRecord shard.
      min_frames: videos with fewer frames (after resampling) are skipped.
      jpeg_quality: JPEG quality of the stored frames.
      keep_truncated: store a truncated video's frames before the cut (marked `truncated` in
        manifest.jsonl) instead of skipping it.
    Returns:
      The report dict (also written to out_dir/report.json).
    Raises:
      FileNotFoundError: the input holds no video; NothingStored: none of its videos could be
        stored (out_dir then holds only report.json).
    """
    videos = find_videos(input_path)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(len(videos) / videos_per_shard)
    _clean_stale(out_dir, num_shards)
    plan = []  # (shard name, [(id, path)])
    for i in range(num_shards):
        plan.append((SHARD_PATTERN.format(index=i, count=num_shards),
                     videos[i * videos_per_shard:(i + 1) * videos_per_shard]))
    settings = dict(fps=float(fps), height=height, min_frames=min_frames,
                    jpeg_quality=jpeg_quality, keep_truncated=bool(keep_truncated))
    todo = [(name, vids) for name, vids in plan
            if _finished(out_dir, name, [_source(p, f) for _, p, f in vids], settings) is None]
    logging.info("prepare: %d videos in %d shards, %d shards already done, %d to do",
                 len(videos), num_shards, num_shards - len(todo), len(todo))
    jobs = [(name, (vid, str(path), fps, height, min_frames, jpeg_quality, folder_fps,
                    keep_truncated))
            for name, vids in todo for vid, path, folder_fps in vids]
    workers = workers or os.cpu_count() or 1
    _run(jobs, todo, out_dir, workers, settings)
    report = _write_summary(out_dir, plan, input_path)
    if not report["videos"]:  # nothing to train on: only the report is left, no empty shards
        for name, _ in plan:
            (out_dir / name).unlink(missing_ok=True)
            (out_dir / name).with_suffix(".json").unlink(missing_ok=True)
        (out_dir / "manifest.jsonl").unlink(missing_ok=True)
        raise NothingStored(f"{input_path}: none of its {report['skipped_count']} videos could "
                            f"be stored; the reason for each is in {out_dir / 'report.json'}")
    return report


def _run(jobs, todo, out_dir, workers, settings):
    shard_sizes = {name: len(vids) for name, vids in todo}
    shard_sources = {name: [_source(p, f) for _, p, f in vids] for name, vids in todo}
    writer, done, skipped, start, last_log = None, 0, 0, time.time(), 0.0
    with contextlib.closing(pool.ordered(jobs, workers, _encode_job)) as results:
        for name, result in results:
            if writer is None or writer.path.name != name:
                writer = _ShardWriter(out_dir, name)
            writer.add(result)
            done += 1
            skipped += "reason" in result
            if "reason" in result:
                logging.warning("skipping %s: %s", result["source"], result["reason"])
            if len(writer.rows) + len(writer.skipped) == shard_sizes[name]:
                writer.finish(shard_sources[name], settings)
                logging.info("wrote %s", writer.path)
                writer = None
            now = time.time()
            if now - last_log > 10 or done == len(jobs):
                rate = done / max(now - start, 1e-6)
                logging.info("prepare: %d/%d videos (%d skipped), %.1f videos/s, eta %.0f s",
                             done, len(jobs), skipped, rate, (len(jobs) - done) / rate)
                last_log = now


def _write_summary(out_dir, plan, input_path):
    rows, skipped = [], []
    for name, _ in plan:
        meta = json.loads((out_dir / name).with_suffix(".json").read_text())
        rows += meta["videos"]
        skipped += meta["skipped"]
    atomic.write_text(out_dir / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    truncated = [dict(id=r["id"], source=r["source"], reason=r["truncated"]) for r in rows
                 if r.get("truncated")]
    report = dict(input=str(input_path), videos=len(rows), skipped_count=len(skipped),
                  frames=sum(r["frames"] for r in rows), shards=len(plan), skipped=skipped,
                  truncated_count=len(truncated), truncated=truncated)
    atomic.write_text(out_dir / "report.json", json.dumps(report, indent=1) + "\n")
    logging.info("prepare: %d videos stored (%d frames, %d of them truncated), %d skipped; see "
                 "%s", len(rows), report["frames"], len(truncated), len(skipped),
                 out_dir / "report.json")
    return report
