"""`python -m tc_keras.train --flagfile=configs/vlog.flags`: flags -> config -> strategy -> fit.

`--objective` picks the model and its clips (tc_keras.train.config.build_model, clip_source):
TimeCycle's cycle (the default) or the contrastive random walk; the rest of the run is shared.

The workdir holds everything of a run: `config.json` (the resolved config), `ckpt/` (model,
optimizer, step and config in a tf.train.Checkpoint), `encoder.keras` (the encoder alone, for
tools/propagate.py and tools/export.py), `tb/` (TensorBoard) and, for `--data=synthetic`, `data/`.
Running the same command again resumes from the newest checkpoint that reads back whole, step and
optimizer state intact. The model flags of a rerun must match the workdir's config.json
(tc_keras.train.checkpoints.RESUMABLE lists those that may change; a workdir written before
--bn_groups resumes with the joint batch it trained with); a truncated or corrupt shard is named.
Such problems stop the run with one `error:` line: a rerun with other flags leaves the workdir as
it was; a run stopped by an error keeps the steps it did in a checkpoint, for the rerun,
but does not write `encoder.keras` (only periodic checkpoints and the end of training do).
`--init_from` starts a new run's encoder from another folder's `encoder.keras` (checked before
anything is written; ignored when the workdir resumes).
"""

import json
import math
import os
import pathlib
import signal

import keras
import tensorflow as tf
from absl import app, flags, logging

from tc_keras import atomic
from tc_keras.export.encoder_io import CONFIG_FILE, ENCODER_FILE, save_encoder
from tc_keras.train import checkpoints, sources
from tc_keras.train import config as tconfig
from tc_keras.train.checkpoints import training_checkpoint
from tc_keras.train.monitor import RotationRamp, TrainingMonitor


class RunError(ValueError):
    """A run that cannot go on for a reason the user can fix; the message names the file or flag.
    A ValueError: `tc_keras.cli.run` shows it as one `error:` line."""


