r"""Propagates first-frame labels (masks or keypoints) through videos by feature affinity.

One video:
  python tools/propagate.py --video clip.mp4 --labels first_mask.png --out out/clip \
      --encoder random --depth 18
  -> out/clip/00000.png ... (indexed PNGs with the input's palette and size), out/clip/overlay.mp4
  python tools/propagate.py --video frames/ --labels joints.json --out out/kp --encoder identity
  -> out/kp/00000.json ... (joints per frame), out/kp/keypoints.json (all frames), overlay.mp4

Through an exported model (tools/export.py): its embed AND propagate* signatures do the work,
so Keras, SavedModel and TFLite give the same masks:
  python tools/propagate.py --video clip.mp4 --labels first_mask.png --out out/clip \
      --encoder export/timecycle            # or export/timecycle/1, or export/timecycle.tflite

A DAVIS dataset (JPEGImages/480p/<seq>/*.jpg, first mask from Annotations/480p/<seq>/):
  python tools/propagate.py --davis_root DAVIS --out results --encoder PATH [--sequences a,b]
  -> results/<seq>/<frame>.png for every frame of every sequence

Outputs are written into a hidden temporary folder beside the target and renamed into place only
when a video is complete: a folder that exists is complete. User errors (unreadable video, frame
folder with gaps or mixed sizes, mask of the wrong size or without an object) print one line and
exit with status 1.
"""

import contextlib
import dataclasses
import os
import pathlib
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tc_keras import export as export_lib  # noqa: E402
from tc_keras import label_io  # noqa: E402
from tc_keras import propagate as prop  # noqa: E402
from tc_keras.data import video as video_lib  # noqa: E402

_VIDEO = flags.DEFINE_string("video", None, "Input video file or folder of numbered frames.")
_LABELS = flags.DEFINE_string(
    "labels", None, "First-frame labels for --video: a mask PNG (indexed/palette with object ids, "
    "or 0/255 grayscale) or a keypoints JSON (format of jhmdb-catch/joints.json; joints[0] used).")
_OUT = flags.DEFINE_string("out", None, "Output folder (--video) or results root (--davis_root).")
_DAVIS_ROOT = flags.DEFINE_string("davis_root", None, "DAVIS root with JPEGImages/480p and "
                                  "Annotations/480p; propagates every sequence.")
_SEQUENCES = flags.DEFINE_list("sequences", None, "DAVIS sequences to run (default: all).")
_ENCODER = flags.DEFINE_string(
    "encoder", None, f"Feature encoder: {prop.ENCODER_CHOICES}; or an exported model "
    "(tools/export.py: SavedModel folder export/<name>[/<version>] or a .tflite file), whose "
    "embed and propagate signatures then run both the encoder and the label step.")
_DEPTH = flags.DEFINE_enum("depth", "18", ["18", "50"], "ResNet depth for --encoder random or "
                           ".weights.h5 files (default 18).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for --encoder random (default 0).")
_PRESET = flags.DEFINE_enum("preset", "default", sorted(prop.PRESETS),
                            "Propagation protocol; the flags below override single fields.")
_SIZE = flags.DEFINE_integer("size", None, "Input size in px: short side, or side with --square; "
                             "0 = native resolution (default: from the preset).")
_SQUARE = flags.DEFINE_bool("square", None, "Resize frames to size x size (default: preset).")
_CONTEXT = flags.DEFINE_integer("context", None, "Previous frames kept as context besides the "
                                "first frame (default: preset).")
_RADIUS = flags.DEFINE_string("radius", None, "Spatial radius in feature cells for short-term "
                              "frames, or 'none' (default: preset).")
_TOPK = flags.DEFINE_integer("topk", None, "Top-k context positions per query (default: preset).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Softmax temperature on cosine "
                                  "similarities (default: preset).")
_JOINT_TOPK = flags.DEFINE_bool("joint_topk", None, "Top-k over all context frames jointly "
                                "(else per frame) (default: preset).")
_MINMAX = flags.DEFINE_bool("minmax", None, "Min-max normalise labels per class after each "
                            "step (default: preset).")
_OVERLAY = flags.DEFINE_bool("overlay", None, "Write overlay.mp4 (default: on for --video, off "
                             "for --davis_root).")
_FPS = flags.DEFINE_float("fps", 12.0, "Overlay frame rate for frame folders, frames/s "
                          "(video files keep their own rate; default 12).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing outputs (default: refuse).")

USER_ERRORS = (ValueError, OSError)  # VideoError and LabelError are ValueErrors


def config_from_flags():
    """The preset with the protocol flags that were given applied on top."""
    overrides = {}
    if _SIZE.value is not None:
        overrides["size"] = _SIZE.value or None
    for name, flag in (("square", _SQUARE), ("context", _CONTEXT), ("topk", _TOPK),
                       ("temperature", _TEMPERATURE), ("joint_topk", _JOINT_TOPK),
                       ("minmax", _MINMAX)):
        if flag.value is not None:
            overrides[name] = flag.value
    if _RADIUS.value is not None:
        try:
            overrides["radius"] = None if _RADIUS.value.lower() == "none" else float(_RADIUS.value)
        except ValueError:
            raise ValueError(f"--radius {_RADIUS.value}: expected a number or 'none'") from None
    return dataclasses.replace(prop.PRESETS[_PRESET.value], **overrides)


