"""Does training learn correspondence? Train at laptop scale, then compare with the baselines.

    python bench/learning.py                          # 2 seeds of configs/cpu_small.flags (~50 min)
    python bench/learning.py --objective both         # and of configs/walk_small.flags (~100 min)
    python bench/learning.py --skip_train             # evaluate the existing runs again
    python bench/learning.py --workdir runs/ablation --seeds 0 --nobaselines \
        --train_flags=--nosim_theta_grad              # one ablation (flags on top of the config)

1. Trains `python -m tc_keras.train --flagfile=<the objective's flagfile> --workdir=<run>
   --seed=<s>` for each objective (--objective: cycle = configs/cpu_small.flags, runs in
   <workdir>/seed<s>; walk = configs/walk_small.flags, the contrastive random walk, runs in
   <workdir>/walk_seed<s>) and each of --seeds (resumes when the run has checkpoints). The two
   flagfiles train on the same videos (configs/cpu_small_videos.txt, prepared into each run's
   workdir, plus the same synthetic videos) for about the same wall time on a 2-core CPU; nothing
   here overrides them but --train_flags (given to every run).
2. Asks each trained tracker (cycle runs) what it does on the real training clips
   (bench/localizer_probe.py): l_theta of the patch found in its own frame, in frame t-1 and over
   the skip-1 cycle against always answering the mean theta, and the inlier score at the
   localizer's theta against chance.
3. Propagates with identity, random-init (each objective's architecture, seed 0), the cycle's
   random-init encoder with its BatchNorm statistics re-estimated on training clips (so that a
   margin is not just BatchNorm statistics) and each trained encoder, on the DAVIS dev sequences
   training did not see (--eval_sequences) and on the JHMDB clip, with one protocol for all
   (--size), and scores them with tools/evaluate.py (DAVIS-2017 J/F, the follow-up work's PCK).
4. Prints one table (each seed, each objective's mean and spread, the training minutes read from
   the run's metrics.jsonl) and writes <workdir>/learning.json and each run's loss curve
   <run>/loss_curve.png.
"""

import json
import os
import pathlib
import subprocess
import sys

from absl import flags

from tc_keras import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

_WORKDIR = flags.DEFINE_string("workdir", "runs/cpu_small", "Folder of the runs (one per seed).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Training seeds.")
_EVAL_SEQS = flags.DEFINE_list("eval_sequences", ["motocross-jump", "scooter-black"],
                               "DAVIS dev sequences to evaluate on (unseen in training).")
_SIZE = flags.DEFINE_integer("size", 240, "Propagation input size (short side, px) for all "
                             "encoders; 240 keeps the evaluation to minutes on 2 cores.")
_SKIP_TRAIN = flags.DEFINE_bool("skip_train", False, "Only evaluate the existing runs.")
_BASELINES = flags.DEFINE_bool("baselines", True, "Also evaluate identity, random-init and "
                               "random-init with re-estimated BatchNorm statistics.")
_TRAIN_FLAGS = flags.DEFINE_list("train_flags", [], "Extra flags for tc_keras.train, on top of "
                                 "each objective's flagfile.")
_OBJECTIVE = flags.DEFINE_enum("objective", "cycle", ["cycle", "walk", "both"], "Which objective "
                               "to train and evaluate: TimeCycle's cycle, the contrastive random "
                               "walk, or both on the same videos.")

# Each objective's laptop-scale run: about the same wall time on the same videos.
FLAGFILES = {"cycle": "configs/cpu_small.flags", "walk": "configs/walk_small.flags"}
SMOOTH = 5
COLUMNS = ("J", "F", "J&F", "PCK@0.1", "PCK@0.2", "minutes", "self", "first", "skip",
           "mean-theta", "inlier", "chance")
LOSS_TERMS = ("loss", "long", "skip", "sim", "self", "acc", "grad_norm")


def run(cmd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, env=env, cwd=ROOT)


def real_shards(run_dir):
    """The shards of the real (prepared) training videos of a run."""
    shards = sorted(str(p) for p in (run_dir / "prepared").glob("*/*.tfrecord"))
    if not shards:
        raise FileNotFoundError(f"{run_dir}/prepared holds no shards of real videos")
    return shards


