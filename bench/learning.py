"""Does training learn correspondence? Train at laptop scale, then compare with the baselines.

    python bench/learning.py                               # prepare, train, evaluate (about 1 h)
    python bench/learning.py --skip_train                  # evaluate an existing workdir
    python bench/learning.py --workdir runs/cpu_small --train_flags=--train_steps=200

1. Training data in <workdir>: the real clips of ../shared/data/real-clips and the DAVIS dev
   sequences in --train_sequences (written as 24 fps mp4s, prepared to 12 fps shards), plus the
   synthetic corpus (`--data=...,synthetic`).
2. Trains with `python -m tc_keras.train --flagfile=configs/cpu_small.flags` (resumes if the
   workdir already has checkpoints).
3. Propagates with identity, random-init (same architecture, seed 0), the same random-init
   encoder with its BatchNorm statistics re-estimated on training clips (so that a margin is not
   just BatchNorm statistics) and the trained encoder on the DAVIS dev sequences that training
   did not see (--eval_sequences) and on the JHMDB clip, at the same protocol for all (--size),
   and prints one table: J, F, J&F, PCK@0.1/0.2.
4. Saves the loss curve (every term over steps, from <workdir>/metrics.jsonl) as
   <workdir>/loss_curve.png and the table as <workdir>/learning.json.
"""

import json
import os
import pathlib
import subprocess
import sys

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

_WORKDIR = flags.DEFINE_string("workdir", "runs/cpu_small", "Training run folder.")
_TRAIN_SEQS = flags.DEFINE_list("train_sequences", ["blackswan", "car-shadow"],
                                "DAVIS dev sequences used for training (left out of evaluation).")
_EVAL_SEQS = flags.DEFINE_list("eval_sequences", ["motocross-jump", "scooter-black"],
                               "DAVIS dev sequences to evaluate on (unseen in training).")
_SIZE = flags.DEFINE_integer("size", 240, "Propagation input size (short side, px) for all "
                             "encoders; 240 keeps the evaluation to minutes on 2 cores.")
_SKIP_TRAIN = flags.DEFINE_bool("skip_train", False, "Only evaluate the existing workdir.")
_TRAIN_FLAGS = flags.DEFINE_list("train_flags", [], "Extra flags for tc_keras.train.")


def run(cmd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, env=env, cwd=ROOT)


def prepare_real(workdir):
    """Real training videos -> <workdir>/real_shards (kept between runs)."""
    from tc_keras.data import prepare, video

    videos = workdir / "real_videos"
    videos.mkdir(parents=True, exist_ok=True)
    listed = sorted(str(p) for p in (SHARED / "real-clips").glob("*.mp4"))
    for seq in _TRAIN_SEQS.value:
        out = videos / f"davis_{seq}.mp4"
        if not out.exists():
            frames = video.iter_frames(SHARED / "davis2016-dev" / "JPEGImages" / "480p" / seq)
            video.write_video(out, frames, fps=24)  # DAVIS is 24 fps
        listed.append(str(out))
    (workdir / "real_videos.txt").write_text("\n".join(listed) + "\n")
    prepare.prepare(workdir / "real_videos.txt", workdir / "real_shards", workers=2)
    return workdir / "real_shards"


def random_with_batchnorm_statistics(workdir, shards, batches=40):
    """<workdir>/random_bn/encoder.keras: `--encoder random` (seed 0) with BatchNorm moving
    statistics re-estimated on `batches` training batches (frames only; no weight changes)."""
    out = workdir / "random_bn" / "encoder.keras"
    if out.exists():
        return out.parent
    import keras
    import tensorflow as tf

    from tc_keras.checkpoints import load_encoder_model, load_run_config, save_encoder
    from tc_keras.data import pipeline
    from tc_keras.train import clip_kwargs

    config = load_run_config(workdir)
    files = sorted(str(p) for p in pathlib.Path(shards).glob("*.tfrecord"))
    data = pipeline.clip_dataset(files, batch_size=8, shuffle_buffer=64, seed=5,
                                 **clip_kwargs(config))
    encoder = load_encoder_model("random", depth=18, seed=0)
    norms = [layer for layer in encoder._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.8  # forget the initial (0, 1) statistics within a few batches
    for _, batch in zip(range(batches), data):
        encoder(tf.concat([batch["target"], batch["past"][:, -1]], 0), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    save_encoder(encoder, out)
    return out.parent


def evaluate(workdir, name, encoder):
    """dict of J, F, J&F on the eval sequences and PCK on the JHMDB clip for one encoder."""
    out = workdir / "eval" / name
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


SMOOTH = 5


def loss_curve(metrics_path, png_path):
    """Every loss term over steps, one panel per term (logged values light, running mean dark),
    drawn with Pillow."""
    from PIL import Image, ImageDraw

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    terms = [k for k in ("loss", "long", "skip", "sim", "self", "grad_norm") if k in rows[0]]
    w, h, pad = 420, 220, 36
    img = Image.new("RGB", (w * len(terms), h), "white")
    draw = ImageDraw.Draw(img)
    steps = [r["step"] for r in rows]
    for i, term in enumerate(terms):
        vals = [r[term] for r in rows]
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


def main(argv):
    del argv
    if not SHARED.is_dir():
        sys.exit(f"error: {SHARED} not found (the real clips and DAVIS dev data live there)")
    workdir = (ROOT / _WORKDIR.value).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if not _SKIP_TRAIN.value:
        shards = prepare_real(workdir)
        run([sys.executable, "-m", "tc_keras.train", "--flagfile=configs/cpu_small.flags",
             f"--workdir={workdir}", f"--data={shards},synthetic", *_TRAIN_FLAGS.value])
    random_bn = random_with_batchnorm_statistics(workdir, workdir / "real_shards")
    table = {name: evaluate(workdir, name, enc) for name, enc in
             (("identity", "identity"), ("random-init", "random"),
              ("random+BN", str(random_bn)), ("trained", str(workdir)))}
    (workdir / "learning.json").write_text(json.dumps(table, indent=2) + "\n")
    if (workdir / "metrics.jsonl").exists():
        loss_curve(workdir / "metrics.jsonl", workdir / "loss_curve.png")
    print(f"\nDAVIS dev, unseen sequences {','.join(_EVAL_SEQS.value)} at size {_SIZE.value}; "
          f"JHMDB catch clip (native size)")
    print(f"  {'encoder':<12} {'J':>6} {'F':>6} {'J&F':>6} {'PCK@.1':>7} {'PCK@.2':>7}")
    for name, r in table.items():
        print(f"  {name:<12} {r['J']:6.3f} {r['F']:6.3f} {r['J&F']:6.3f} {r['PCK@0.1']:7.3f} "
              f"{r['PCK@0.2']:7.3f}")
    print(f"  loss curve: {workdir / 'loss_curve.png'}")


if __name__ == "__main__":
    app.run(main)
