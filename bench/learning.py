"""Does training learn correspondence? Train at laptop scale, then compare with the baselines.

    python bench/learning.py                          # 2 seeds of configs/cpu_small.flags (~50 min)
    python bench/learning.py --skip_train             # evaluate the existing runs again
    python bench/learning.py --workdir runs/ablation --seeds 0 --nobaselines \
        --train_flags=--nosim_theta_grad              # one ablation (flags on top of the config)

1. Trains `python -m tc_keras.train --flagfile=configs/cpu_small.flags --workdir=<workdir>/seed<s>
   --seed=<s>` for each of --seeds (resumes when the run has checkpoints). The flagfile names the
   training data (configs/cpu_small_videos.txt, prepared into each run's workdir, plus synthetic
   videos); nothing here overrides it but --train_flags.
2. Asks each trained tracker what it does on the real training clips (bench/localizer_probe.py):
   l_theta of the patch found in its own frame, in frame t-1 and over the skip-1 cycle against
   always answering the mean theta, and the inlier score at the localizer's theta against chance.
3. Propagates with identity, random-init (same architecture, seed 0), the same random-init encoder
   with its BatchNorm statistics re-estimated on training clips (so that a margin is not just
   BatchNorm statistics) and each trained encoder, on the DAVIS dev sequences training did not see
   (--eval_sequences) and on the JHMDB clip, with one protocol for all (--size), and scores them
   with tools/evaluate.py (DAVIS-2017 J/F, the follow-up work's PCK).
4. Prints one table (each seed, and the trained encoders' mean and spread) and writes
   <workdir>/learning.json and each run's loss curve <workdir>/seed<s>/loss_curve.png.
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
                                 "configs/cpu_small.flags.")

FLAGFILE = "configs/cpu_small.flags"
SMOOTH = 5
COLUMNS = ("J", "F", "J&F", "PCK@0.1", "PCK@0.2", "self", "first", "skip", "mean-theta",
           "inlier", "chance")


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
    terms = [k for k in ("loss", "long", "skip", "sim", "self", "grad_norm") if k in rows[0]]
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
    print(f"  {'encoder':<16}" + "".join(f"{c:>10}" for c in COLUMNS))
    for name, row in table.items():
        print(f"  {name:<16}" + "".join(f"{row[c]:10.4f}" if c in row else f"{'':>10}"
                                        for c in COLUMNS))


def main(argv):
    del argv
    if not SHARED.is_dir():
        raise FileNotFoundError(f"{SHARED} not found (the real clips and DAVIS dev data live "
                                "there)")
    workdir = (ROOT / _WORKDIR.value).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    runs = {int(s): workdir / f"seed{int(s)}" for s in _SEEDS.value}
    if not _SKIP_TRAIN.value:
        for seed, run_dir in runs.items():
            run([sys.executable, "-m", "tc_keras.train", f"--flagfile={FLAGFILE}",
                 f"--workdir={run_dir}", f"--seed={seed}", *_TRAIN_FLAGS.value])
    table, curves = {}, {}
    if _BASELINES.value:
        random_bn = random_with_batchnorm_statistics(workdir / "random_bn", next(iter(runs.values())))
        for name, encoder in (("identity", "identity"), ("random-init", "random"),
                              ("random+BN", str(random_bn))):
            table[name] = evaluate(workdir / "eval" / name, encoder)
    for seed, run_dir in runs.items():
        table[f"trained seed {seed}"] = {**evaluate(run_dir / "eval", str(run_dir)),
                                         **probe(run_dir)}
        if (run_dir / "metrics.jsonl").exists():
            curves[seed] = loss_curve(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
    trained = [table[f"trained seed {s}"] for s in runs]
    mean, spread = summary_row(trained)
    if len(trained) > 1:
        table["trained mean"] = mean
        table["trained spread"] = spread
    (workdir / "learning.json").write_text(json.dumps(
        {"table": table, "loss_terms_first_last": curves, "train_flags": _TRAIN_FLAGS.value,
         "seeds": sorted(runs)}, indent=2) + "\n")
    print_table(table, f"DAVIS dev, unseen sequences {','.join(_EVAL_SEQS.value)} at size "
                f"{_SIZE.value}; JHMDB catch clip (native size); tracker on real training clips "
                "(l_theta: self, first, skip vs mean-theta; inlier score vs chance)")
    for seed, ends in curves.items():
        print(f"  seed {seed} loss terms, first -> last 5 logged points: " + ", ".join(
            f"{t} {a:.4f} -> {b:.4f}" for t, (a, b) in ends.items()))
        print(f"  loss curve: {runs[seed] / 'loss_curve.png'}")


if __name__ == "__main__":
    cli.run(main)
