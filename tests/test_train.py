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

from tc_keras import config as tconfig

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


def test_monitor_stops_on_non_finite_loss_naming_the_step():
    from tc_keras.monitor import TrainingMonitor

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
        if list(ckpt.glob("ckpt-3.index")):
            break
        time.sleep(0.2)
    log.seek(0)
    assert proc.poll() is None, log.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "ckpt" / "ckpt-8.index").exists()
    rerun = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resumed from" in rerun.stderr
    resumed_at = int(rerun.stderr.split("Steps ")[1].split("..")[0])
    assert 3 <= resumed_at < 8  # continued from a checkpoint, not from zero
    assert (workdir / "ckpt" / "ckpt-8.index").exists()
    assert (workdir / "encoder.keras").exists()
    assert json.loads((workdir / "config.json").read_text())["train"]["train_steps"] == 8
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8 and {"loss", "long", "skip", "sim", "sim_1"} <= set(rows[-1])
    # A third run finds the work done.
    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to do" in again.stderr


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
    from tc_keras import train
    from tc_keras.data import synthetic

    synthetic.write_corpus(tmp_path / "corpus", 2, frames=20, size=(48, 48), fps=12, seed=4)
    listing = tmp_path / "videos.txt"
    listing.write_text("corpus/videos/vid_0000.mp4\ncorpus/videos/vid_0001.mp4\n")
    config = tconfig.Config(tconfig.DataConfig(data=f"{listing}"), tconfig.ModelConfig(),
                            tconfig.TrainConfig(workdir=str(tmp_path / "run")))
    shards = train.resolve_data(config, tmp_path / "run")
    assert shards and all("/run/prepared/videos/" in s for s in shards)
    assert train.count_videos(shards) == 2
    assert train.resolve_data(config, tmp_path / "run") == shards  # prepared once, then reused


def test_rotation_ramp_callback_follows_the_step():
    import tensorflow as tf

    from tc_keras.monitor import RotationRamp

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