def make_strategy(name):
    """tf.distribute strategy for --strategy (see its help)."""
    workers = len(json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", []))
    if name == "auto":
        if workers > 1:
            name = "multiworker"
        elif tf.config.list_physical_devices("GPU"):
            name = "mirrored"
        else:
            name = "default"
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def task_dir(workdir, strategy):
    """The chief writes to the workdir; other workers of a multi-worker run to their own folder."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return pathlib.Path(workdir)
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief" or (task_type == "worker" and task_id == 0
                                and "chief" not in resolver.cluster_spec().as_dict()):
        return pathlib.Path(workdir)
    return pathlib.Path(workdir) / "workers" / f"{task_type}-{task_id}"


def total_steps(config, num_videos):
    t = config.train
    if t.train_steps:
        return t.train_steps
    return max(1, t.epochs * math.ceil(num_videos / t.batch_size))


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU has bfloat16 instructions (Linux /proc/cpuinfo; False when unreadable)."""
    try:
        words = set(pathlib.Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return bool(words & {"avx512_bf16", "amx_bf16"})


def run(config):
    """Trains according to `config` (a tconfig.Config); returns the final step."""
    t = config.train
    keras.utils.set_random_seed(t.seed)
    if config.model.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        if not tf.config.list_physical_devices("GPU") and not cpu_has_bfloat16():
            logging.warning("--mixed_precision on a CPU without AVX-512 BF16 or AMX: bfloat16 "
                            "is emulated there, about 3x slower than float32 (bench/RESULTS.md)")
    strategy = make_strategy(t.strategy)
    out_dir = task_dir(t.workdir, strategy)
    config, taken = checkpoints.resumed_config(out_dir, config)
    if taken:
        logging.warning("%s: resuming with %s, what the run trained with (its config.json "
                        "predates the flag or stores that value; the default differs)", out_dir,
                        " ".join(taken))
    conflicts = checkpoints.config_conflicts(out_dir, config)  # before anything is written
    if conflicts:
        raise RunError(f"{out_dir} holds a run with other flags: {'; '.join(conflicts)}. Rerun "
                       "with the stored values, or use a new --workdir")
    if t.init_from and not tf.train.latest_checkpoint(str(out_dir / "ckpt")):
        try:  # an encoder that does not fit stops a new run before it writes anything
            checkpoints.load_init_encoder(t.init_from, tconfig.build_model(config).encoder)
        except ValueError as e:
            raise RunError(str(e)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out_dir / CONFIG_FILE, config.to_json() + "\n")

    # Each task of a multi-worker run generates its own (identical, seeded) synthetic corpus.
    shards = sources.resolve_data(config, out_dir)
    with sources.naming_bad_shards(shards):
        return _train(config, strategy, out_dir, shards)


def _restore_newest_intact(checkpoint, manager):
    """Restores the newest checkpoint of `manager` whose every tensor reads back; returns its path
    (None for a fresh run). Each one that does not is named in a warning; none raises RunError."""
    bad = []
    for path in reversed(manager.checkpoints):
        problem = checkpoints.checkpoint_problem(path)
        if problem is None:
            checkpoint.restore(path).expect_partial()
            logging.info("Resumed from %s", path)
            return path
        logging.warning("Cannot restore %s (%s); trying the checkpoint before it", path, problem)
        bad.append(f"{pathlib.Path(path).name} ({problem})")
    if bad:
        raise RunError(f"{manager.directory}: no checkpoint restores: {'; '.join(bad)}. Move "
                       "that folder away to start the run again from step 0")
    return None


def _train(config, strategy, out_dir, shards):
    t = config.train
    num_videos = sources.count_videos(shards)
    steps = total_steps(config, num_videos)
    logging.info("%d shard(s), %d videos, %d steps of %d clips on %d replica(s)", len(shards),
                 num_videos, steps, t.batch_size, strategy.num_replicas_in_sync)

    # ---- build: the model and its optimizer, under the strategy
    with strategy.scope():
        model = tconfig.build_model(config)
        model.build_from_crop()
        model.compile(optimizer=keras.optimizers.Adam(tconfig.learning_rate(config),
                                                      beta_1=t.beta_1, beta_2=t.beta_2))

    # ---- restore: the newest checkpoint that reads back whole; `save` writes the next one
    # The config travels inside the checkpoint (a plain local variable: strings cannot be mirrored).
    checkpoint = training_checkpoint(
        model, config=tf.Variable(config.to_json(), trainable=False))
    manager = tf.train.CheckpointManager(checkpoint, str(out_dir / "ckpt"), max_to_keep=3)
    if _restore_newest_intact(checkpoint, manager) is None and t.init_from:
        try:
            logging.info("Encoder from %s", checkpoints.init_encoder(model.encoder, t.init_from))
        except ValueError as e:
            raise RunError(str(e)) from None
    step = int(model.optimizer.iterations.numpy())
    if step >= steps:
        logging.info("Already at step %d of %d: nothing to do", step, steps)
        return step

    def save(reason, encoder=True):
        path = manager.save(checkpoint_number=int(model.optimizer.iterations.numpy()))
        if encoder:
            save_encoder(model.encoder, out_dir / ENCODER_FILE)
        logging.info("Saved %s (%s)", path, reason)

    # ---- callbacks: log lines, TensorBoard, periodic checkpoints, the rotation ramp
    monitor = TrainingMonitor(save, out_dir / "tb", log_every=t.log_every,
                              checkpoint_every=t.checkpoint_every, image_every=t.image_every,
                              vis_batch=sources.vis_batch(config, shards)
                              if t.image_every and config.model.objective == "cycle" else None)
    rotation_scale, callbacks = _with_rotation_ramp(config, step, [monitor])

    # ---- train: phase by phase (encoder frozen, then trained); SIGTERM stops it as Ctrl-C does
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    finite, failed = True, False
    try:
        for frozen, until in phases(step, steps, t.freeze_encoder_steps):
            if step >= until:
                continue
            model.set_encoder_frozen(frozen)
            logging.info("Steps %d..%d with the encoder %s", step, until,
                         "frozen (tracker or walk head only)" if frozen else "trained")
            data = sources.make_dataset(config, shards, strategy, seed=t.seed + step,
                                        rotation_scale=rotation_scale)
            monitor.stop_at = until
            step = _fit(model, data, callbacks, step, until, t.checkpoint_every)
    except FloatingPointError:
        finite = False
        raise
    except Exception:
        failed = True  # e.g. a bad shard: keep the steps for the rerun, but no encoder.keras
        raise
    finally:
        # ---- save on exit: the steps since the last checkpoint (no encoder.keras if it failed)
        signal.signal(signal.SIGTERM, previous)
        done = int(model.optimizer.iterations.numpy())
        if finite and done != monitor.last_saved:
            save("exit", encoder=not failed)
        monitor.close()
    return step


def phases(step, steps, freeze_encoder_steps):
    """[(encoder frozen, until step)]: the tracker alone for the first freeze_encoder_steps
    steps (those not done yet), then end to end up to `steps`."""
    phases = []
    if step < freeze_encoder_steps:
        phases.append((True, min(freeze_encoder_steps, steps)))
    phases.append((False, steps))
    return phases


def _fit(model, data, callbacks, step, until, checkpoint_every):
    """Fits from `step` to `until` (where the monitor stops it) in epochs of at most
    `checkpoint_every` steps; returns the step reached."""
    per_epoch = min(checkpoint_every, until - step)
    # shuffle=False: the dataset shuffles itself (fit's default True only warns).
    model.fit(data, epochs=math.ceil((until - step) / per_epoch), steps_per_epoch=per_epoch,
              callbacks=callbacks, verbose=0, shuffle=False)
    return int(model.optimizer.iterations.numpy())


def _with_rotation_ramp(config, step, callbacks):
    """(rotation scale variable the pipeline reads, callbacks): with --rotation_ramp_steps, a
    RotationRamp first, the scale starting where a resumed run left it; else (None, callbacks)."""
    ramp_steps = config.data.rotation_ramp_steps
    if not ramp_steps:
        return None, callbacks
    scale = tf.Variable(min(1.0, step / ramp_steps), trainable=False, name="rotation_scale")
    return scale, [RotationRamp(scale, ramp_steps), *callbacks]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
    """The absl main of `python -m tc_keras.train`, run by `tc_keras.cli.run`: user errors (a bad
    flag value, missing or unusable data, a workdir of another run) are ValueErrors or OSErrors,
    which it shows as one `error:` line; so is a non-finite loss."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = tconfig.Config.from_flags(flags.FLAGS)
    try:
        step = run(config)
    except FloatingPointError as e:  # the monitor stopped the run (its message says why)
        raise RunError(str(e)) from None
    next_steps(config.train.workdir, step)


def next_steps(workdir, step):
    """Says where the encoder is and the commands that use it (the end of a run)."""
    encoder = pathlib.Path(workdir) / ENCODER_FILE
    if not encoder.is_file():
        return
    logging.info("Done at step %d: encoder in %s", step, encoder)
    name = pathlib.Path(workdir).name
    print(f"Training done (step {step}). Encoder: {encoder}\n"
          "Next, propagate a first-frame mask through a video, or export the encoder:\n"
          f"  python tools/propagate.py --video clip.mp4 --labels first_mask.png --out out/{name} "
          f"--encoder {workdir}\n"
          f"  python tools/export.py --checkpoint {workdir} --out export/{name}", flush=True)