def random_with_batchnorm_statistics(out_dir, run_dir, batches=40):
    """<out_dir>/encoder.keras: `--encoder random` (seed 0) with BatchNorm moving statistics
    re-estimated on `batches` training batches of `run_dir`'s real clips (no weight changes;
    after 40 batches at the BatchNorm momentum 0.9 the initial statistics weigh 0.9^40 = 1.5%)."""
    out = out_dir / "encoder.keras"
    if out.exists():
        return out_dir
    import tensorflow as tf

    from tc_keras.train import config as tconfig
    from tc_keras.train.checkpoints import load_run_config
    from tc_keras.data import pipeline
    from tc_keras.export.encoder_io import load_encoder_model, save_encoder

    config = load_run_config(run_dir)
    data = pipeline.clip_dataset(real_shards(run_dir), batch_size=8, shuffle_buffer=64, seed=5,
                                 **tconfig.clip_kwargs(config))
    encoder = load_encoder_model("random", depth=18, seed=0)
    for _, batch in zip(range(batches), data):
        encoder(tf.concat([batch["target"], batch["past"][:, -1]], 0), training=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_encoder(encoder, out)
    return out_dir


def random_walk_encoder(out_dir):
    """<out_dir>/encoder.keras: the contrastive walk's encoder (ResNet-18, no projection, reflect
    padding) freshly initialised with seed 0, as a walk run starts."""
    out = out_dir / "encoder.keras"
    if not out.exists():
        import keras

        from tc_keras.export.encoder_io import save_encoder
        from tc_keras.model.encoder import ResNetEncoder

        keras.utils.set_random_seed(0)
        save_encoder(ResNetEncoder(depth=18, out_channels=None, padding="reflect"), out)
    return out_dir


def training_minutes(metrics_path):
    """Wall time of a run's training steps (minutes), from its metrics.jsonl: each row's steps
    since the previous row over its steps per second (start-up and evaluation not counted)."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    rows = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])
    seconds, previous = 0.0, 0
    for r in rows:
        seconds += (r["step"] - previous) / max(r["steps_per_second"], 1e-9)
        previous = r["step"]
    return seconds / 60


def evaluate(out, encoder):
    """dict of J, F, J&F on the eval sequences and PCK on the JHMDB clip for one encoder."""
    enc = ["--encoder", encoder] + (["--depth", "18"] if encoder == "random" else [])
    davis = SHARED / "davis2016-dev"
    if not (out / "davis" / "davis_metrics.json").exists():
        run([sys.executable, "tools/propagate.py", "--davis_root", davis, "--out", out / "davis",
             "--sequences", ",".join(_EVAL_SEQS.value), "--size", _SIZE.value, "--overwrite", *enc])
        run([sys.executable, "tools/evaluate.py", "--davis_root", davis, "--results", out / "davis",
             "--sequences", ",".join(_EVAL_SEQS.value)])
    if not (out / "jhmdb" / "pck_metrics.json").exists():
        jhmdb = SHARED / "jhmdb-catch"
        run([sys.executable, "tools/propagate.py", "--video", jhmdb / "frames", "--labels",
             jhmdb / "joints.json", "--out", out / "jhmdb", "--overlay=false", "--overwrite", *enc])
        run([sys.executable, "tools/evaluate.py", "--jhmdb_joints", jhmdb / "joints.json",
             "--results", out / "jhmdb"])
    d = json.loads((out / "davis" / "davis_metrics.json").read_text())
    p = json.loads((out / "jhmdb" / "pck_metrics.json").read_text())
    return {"J": d["J-Mean"], "F": d["F-Mean"], "J&F": d["J&F-Mean"],
            "PCK@0.1": p["PCK@0.1"], "PCK@0.2": p["PCK@0.2"]}


def probe(run_dir):
    """What the trained tracker does on the run's real clips (bench/localizer_probe.py)."""
    out = run_dir / "probe.json"
    if not out.exists():
        run([sys.executable, "bench/localizer_probe.py", "--workdir", run_dir, "--probe_steps",
             "0", "--json", out])
    p = json.loads(out.read_text())
    return {"self": p["self"], "first": p["first"], "skip": p["skip"],
            "mean-theta": p["mean_theta"], "inlier": p["inlier_theta"], "chance": p["chance"]}


def loss_curve(metrics_path, png_path):
    """Every loss term over steps, one panel per term (logged values light, running mean dark),
    drawn with Pillow. Returns {term: (mean of the first 5 logged points, of the last 5)}."""
    from PIL import Image, ImageDraw

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    # A resumed run logs again the steps after its last checkpoint: keep the latest row per step.
    rows = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])
    terms = [k for k in LOSS_TERMS if k in rows[0]]
    w, h, pad = 420, 220, 36
    img = Image.new("RGB", (w * len(terms), h), "white")
    draw = ImageDraw.Draw(img)
    steps = [r["step"] for r in rows]
    ends = {}
    for i, term in enumerate(terms):
        vals = [r[term] for r in rows]
        ends[term] = (sum(vals[:SMOOTH]) / len(vals[:SMOOTH]), sum(vals[-SMOOTH:]) / len(vals[-SMOOTH:]))
        lo, hi = min(vals), max(vals)
        hi = hi if hi > lo else lo + 1e-9
        x0 = i * w

        def xy(s, v):
            return (x0 + pad + (s - steps[0]) / max(steps[-1] - steps[0], 1) * (w - 2 * pad),
                    h - pad - (v - lo) / (hi - lo) * (h - 2 * pad))
        draw.rectangle([x0 + pad, pad, x0 + w - pad, h - pad], outline="gray")
        draw.line([xy(s, v) for s, v in zip(steps, vals)], fill=(170, 190, 230), width=1)
        # Running mean over `SMOOTH` logged points (each already a mean over log_every steps).
        smooth = [sum(vals[max(0, j - SMOOTH + 1): j + 1]) / (j + 1 - max(0, j - SMOOTH + 1))
                  for j in range(len(vals))]
        draw.line([xy(s, v) for s, v in zip(steps, smooth)], fill="navy", width=2)
        draw.text((x0 + pad, 8), f"{term}  (steps {steps[0]}..{steps[-1]})", fill="black")
        draw.text((x0 + 2, pad - 4), f"{hi:.3g}", fill="black")
        draw.text((x0 + 2, h - pad - 8), f"{lo:.3g}", fill="black")
    img.save(png_path)
    return ends