class AtomicDir:
    """Writes into `<parent>/.<name>.partial` and renames it to `target` on success."""

    def __init__(self, target, overwrite):
        self.target = pathlib.Path(target)
        if self.target.exists() and not overwrite:
            raise ValueError(f"{self.target}: already exists (use --overwrite to replace it)")
        self.tmp = self.target.parent / f".{self.target.name}.partial"
        self.overwrite = overwrite

    def __enter__(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.target.exists():
            shutil.rmtree(self.target)
        self.tmp.rename(self.target)
        return False


def frame_names(source, count):
    """Output file stems: the frame file names of a folder, else 00000, 00001, ..."""
    source = pathlib.Path(source)
    if source.is_dir():
        return [p.stem for p in video_lib.list_frame_files(source)]
    return [f"{t:05d}" for t in range(count)]


def run_video(source, labels_path, out_dir, embed, config, overlay, step=None, local_step=None):
    """Propagates one video's first-frame labels into `out_dir` (atomically)."""
    info = video_lib.video_info(source)
    names = frame_names(source, info["frames"])
    frames = video_lib.iter_frames(source)
    size = (info["height"], info["width"])
    keypoints = pathlib.Path(labels_path).suffix.lower() == ".json"
    if keypoints:
        joints_all, meta = label_io.read_keypoints(labels_path)
        first = joints_all[0]
        if not np.isfinite(first).all(axis=-1).any():
            raise label_io.LabelError(f"{labels_path}: no joint is annotated in frame 0")
        stream = prop.propagate_keypoints(frames, first, embed, config, step, local_step)
    else:
        ids, fmt = label_io.read_mask(labels_path)
        ids, _ = label_io.split_void(ids, fmt)  # void (255 in a palette mask) = background
        label_io.check_mask(labels_path, ids, size)
        stream = prop.propagate_mask(frames, ids, embed, config, step, local_step)
    fps = info["fps"] or _FPS.value
    bar = keras.utils.Progbar(len(names), unit_name="frame")
    all_joints = []
    with AtomicDir(out_dir, _OVERWRITE.value) as tmp:
        writer = video_lib.VideoWriter(tmp / "overlay.mp4", fps) if overlay else None
        with writer or contextlib.nullcontext():
            for t, (frame, pred) in enumerate(stream):
                name = names[t] if t < len(names) else f"{t:05d}"
                if keypoints:
                    all_joints.append(pred)
                    (tmp / f"{name}.json").write_text(label_io.keypoints_json(pred[None], meta))
                    shown = label_io.overlay_keypoints(frame, pred)
                else:
                    label_io.write_mask(tmp / f"{name}.png", pred, fmt)
                    shown = label_io.overlay_mask(frame, pred, fmt)
                if writer is not None:
                    writer.write(shown)
                bar.update(t + 1)
        if keypoints:
            (tmp / "keypoints.json").write_text(label_io.keypoints_json(np.stack(all_joints), meta))


def davis_sequences(root):
    root = pathlib.Path(root)
    images = root / "JPEGImages" / "480p"
    if not images.is_dir():
        raise ValueError(f"--davis_root {root}: no JPEGImages/480p folder")
    available = sorted(p.name for p in images.iterdir() if p.is_dir())
    chosen = _SEQUENCES.value or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValueError(f"--davis_root {root}: unknown sequences {', '.join(unknown)}")
    return [(s, images / s, root / "Annotations" / "480p" / s) for s in chosen]


def main(argv):
    del argv
    try:
        if not _OUT.value:
            raise ValueError("--out is required")
        if bool(_VIDEO.value) == bool(_DAVIS_ROOT.value):
            raise ValueError("give either --video (with --labels) or --davis_root")
        if not _ENCODER.value:
            raise ValueError(f"--encoder is required: {prop.ENCODER_CHOICES}")
        config = config_from_flags()
        if _VIDEO.value:
            if not _LABELS.value:
                raise ValueError("--video needs --labels (first-frame mask PNG or keypoints JSON)")
            jobs = [(_VIDEO.value, _LABELS.value, pathlib.Path(_OUT.value))]
            overlay = True if _OVERLAY.value is None else _OVERLAY.value
        else:
            jobs = []
            for seq, frames, masks in davis_sequences(_DAVIS_ROOT.value):
                first = video_lib.list_frame_files(frames)[0]
                jobs.append((frames, masks / f"{first.stem}.png", pathlib.Path(_OUT.value) / seq))
            overlay = bool(_OVERLAY.value)
        if export_lib.is_export(_ENCODER.value):
            runtime = export_lib.load_runtime(_ENCODER.value)
            embed, step, local_step = runtime.embed, runtime.step, runtime.local_step
        else:
            embed = prop.load_encoder(_ENCODER.value, int(_DEPTH.value), _SEED.value)
            step = local_step = None
        for source, labels, out in jobs:
            print(f"{source} -> {out}")
            run_video(source, labels, out, embed, config, overlay, step, local_step)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
