"""The training driver: data sources, resume after kill -9, multi-worker, non-finite loss."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tc_keras.train import checkpoints
from tc_keras.train import config as tconfig
from tests import broken_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--data=synthetic", "--synthetic_videos=4", "--synthetic_frames=24", "--synthetic_size=168",
        "--encoder=resnet18", "--num_past=1", "--frame_gap=2", "--target_offset=6",
        "--crop_size=168", "--resize_short=168", "--batch_size=2", "--log_every=1",
        "--image_every=2", "--shuffle_buffer=4", "--strategy=default"]


def train_cmd(workdir, *extra):
    return [sys.executable, "-m", "tc_keras.train", f"--workdir={workdir}", *TINY, *extra]


def env(**extra):
    e = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    e.update(extra)
    return e


def test_unknown_flag_value_and_missing_data_are_clear_errors(tmp_path):
    bad = subprocess.run(train_cmd(tmp_path / "w", "--encoder=resnet34"), env=env(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert "encoder" in bad.stderr and "resnet18" in bad.stderr
    missing = subprocess.run(train_cmd(tmp_path / "w", f"--data={tmp_path}/nothing_here"),
                             env=env(), capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0
    assert "nothing_here" in missing.stderr
    assert "Traceback" not in missing.stderr
    # A folder of videos none of which can be used: one line naming it, not empty shards.
    (tmp_path / "bad_videos").mkdir()
    (tmp_path / "bad_videos" / "empty.mp4").write_bytes(b"")
    unusable = subprocess.run(train_cmd(tmp_path / "w2", f"--data={tmp_path}/bad_videos"),
                              env=env(), capture_output=True, text=True, timeout=120)
    assert unusable.returncode == 1 and "Traceback" not in unusable.stderr, unusable.stderr[-2000:]
    assert unusable.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path}/bad_videos: none of its 1 videos could be stored"), unusable.stderr


def test_monitor_stops_on_non_finite_loss_naming_the_step():
    from tc_keras.train.monitor import TrainingMonitor

    saved = []
    monitor = TrainingMonitor(saved.append, "/tmp/unused_tb", log_every=100, checkpoint_every=100,
                              image_every=0)

    class _Model:
        stop_training = False
        optimizer = keras.optimizers.Adam()
    monitor.set_model(_Model())
    monitor.model.optimizer.iterations.assign(7)
    with pytest.raises(FloatingPointError, match="step 7"):
        monitor.on_train_batch_end(0, {"loss": np.float32("nan")})
    assert monitor.model.stop_training and not saved


@pytest.mark.slow
def test_resume_after_kill_continues_from_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    cmd = train_cmd(workdir, "--train_steps=8", "--checkpoint_every=3")
    log = open(tmp_path / "first_run.log", "w+")  # a file: a full pipe would stall the run
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=log, text=True)
    ckpt = workdir / "ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        # The manager's state file names ckpt-3 once it is complete (its .index comes earlier):
        # killed before that, a loaded machine would leave nothing to resume from.
        state = ckpt / "checkpoint"
        if state.is_file() and "ckpt-3" in state.read_text():
            break
        time.sleep(0.2)
    log.seek(0)
    assert proc.poll() is None, log.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "ckpt" / "ckpt-8.index").exists()
    # As if written before --bn_groups existed: such a run resumes with the joint batch.
    stored = json.loads((workdir / "config.json").read_text())
    del stored["model"]["bn_groups"]
    (workdir / "config.json").write_text(json.dumps(stored))
    rerun = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resumed from" in rerun.stderr
    # The end says where the encoder is and what to run next; no Keras warning from the fit call
    # (shuffle=True ignored for a tf.data dataset) nor TensorFlow's start-up lines.
    assert f"Encoder: {workdir / 'encoder.keras'}" in rerun.stdout
    assert f"tools/propagate.py --video clip.mp4 --labels first_mask.png --out out/run " \
           f"--encoder {workdir}" in rerun.stdout
    assert f"tools/export.py --checkpoint {workdir} --out export/run" in rerun.stdout
    assert "Warning" not in rerun.stderr and "All log messages before absl" not in rerun.stderr
    resumed_at = int(rerun.stderr.split("Steps ")[1].split("..")[0])
    assert 3 <= resumed_at < 8  # continued from a checkpoint, not from zero
    assert (workdir / "ckpt" / "ckpt-8.index").exists()
    assert (workdir / "encoder.keras").exists()
    assert json.loads((workdir / "config.json").read_text())["train"]["train_steps"] == 8
    assert "resuming with --bn_groups=joint" in rerun.stderr
    assert json.loads((workdir / "config.json").read_text())["model"]["bn_groups"] == "joint"
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8 and {"loss", "long", "skip", "sim", "sim_1"} <= set(rows[-1])
    # A third run finds the work done.
    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to do" in again.stderr

    # The newest checkpoint's .data and the one before's .index cut short: both are named, the
    # run resumes from the newest intact one (step 3) and ends at step 8 again.
    ckpt = workdir / "ckpt"
    broken_files.cut(ckpt / "ckpt-8.data-00000-of-00001")
    broken_files.cut(ckpt / "ckpt-6.index")
    cut = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert cut.returncode == 0, cut.stderr[-3000:]
    assert f"Cannot restore {ckpt / 'ckpt-8'} (IndexError: Read less bytes" in cut.stderr
    assert f"Cannot restore {ckpt / 'ckpt-6'} (" in cut.stderr
    assert f"Resumed from {ckpt / 'ckpt-3'}" in cut.stderr and "Steps 3..8" in cut.stderr
    assert checkpoints.checkpoint_problem(ckpt / "ckpt-8") is None
    # None restores: one line naming them; the checkpoints are left as they were.
    for name in ("ckpt-8.index", "ckpt-6.index", "ckpt-3.index"):
        broken_files.cut(ckpt / name)
    before = _snapshot(workdir)
    none = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert none.returncode == 1 and "Traceback" not in none.stderr
    last = none.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {ckpt}: no checkpoint restores: ckpt-8 (") and "ckpt-3" in last
    assert _snapshot(workdir, ckpt_only=True) == before[1]


def _snapshot(workdir, ckpt_only=False):
    """(every file's bytes, the checkpoint files' bytes) under a workdir."""
    files = {str(p.relative_to(workdir)): p.read_bytes()
             for p in sorted(pathlib.Path(workdir).rglob("*")) if p.is_file()}
    ckpt = {k: v for k, v in files.items() if k.startswith("ckpt")}
    return ckpt if ckpt_only else (files, ckpt)


def test_rerun_with_other_model_flags_names_them_and_changes_nothing(tmp_path):
    """--encoder=resnet50 on a ResNet-18 workdir used to fail with a shape-mismatch traceback,
    after overwriting config.json with the failed run's flags."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    flags = tconfig.Config(tconfig.DataConfig(num_past=1, frame_gap=2, target_offset=6,
                                              crop_size=168, resize_short=168),
                           tconfig.ModelConfig(encoder="resnet18"),
                           tconfig.TrainConfig(workdir=str(workdir), batch_size=2))
    (workdir / "config.json").write_text(flags.to_json() + "\n")
    (workdir / "ckpt").mkdir()
    before, _ = _snapshot(workdir)
    result = subprocess.run(train_cmd(workdir, "--encoder=resnet50", "--num_past=2",
                                      "--train_steps=5"),
                            env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (f"error: {workdir} holds a run with other flags: --num_past: 1 (stored) "
                        "vs 2 (given); --encoder: resnet18 (stored) vs resnet50 (given). Rerun "
                        "with the stored values, or use a new --workdir")
    assert _snapshot(workdir)[0] == before and sorted(os.listdir(workdir)) == [
        "ckpt", "config.json"]


def test_cut_shard_during_training_is_named(tmp_path):
    """A shard cut short used to stop training with a bare DataLossError naming no file."""
    from tc_keras.data import prepare, shard_files, synthetic

    synthetic.write_corpus(tmp_path / "corpus", 2, frames=24, size=(168, 168), fps=12, seed=5)
    shards_dir = tmp_path / "shards"
    prepare.prepare(tmp_path / "corpus" / "videos", shards_dir, height=168, workers=1,
                    videos_per_shard=1)
    shard = shard_files.resolve_shards(shards_dir)[1]
    broken_files.cut(shard, 0.5)
    workdir = tmp_path / "run"
    result = subprocess.run(train_cmd(workdir, f"--data={shards_dir}", "--train_steps=3",
                                      "--image_every=0"),
                            env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {shard}: truncated or corrupt after 0 good records"), last
    assert "rerun tools/prepare_vlog.py with the same --input and --out" in last
    # The steps done before the bad record are kept in an intact checkpoint, for the rerun.
    saved = sorted(workdir.glob("ckpt/*.index"))
    assert all(checkpoints.checkpoint_problem(str(p)[:-len(".index")]) is None for p in saved)
    # ... but no encoder.keras that would look like the end of a run.
    assert not (workdir / "encoder.keras").exists()


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_together_and_agree(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workdir = tmp_path / "mw"
    procs, logs = [], []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        # Synchronised BatchNorm, so that the moving statistics agree too (without it each worker
        # keeps its own, as with per-GPU BatchNorm; the trained weights agree either way).
        cmd = train_cmd(workdir, "--train_steps=3", "--checkpoint_every=3", "--strategy=auto",
                        "--batch_size=4", "--image_every=0", "--sync_batchnorm")
        # Logs go to files: a full stderr pipe would block one worker and stall both.
        logs.append(open(tmp_path / f"worker{index}.log", "w+"))
        procs.append(subprocess.Popen(cmd, env=env(TF_CONFIG=tf_config), stdout=subprocess.DEVNULL,
                                      stderr=logs[-1], text=True))
    errs = []
    for p, log in zip(procs, logs):
        try:
            p.wait(timeout=420)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        log.seek(0)
        errs.append(log.read())
        assert p.returncode == 0, errs[-1][-3000:]
    assert "on 2 replica(s)" in errs[0]
    chief = keras.saving.load_model(workdir / "encoder.keras")
    other = keras.saving.load_model(workdir / "workers" / "worker-1" / "encoder.keras")
    init = keras.Sequential([keras.Input((None, None, 3)), type(chief.layers[0])(depth=18)])
    moved = False
    for a, b in zip(chief.get_weights(), other.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, c in zip(chief.get_weights(), init.get_weights()):
        moved |= a.shape == c.shape and not np.allclose(a, c)
    assert moved


def test_data_list_of_videos_is_prepared_into_the_workdir(tmp_path):
    """--data names raw videos (a .txt list): they are prepared into <workdir>/prepared/<name>."""
    from tc_keras.data import synthetic
    from tc_keras.train import sources

    synthetic.write_corpus(tmp_path / "corpus", 2, frames=20, size=(48, 48), fps=12, seed=4)
    listing = tmp_path / "videos.txt"
    listing.write_text("corpus/videos/vid_0000.mp4\ncorpus/videos/vid_0001.mp4\n")
    config = tconfig.Config(tconfig.DataConfig(data=f"{listing}"), tconfig.ModelConfig(),
                            tconfig.TrainConfig(workdir=str(tmp_path / "run")))
    shards = sources.resolve_data(config, tmp_path / "run")
    assert shards and all("/run/prepared/videos/" in s for s in shards)
    assert sources.count_videos(shards) == 2
    assert sources.resolve_data(config, tmp_path / "run") == shards  # prepared once, then reused


def test_rotation_ramp_callback_follows_the_step():
    import tensorflow as tf

    from tc_keras.train.monitor import RotationRamp

    class _Model:  # what the callback reads: the optimizer's step counter
        class optimizer:
            iterations = tf.Variable(0, dtype=tf.int64)

    scale = tf.Variable(0.0)
    ramp = RotationRamp(scale, ramp_steps=10)
    ramp.set_model(_Model())
    for step, expected in ((0, 0.0), (5, 0.5), (10, 1.0), (25, 1.0)):
        _Model.optimizer.iterations.assign(step)
        ramp.on_train_batch_begin(0)
        assert float(scale.numpy()) == pytest.approx(expected)


def test_phases_train_the_tracker_alone_first_and_resume_mid_phase():
    from tc_keras.train.trainer import phases

    assert phases(0, 10, 0) == [(False, 10)]
    assert phases(0, 10, 4) == [(True, 4), (False, 10)]
    assert phases(3, 10, 4) == [(True, 4), (False, 10)]  # resumed inside the frozen phase
    assert phases(4, 10, 4) == [(False, 10)]
    assert phases(0, 3, 4) == [(True, 3), (False, 3)]  # the frozen phase ends the run


def test_cpu_has_bfloat16_reads_cpuinfo_flags(tmp_path):
    """--mixed_precision warns on CPUs that only emulate bfloat16: the check reads the flags."""
    from tc_keras.train.trainer import cpu_has_bfloat16

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert not cpu_has_bfloat16(info)
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_bfloat16(info)
    info.write_text("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert cpu_has_bfloat16(info)
    assert not cpu_has_bfloat16(tmp_path / "missing")


WALK_TINY = ["--objective=walk", "--data=synthetic", "--synthetic_videos=4",
             "--synthetic_frames=12", "--synthetic_size=48", "--crop_size=32",
             "--resize_short=32", "--node_patch=16", "--node_stride=8", "--clip_len=3",
             "--batch_size=2", "--log_every=1", "--shuffle_buffer=4", "--strategy=default"]


@pytest.mark.slow
def test_walk_objective_trains_resumes_and_a_rerun_with_the_cycle_is_refused(tmp_path):
    workdir = tmp_path / "walk"
    cmd = [sys.executable, "-m", "tc_keras.train", f"--workdir={workdir}", *WALK_TINY]
    first = subprocess.run(cmd + ["--train_steps=2"], env=env(), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    stored = json.loads((workdir / "config.json").read_text())
    assert stored["model"]["objective"] == "walk" and stored["walk"]["clip_len"] == 3
    # The walk's defaults where no flag was given (the follow-up work's optimiser).
    assert (stored["train"]["learning_rate"], stored["train"]["beta_1"],
            stored["train"]["grad_clip_norm"]) == (1e-4, 0.9, 0.0)
    resumed = subprocess.run(cmd + ["--train_steps=4"], env=env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {workdir / 'ckpt' / 'ckpt-2'}" in resumed.stderr
    assert "Steps 2..4" in resumed.stderr and (workdir / "ckpt" / "ckpt-4.index").exists()
    assert "Warning" not in resumed.stderr and "All log messages before absl" not in resumed.stderr
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4
    assert {"loss", "acc", "xent_2", "acc_2", "grad_norm"} <= set(rows[-1])
    encoder = keras.saving.load_model(workdir / "encoder.keras")
    assert encoder(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 4, 4, 256)

    before, _ = _snapshot(workdir)
    cycle = subprocess.run(cmd[:4] + TINY + ["--objective=cycle", "--train_steps=4"], env=env(),
                           capture_output=True, text=True, timeout=300)
    assert cycle.returncode == 1 and "Traceback" not in cycle.stderr
    lines = cycle.stderr.strip().splitlines()
    assert len(lines) == 1 and "--objective: walk (stored) vs cycle (given)" in lines[0], lines
    assert _snapshot(workdir)[0] == before

    # --init_from an encoder of another architecture (the cycle's): one line, nothing written.
    from tc_keras.export.encoder_io import save_encoder
    from tc_keras.model.encoder import ResNetEncoder

    save_encoder(ResNetEncoder(depth=18), tmp_path / "cycle_encoder" / "encoder.keras")
    other = tmp_path / "other"
    fresh = subprocess.run(cmd[:3] + [f"--workdir={other}", *WALK_TINY,
                                      f"--init_from={tmp_path / 'cycle_encoder'}"],
                           env=env(), capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 1 and "Traceback" not in fresh.stderr
    assert fresh.stderr.strip().splitlines()[-1].startswith(
        f"error: --init_from {tmp_path / 'cycle_encoder'}: its encoder is ResNet-18, 512-channel "
        "projection, 'same' padding; this run's is ResNet-18, no projection, 'reflect'")
    assert not other.exists()
