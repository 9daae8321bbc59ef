"""Tests for tc_keras.data.prepare and tools/prepare_vlog.py: shards, report, resume."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tc_keras.data import pool, prepare, shard_files, synthetic
from tests import broken_files

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _read_shard(path):
    spec = dict(id=tf.io.FixedLenFeature([], tf.string),
                frames=tf.io.VarLenFeature(tf.string),
                num_frames=tf.io.FixedLenFeature([], tf.int64),
                height=tf.io.FixedLenFeature([], tf.int64),
                width=tf.io.FixedLenFeature([], tf.int64),
                fps=tf.io.FixedLenFeature([], tf.float32))
    out = []
    for raw in tf.data.TFRecordDataset(str(path)):
        ex = tf.io.parse_single_example(raw, spec)
        ex["frames"] = tf.sparse.to_dense(ex["frames"])
        out.append(ex)
    return out


@pytest.fixture
def videos(tmp_path):
    """Folder with 3 good videos (one nested, one too short) and 3 bad files."""
    src = tmp_path / "src"
    synthetic.write_corpus(tmp_path / "corpus", 3, frames=20, size=(48, 64), fps=12, seed=1)
    (src / "nested" / "deeper").mkdir(parents=True)
    vids = sorted((tmp_path / "corpus" / "videos").glob("*.mp4"))
    os.replace(vids[0], src / "good.mp4")
    os.replace(vids[1], src / "nested" / "deeper" / "good2.MP4")
    synthetic.write_corpus(tmp_path / "short", 1, frames=8, size=(48, 64), fps=12, seed=2)
    os.replace(tmp_path / "short" / "videos" / "vid_0000.mp4", src / "nested" / "short.mp4")
    data = vids[2].read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (src / "empty.mp4").write_bytes(b"")
    (src / "notes.mp4").write_text("a text file renamed to .mp4\n" * 10)
    (src / "readme.txt").write_text("not a video extension: ignored")
    return src


def test_prepare_tool_skips_bad_files(tmp_path, videos):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "prepare_vlog.py"), f"--input={videos}",
         f"--out={out}", "--height=32", "--workers=2", "--videos_per_shard=2"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    reasons = {pathlib.Path(s["source"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"truncated.mp4", "empty.mp4", "notes.mp4", "short.mp4"}
    assert "0 bytes" in reasons["empty.mp4"] and "too short" in reasons["short.mp4"]
    assert all(name in reason for name, reason in reasons.items() if name != "short.mp4")
    assert report["videos"] == 2
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["good.mp4", "nested/deeper/good2.MP4"]
    shards = shard_files.resolve_shards(out)
    assert len(shards) == 3 and not list(out.glob("*.partial"))
    records = [r for s in shards for r in _read_shard(s)]
    assert [r["id"].numpy().decode() for r in records] == ["good.mp4", "nested/deeper/good2.MP4"]
    rec = records[0]
    # 20 frames at 12 fps stay 20; height 32, width 64 * 32 / 48 = 42.7 -> 42 (even).
    assert rec["num_frames"] == 20 and rec["frames"].shape == (20,)
    assert (rec["height"], rec["width"], rec["fps"]) == (32, 42, 12.0)
    image = tf.io.decode_jpeg(rec["frames"][3]).numpy()
    assert image.shape == (32, 42, 3) and image.std() > 5
    assert rows[0]["size"] == [32, 42] and rows[0]["frames"] == 20


def test_resume_skips_finished_shards(tmp_path, videos):
    out = tmp_path / "out"
    kw = dict(height=32, workers=1, videos_per_shard=2)
    prepare.prepare(videos, out, **kw)
    shards = shard_files.resolve_shards(out)
    mtimes = {s: os.stat(s).st_mtime_ns for s in shards}
    # A killed run leaves a stale partial shard; another shard lost its .json (killed between
    # the two renames) and must be redone.
    (out / (pathlib.Path(shards[0]).name + ".partial")).write_bytes(b"garbage")
    pathlib.Path(shards[1]).with_suffix(".json").unlink()
    report = prepare.prepare(videos, out, **kw)
    assert report["videos"] == 2 and report["skipped_count"] == 4
    assert not list(out.glob("*.partial"))
    assert os.stat(shards[0]).st_mtime_ns == mtimes[shards[0]]
    assert os.stat(shards[2]).st_mtime_ns == mtimes[shards[2]]
    assert os.stat(shards[1]).st_mtime_ns != mtimes[shards[1]]
    assert pathlib.Path(shards[1]).with_suffix(".json").exists()
    # Other settings (here the frame height) redo every shard.
    prepare.prepare(videos, out, **dict(kw, height=24))
    assert all(os.stat(s).st_mtime_ns != mtimes[s] for s in (shards[0], shards[2]))
    assert json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["size"] == [24, 32]


def test_list_file_and_changed_input(tmp_path, videos):
    listing = tmp_path / "list.txt"
    listing.write_text("# training videos\nsrc/good.mp4\n\nsrc/empty.mp4\n")
    out = tmp_path / "out"
    report = prepare.prepare(listing, out, height=32, workers=1, videos_per_shard=1)
    assert report["videos"] == 1 and report["skipped"][0]["id"] == "src/empty.mp4"
    assert [pathlib.Path(s).name for s in shard_files.resolve_shards(out / "manifest.jsonl")] == [
        "shard-00001-of-00002.tfrecord"]
    # A different video list gives a different shard count; old shards are removed.
    listing.write_text("src/good.mp4\n")
    prepare.prepare(listing, out, height=32, workers=1, videos_per_shard=1)
    assert [pathlib.Path(s).name for s in shard_files.resolve_shards(out)] == [
        "shard-00000-of-00001.tfrecord"]


def test_min_frames_default_holds_one_clip_at_its_nominal_offsets():
    """prepare's default keeps the videos that a clip fits at its nominal offsets (the pipeline
    squeezes the clip into anything shorter)."""
    from tc_keras.data import clip_layout, pipeline

    shortest = prepare.DEFAULT_MIN_FRAMES
    assert pipeline.clip_offsets(shortest).numpy()[-1] == clip_layout.TARGET_OFFSET
    assert pipeline.clip_offsets(shortest - 1).numpy()[-1] < clip_layout.TARGET_OFFSET


def test_resolve_shards(tmp_path):
    for name in ["b.tfrecord", "a.tfrecord", "c.txt"]:
        (tmp_path / name).write_bytes(b"")
    expected = [str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")]
    assert shard_files.resolve_shards(tmp_path) == expected
    assert shard_files.resolve_shards(str(tmp_path / "*.tfrecord")) == expected
    assert shard_files.resolve_shards(tmp_path / "a.tfrecord") == expected[:1]
    assert shard_files.resolve_shards([tmp_path / "b.tfrecord", tmp_path / "a.tfrecord"]) == expected
    for bad in [tmp_path / "nothing", tmp_path / "*.zip"]:
        with pytest.raises(FileNotFoundError, match=str(bad).replace("*", r"\*")):
            shard_files.resolve_shards(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .*tfrecord"):
        shard_files.resolve_shards(tmp_path / "empty")


def test_no_videos_is_an_error(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(FileNotFoundError, match="no videos"):
        prepare.prepare(tmp_path / "in", tmp_path / "out", workers=1)


def test_real_videos_at_12fps(shared_data, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{shared_data}/real-clips/bikes.mp4\n"
                       f"{shared_data}/jhmdb-catch/Goal_Keeping_Tips_catch_f_cm_np1_fr_med_2.avi\n")
    report = prepare.prepare(listing, tmp_path / "out", height=64, workers=1)
    assert report["skipped_count"] == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    frames = {pathlib.Path(r["source"]).suffix: (r["frames"], r["size"]) for r in rows}
    assert frames[".mp4"] == (120, [64, 150])  # 10 s at 12 fps; 640x272 -> 150x64
    assert frames[".avi"][0] == 19 and frames[".avi"][1] == [64, 86]  # 1.6 s at 12 fps
    images = [tf.io.decode_jpeg(f).numpy() for r in _read_shard(shard_files.resolve_shards(
        tmp_path / "out")[0]) for f in r["frames"][:2]]
    assert all(np.mean(im) > 20 for im in images)


def test_worker_crash_fails_only_that_video():
    # The job function is the builtin eval (so the spawned workers need not import this module
    # and TensorFlow); the "crash" job kills its worker process the way a decoder segfault would.
    crash = "__import__('os')._exit(1)"
    jobs = [(f"s{i // 3}", x) for i, x in enumerate(
        ["'a' * 2", "'b' * 2", crash, "'c' * 2", "'d' * 2", "'e' * 2", "'f' * 2"])]
    results = list(pool.ordered(jobs, workers=2, fn=eval))
    assert [name for name, _ in results] == [name for name, _ in jobs]
    values = [r for _, r in results]
    assert values[:2] == ["aa", "bb"] and values[3:] == ["cc", "dd", "ee", "ff"]
    assert "worker failed" in values[2]["reason"]


def test_list_file_with_frame_folders_and_their_frame_rate(tmp_path):
    """A frame folder in a list file gives its rate (`fps=`): 24 fps frames -> 12 fps, every other."""
    from PIL import Image

    folder = tmp_path / "seq"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(np.full((32, 48, 3), 5 * i, np.uint8)).save(folder / f"{i:05d}.jpg")
    synthetic.write_corpus(tmp_path / "corpus", 1, frames=20, size=(32, 48), fps=12, seed=3)
    (tmp_path / "list.txt").write_text("# a comment\nseq fps=24\ncorpus/videos/vid_0000.mp4\n")
    report = prepare.prepare(tmp_path / "list.txt", tmp_path / "out", workers=1, height=32)
    assert report["videos"] == 2 and report["skipped_count"] == 0
    rows = {json.loads(r)["id"]: json.loads(r)
            for r in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()}
    assert rows["seq"]["frames"] == 20 and rows["seq"]["source"].endswith("seq fps=24")
    frames = _read_shard(next((tmp_path / "out").glob("*.tfrecord")))
    seq = [ex for ex in frames if ex["id"].numpy() == b"seq"][0]
    first_three = [tf.io.decode_jpeg(f).numpy().mean() for f in seq["frames"][:3]]
    np.testing.assert_allclose(first_three, [0, 10, 20], atol=2)  # frames 0, 2, 4 (JPEG)
    (tmp_path / "bad.txt").write_text("seq fps=zero\n")
    with pytest.raises(ValueError, match="bad.txt, line 1.*fps="):
        prepare.find_videos(tmp_path / "bad.txt")
    (tmp_path / "nofps.txt").write_text("seq\n")
    with pytest.raises(prepare.NothingStored, match="none of its 1 videos could be stored"):
        prepare.prepare(tmp_path / "nofps.txt", tmp_path / "out2", workers=1, height=32)
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert report["videos"] == 0 and "folder_fps" in report["skipped"][0]["reason"]


def test_truncated_videos_are_skipped_or_kept_marked(tmp_path):
    """An mp4 with its index at the start and an avi, cut in half: the decoders used to end
    quietly and prepare stored the first half as a whole video."""
    src = tmp_path / "src"
    src.mkdir()
    broken_files.truncated_video(src / "cut.mp4", "mp4", frames=64)
    broken_files.truncated_video(src / "cut.avi", "avi", frames=64)
    broken_files.truncated_video(src / "whole.mp4", "mp4", frames=64, fraction=1)
    report = prepare.prepare(src, tmp_path / "out", height=32, workers=1)
    assert report["videos"] == 1 and report["truncated_count"] == 0
    reasons = {s["id"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"cut.mp4", "cut.avi"}
    for name, reason in reasons.items():
        assert reason.startswith(f"{src / name}: truncated video: decoding stopped at frame ")
        assert "of 64" in reason
    # --keep_truncated: the frames before the cut are stored, marked in manifest and report.
    report = prepare.prepare(src, tmp_path / "out", height=32, workers=1, keep_truncated=True)
    rows = {json.loads(x)["id"]: json.loads(x)
            for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()}
    assert report["videos"] == 3 and report["truncated_count"] == 2
    assert "truncated" not in rows["whole.mp4"] and rows["whole.mp4"]["frames"] == 64
    for name in ("cut.mp4", "cut.avi"):
        assert rows[name]["truncated"].startswith("truncated video: decoding stopped at frame")
        assert 16 <= rows[name]["frames"] < 50
        # Every frame before the cut is stored (same rate: 12 fps), the last one included.
        stopped = int(re.search(r"stopped at frame (\d+)", rows[name]["truncated"]).group(1))
        assert rows[name]["frames"] == stopped, rows[name]
    assert {t["id"] for t in report["truncated"]} == {"cut.mp4", "cut.avi"}


def _tool(*args, **popen):
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, str(ROOT / "tools" / "prepare_vlog.py"), *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, env=env, **popen)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_verify_names_a_cut_shard_and_a_rerun_redoes_it(tmp_path, videos):
    out = tmp_path / "out"
    prepare.prepare(videos, out, height=32, workers=1, videos_per_shard=2)
    assert shard_files.verify(out) == {}
    shard = shard_files.resolve_shards(out)[0]
    broken_files.cut(shard, 0.6)
    bad = shard_files.verify(out)
    assert list(bad) == [shard] and "truncated or corrupt after 0 good records" in bad[shard]
    result = _tool("--verify", f"--out={out}")
    assert result.returncode == 1
    assert f"bad shard: {shard}: truncated or corrupt" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: {out}: 1 of 3 shards are truncated or corrupt")
    # The shard's .json records its size: a rerun redoes the cut shard.
    prepare.prepare(videos, out, height=32, workers=1, videos_per_shard=2)
    assert shard_files.verify(out) == {}
    result = _tool("--verify", f"--out={out}")
    assert result.returncode == 0 and "all 3 shards read back whole" in result.stdout


def test_a_run_that_stores_no_video_fails_naming_the_input(tmp_path):
    """Only unusable videos: the run used to exit 0 with empty shards that --verify called whole."""
    src = tmp_path / "src"
    src.mkdir()
    broken_files.truncated_video(src / "cut.mp4", "mp4", frames=40)
    (src / "empty.mp4").write_bytes(b"")
    result = _tool(f"--input={src}", f"--out={tmp_path / 'out'}", "--workers=1", "--height=32")
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {src}: none of its 2 videos could be stored; the reason for each is in "
        f"{tmp_path / 'out'}/report.json")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["videos"] == 0 and {s["id"] for s in report["skipped"]} == {"cut.mp4",
                                                                             "empty.mp4"}
    # Only the report is left: no empty shards that --verify would call whole.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json"]
    result = _tool("--verify", f"--out={tmp_path / 'out'}")
    assert result.returncode == 1 and "holds no *.tfrecord shards" in result.stderr


def _children(pid):
    """Pids whose parent is `pid` (from /proc)."""
    out = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid):
    """True for a running process (a zombie waiting for its new parent to reap it is gone)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_killed_prepare_takes_its_workers_along(tmp_path):
    """kill -9 of the tool: its decoding workers and the resource tracker used to run on."""
    src = tmp_path / "src"
    src.mkdir()
    one = broken_files.write_container(tmp_path / "one.mp4", broken_files.noise_frames(
        120, 128, 160), "mp4", "libx264")
    for i in range(40):  # many videos, one file: a run long enough to be killed mid-way
        (src / f"v{i:02d}.mp4").symlink_to(one)
    proc = _tool(f"--input={src}", f"--out={tmp_path / 'out'}", "--workers=2", "--height=64",
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        children = []
        while time.time() < deadline and proc.poll() is None:
            children = _children(proc.pid)
            if len(children) >= 3:  # two workers and the resource tracker
                break
            time.sleep(0.1)
        assert proc.poll() is None and len(children) >= 3, "prepare ended before it was killed"
        time.sleep(1.0)  # the workers are decoding
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(c) for c in children):
            time.sleep(0.2)
        assert not [c for c in children if _alive(c)]
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in children:  # what a failing run would leave behind
            if _alive(child):
                os.kill(child, signal.SIGKILL)
    out = tmp_path / "out"
    assert not out.exists() or not list(out.glob("*.tfrecord"))  # nothing complete-looking
