"""What does the tracker of a (partly) trained TimeCycle do on real clips? Diagnostics for issue 6.

    python bench/localizer_probe.py --workdir runs/cpu_small/seed0           # latest checkpoint
    python bench/localizer_probe.py --workdir runs/cpu_small/seed0 --checkpoint random

Reads clips of the run's real training videos (<workdir>/prepared/*, or --shards) with the
workdir's clip settings and prints (and with --json writes):

1. Localisation error l_theta of the model's own tracker against the patch's true theta: the
   patch found in its own frame (`self`), the first backward step (`first`, frame t-1, where the
   true position is close to the target's) and the skip-1 cycle (`skip`), next to the error of
   always answering the mean theta of the clips (`mean-theta`).
2. The inlier score (the reference's similarity term, docs/METHOD.md, "Similarity") at the localizer's theta and at
   the true theta, next to chance (1 / number of image positions).
3. A fresh tracker trained for --probe_steps on the encoder's fixed features (BatchNorm on batch
   statistics, as in training) for the supervised self-localisation task and for the skip-1
   cycle alone, with held-out l_theta: how hard the cycle signal is, with the features held fixed.
"""

import json
import pathlib
import time

import numpy as np
from absl import flags

from tc_keras import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]

_WORKDIR = flags.DEFINE_string("workdir", "runs/cpu_small/seed0", "Training run folder "
                               "(config.json, ckpt/).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "Checkpoint name in <workdir>/ckpt (e.g. "
                                  "ckpt-500), 'random' for the initialisation, '' for the latest.")
_SHARDS = flags.DEFINE_string("shards", "", "Shard folder of real clips (default: the run's "
                              "prepared real videos, <workdir>/prepared/*).")
_JSON = flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
_CLIPS = flags.DEFINE_integer("clips", 320, "Clips to read (the last 64 are held out).")
_PROBE_STEPS = flags.DEFINE_integer("probe_steps", 500, "Steps of the fresh-tracker probes (0 = skip).")

HELD_OUT = 64


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from tc_keras.model import losses as tl
    from tc_keras.train import config as tconfig
    from tc_keras.train.checkpoints import load_run_config, restore_training_model
    from tc_keras.data import pipeline
    from tc_keras.model.tracker import Tracker

    workdir = (ROOT / _WORKDIR.value).resolve()
    config = load_run_config(workdir)
    pattern = "*.tfrecord" if _SHARDS.value else "prepared/*/*.tfrecord"
    shard_dir = pathlib.Path(_SHARDS.value) if _SHARDS.value else workdir
    shards = sorted(str(p) for p in shard_dir.glob(pattern))
    if not shards:
        raise FileNotFoundError(f"no .tfrecord shards in {shard_dir / pattern}")
    keras.utils.set_random_seed(0)  # initialisation ("random") and the clips' random placement
    if _CHECKPOINT.value == "random":
        model = tconfig.build_model(config)
        model.build_from_crop()
        name = "random-init"
    else:
        model, path = restore_training_model(workdir, _CHECKPOINT.value)
        name = pathlib.Path(path).name
    data = pipeline.clip_dataset(shards, batch_size=8, shuffle_buffer=64, seed=3,
                                 deterministic=True, **tconfig.clip_kwargs(config))
    cells = model.feature_size
    chance = 1.0 / cells ** 2
    own = {k: [] for k in ("self", "first", "skip", "inlier_theta", "inlier_true")}
    feats = {k: [] for k in ("target", "past", "patch", "theta")}
    for _, batch in zip(range(_CLIPS.value // 8), data):
        out = model(batch, training=True)  # batch statistics, as in training
        theta = batch["theta"]
        own["self"].append(tl.theta_loss(out["theta_self"], theta))
        own["first"].append(tl.theta_loss(out["theta_first"][:, 0], theta))
        own["skip"].append(tl.theta_loss(out["theta_skip"][:, 0], theta))
        aff = out["affinity_first"][:, 0]
        own["inlier_theta"].append(tl.inlier_score(aff, out["theta_first"][:, 0], (cells, cells)))
        own["inlier_true"].append(tl.inlier_score(aff, theta, (cells, cells)))
        feats["target"].append(model.encoder(batch["target"], training=True).numpy())
        feats["past"].append(model.encoder(batch["past"][:, -1], training=True).numpy())
        feats["patch"].append(out["query"].numpy())
        feats["theta"].append(theta.numpy())
    own = {k: float(np.mean(np.concatenate([np.asarray(v) for v in vals])))
           for k, vals in own.items()}
    feats = {k: np.concatenate(v) for k, v in feats.items()}
    thetas = feats["theta"]
    mean_theta = np.broadcast_to(thetas.mean(0, keepdims=True), thetas.shape).astype("float32")
    baseline = float(np.mean(tl.theta_loss(mean_theta, thetas)))
    print(f"\n{name} on {len(thetas)} real clips ({config.data.crop_size} px crops, "
          f"target offset {config.data.target_offset})")
    print(f"  l_theta  self {own['self']:.3f}  first {own['first']:.3f}  skip {own['skip']:.3f}"
          f"  | mean-theta {baseline:.3f}")
    print(f"  inlier   at theta {own['inlier_theta']:.4f}  at true theta {own['inlier_true']:.4f}"
          f"  | chance {chance:.4f}", flush=True)
    if _JSON.value:
        pathlib.Path(_JSON.value).write_text(json.dumps(dict(
            checkpoint=name, clips=len(thetas), mean_theta=baseline, chance=chance, **own),
            indent=1) + "\n")
    if _PROBE_STEPS.value:
        for task in ("self", "skip"):
            probe(task, feats, model, config.train.learning_rate, tl, Tracker, keras, tf)


def probe(task, feats, model, learning_rate, tl, tracker_cls, keras, tf):
    """Trains a fresh tracker on fixed features; prints held-out l_theta along the way."""
    keras.utils.set_random_seed(1)
    cells = model.patch_cells
    tracker = tracker_cls(patch_size=(cells, cells), temperature=model.temperature)
    tracker.build(feats["target"].shape, feats["patch"].shape)
    optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.5)
    train = slice(0, len(feats["theta"]) - HELD_OUT)
    held = slice(len(feats["theta"]) - HELD_OUT, None)
    mean_theta = feats["theta"][train].mean(0, keepdims=True)
    baseline = float(np.mean(tl.theta_loss(
        np.broadcast_to(mean_theta, feats["theta"][held].shape).astype("float32"),
        feats["theta"][held])))

    def error(target, past, patch, theta):
        if task == "self":
            return tl.theta_loss(tracker(target, patch)["theta"], theta)
        return tl.theta_loss(tracker(target, tracker(past, patch)["features"])["theta"], theta)

    @tf.function
    def step(target, past, patch, theta):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(error(target, past, patch, theta))
        grads = tape.gradient(loss, tracker.trainable_variables)
        optimizer.apply_gradients(zip(grads, tracker.trainable_variables))

    rng = np.random.default_rng(0)
    marks, start = [], time.perf_counter()
    keys = ("target", "past", "patch", "theta")
    for i in range(1, _PROBE_STEPS.value + 1):
        idx = rng.choice(np.arange(len(feats["theta"]))[train], 8, replace=False)
        step(*(feats[k][idx] for k in keys))
        if i in (50, 100, 250, 500, 1000, 2000) or i == _PROBE_STEPS.value:
            marks.append(f"{i}: {float(np.mean(error(*(feats[k][held] for k in keys)))):.3f}")
    print(f"  fresh tracker, {task:<4} task, held-out l_theta after steps "
          f"{'  '.join(dict.fromkeys(marks))}  | mean-theta {baseline:.3f} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    cli.run(main)