def summary_row(rows):
    """Mean and spread (max - min) of the trained runs' figures."""
    keys = [k for k in COLUMNS if all(k in r for r in rows)]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    spread = {k: max(r[k] for r in rows) - min(r[k] for r in rows) for k in keys}
    return mean, spread


def print_table(table, header):
    print(f"\n{header}")
    print(f"  {'encoder':<20}" + "".join(f"{c:>11}" for c in COLUMNS))
    for name, row in table.items():
        print(f"  {name:<20}" + "".join(f"{row[c]:11.4f}" if c in row else f"{'':>11}"
                                        for c in COLUMNS))


def run_dir(workdir, objective, seed):
    """A run's folder: <workdir>/seed<s> for the cycle (as before the walk), walk_seed<s>."""
    return workdir / (f"seed{seed}" if objective == "cycle" else f"{objective}_seed{seed}")


def main(argv):
    del argv
    if not SHARED.is_dir():
        raise FileNotFoundError(f"{SHARED} not found (the real clips and DAVIS dev data live "
                                "there)")
    workdir = (ROOT / _WORKDIR.value).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    objectives = ["cycle", "walk"] if _OBJECTIVE.value == "both" else [_OBJECTIVE.value]
    seeds = [int(s) for s in _SEEDS.value]
    runs = {(o, s): run_dir(workdir, o, s) for o in objectives for s in seeds}
    if not _SKIP_TRAIN.value:
        for (objective, seed), path in runs.items():
            run([sys.executable, "-m", "tc_keras.train", f"--flagfile={FLAGFILES[objective]}",
                 f"--workdir={path}", f"--seed={seed}", *_TRAIN_FLAGS.value])
    table, curves = {}, {}
    if _BASELINES.value:
        baselines = [("identity", "identity")]
        if "cycle" in objectives:
            random_bn = random_with_batchnorm_statistics(workdir / "random_bn",
                                                         runs["cycle", seeds[0]])
            baselines += [("random-init", "random"), ("random+BN", str(random_bn))]
        if "walk" in objectives:
            baselines += [("walk random-init", str(random_walk_encoder(workdir / "random_walk")))]
        for name, encoder in baselines:
            table[name] = evaluate(workdir / "eval" / name, encoder)
    for objective in objectives:
        prefix = "trained" if len(objectives) == 1 else objective
        for seed in seeds:
            path = runs[objective, seed]
            row = evaluate(path / "eval", str(path))
            if objective == "cycle":
                row.update(probe(path))
            if (path / "metrics.jsonl").exists():
                row["minutes"] = training_minutes(path / "metrics.jsonl")
                curves[f"{prefix} seed {seed}"] = loss_curve(path / "metrics.jsonl",
                                                             path / "loss_curve.png")
            table[f"{prefix} seed {seed}"] = row
        if len(seeds) > 1:
            table[f"{prefix} mean"], table[f"{prefix} spread"] = summary_row(
                [table[f"{prefix} seed {seed}"] for seed in seeds])
    (workdir / "learning.json").write_text(json.dumps(
        {"table": table, "loss_terms_first_last": curves, "train_flags": _TRAIN_FLAGS.value,
         "objectives": objectives, "flagfiles": {o: FLAGFILES[o] for o in objectives},
         "seeds": seeds}, indent=2) + "\n")
    print_table(table, f"DAVIS dev, unseen sequences {','.join(_EVAL_SEQS.value)} at size "
                f"{_SIZE.value}; JHMDB catch clip (native size); minutes of training; tracker "
                "(cycle) on real training clips (l_theta: self, first, skip vs mean-theta; "
                "inlier score vs chance)")
    for name, ends in curves.items():
        print(f"  {name} loss terms, first -> last 5 logged points: " + ", ".join(
            f"{t} {a:.4f} -> {b:.4f}" for t, (a, b) in ends.items()))
    for path in runs.values():
        if (path / "loss_curve.png").exists():
            print(f"  loss curve: {path / 'loss_curve.png'}")


if __name__ == "__main__":
    cli.run(main)
