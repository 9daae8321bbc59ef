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

VIP part labels (VIP_Fine: Images/<video>/*.jpg, first frame's class ids 0..19 from
Annotations/Category_ids/<video>/, grayscale, 255 void):
  python tools/propagate.py --vip_root VIP_Fine --out results --encoder PATH [--sequences a,b]
  -> results/<video>/<frame>.png (grayscale class ids) for every frame of every video

The protocol: --preset paper|crw|default, and one flag per field of
tc_keras.propagation.presets.PropagationConfig overriding the preset's value (--help lists them
with each preset's values).

Outputs are written into a hidden temporary folder beside the target and renamed into place only
when a video is complete: a folder that exists is complete. User errors (unreadable or truncated
video, frame folder with gaps or mixed sizes, mask of the wrong size, without an object or soft
(anti-aliased: use --threshold), keypoints outside the frames, a .tflite without its runtime)
print one line and exit with status 1. Progress: a bar on a terminal, plain lines otherwise.
"""

from tc_keras import cli

cli.quiet_tensorflow()  # before the imports below load TensorFlow (see tc_keras/cli.py)

import collections
import concurrent.futures
import contextlib
import pathlib
import sys
import time

import keras
import numpy as np
from absl import flags

from tc_keras import atomic
from tc_keras.data import davis, label_io, video_writer, vip
from tc_keras.data import video as video_lib
from tc_keras.export import encoder_flags, encoder_io, runtimes
from tc_keras.propagation import propagate as prop
from tc_keras.propagation import context, protocol_flags, visualize

_VIDEO = flags.DEFINE_string("video", None, "Input video file or folder of numbered frames.")
_LABELS = flags.DEFINE_string(
    "labels", None, "First-frame labels for --video: a mask PNG (indexed/palette with object or "
    "part ids 0..254, e.g. VIP's 20 classes 0..19, 255 void; or grayscale: 0/255 = one object, "
    "or up to 19 ids 1..254 besides 0) or a keypoints JSON ({\"joints\": [[[x, y], ...], ...]} "
    "in pixels; joints[0] used).")
_THRESHOLD = flags.DEFINE_integer(
    "threshold", None, "Binarise grayscale first-frame masks: values >= T are the object, < T "
    "background (a soft, anti-aliased mask is otherwise refused). Indexed (palette) masks keep "
    "their ids. Default: none.", lower_bound=1, upper_bound=255)
_OUT = flags.DEFINE_string("out", None, "Output folder (--video) or results root (--davis_root, "
                           "--vip_root).")
_DAVIS_ROOT = flags.DEFINE_string("davis_root", None, "DAVIS root with JPEGImages/480p and "
                                  "Annotations/480p; propagates every sequence.")
_VIP_ROOT = flags.DEFINE_string(
    "vip_root", None, "VIP root (its VIP_Fine folder) with Images/<video>/ frames and "
    "Annotations/Category_ids/<video>/ part labels (grayscale class ids 0..19, 255 void); "
    "propagates every video's first annotated frame, writing grayscale class ids.")
_SEQUENCES = flags.DEFINE_list("sequences", None, "DAVIS sequences or VIP videos to run "
                               "(default: all).")
_ENCODER = flags.DEFINE_string(
    "encoder", None, f"Feature encoder: {encoder_io.ENCODER_CHOICES}; or an exported model "
    "(tools/export.py: SavedModel folder export/<name>[/<version>] or a .tflite file), whose "
    "embed and propagate signatures then run both the encoder and the label step.")
encoder_flags.define_flags()  # --depth, --seed
protocol_flags.define_flags()  # --preset and one flag per PropagationConfig field
flags.adopt_module_key_flags(encoder_flags)  # listed by --help with this tool's own flags
flags.adopt_module_key_flags(protocol_flags)
_OVERLAY = flags.DEFINE_bool("overlay", None, "Write overlay.mp4 (default: on for --video, off "
                             "for --davis_root).")
_FPS = flags.DEFINE_float("fps", 12.0, "Overlay frame rate for frame folders, frames/s "
                          "(video files keep their own rate; default 12).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing outputs (default: refuse).")

# Frames whose outputs may wait for the writer thread (bounds memory to a few frames).
_WRITE_QUEUE = 4


def frame_names(source, count):
    """Output file stems: the frame file names of a folder, else 00000, 00001, ..."""
    source = pathlib.Path(source)
    if source.is_dir():
        return [p.stem for p in video_lib.list_frame_files(source)]
    return [f"{t:05d}" for t in range(count)]


class Progress:
    """keras.utils.Progbar on a terminal; plain lines every `every` frames otherwise (logs, CI:
    no carriage returns or colour codes)."""

    def __init__(self, total, every=25):
        self.total, self.every, self.count = total, every, 0
        tty = sys.stdout.isatty()
        self.bar = keras.utils.Progbar(total, unit_name="frame") if tty else None
        self.start = time.perf_counter()

    def update(self, count):
        self.count = count
        if self.bar is not None:
            self.bar.update(count)
        elif count % self.every == 0 and count < self.total:
            self._line()

    def done(self):
        if self.bar is None:
            self._line()

    def _line(self):
        rate = (time.perf_counter() - self.start) / max(self.count, 1)
        print(f"  {self.count}/{self.total} frames, {rate:.2f} s/frame", flush=True)


def read_first_mask(labels_path, parts):
    """(ids (H, W), MaskFormat) of a first-frame mask, void pixels as background.

    parts: a dataset's class-id map (VIP), read as stored (`label_io.read_ids`); otherwise a
    user's mask (`label_io.read_mask`, with --threshold).
    """
    if parts:
        ids, fmt = label_io.read_ids(labels_path)
        return np.where(ids == vip.VOID_ID, 0, ids).astype(np.uint8), fmt
    ids, fmt = label_io.read_mask(labels_path, _THRESHOLD.value)
    ids, _ = label_io.split_void(ids, fmt)  # void (255 in a palette mask) = background
    return ids, fmt


def run_video(source, labels_path, out_dir, embed, config, overlay, steps=context.KERAS,
              parts=False):
    """Propagates one video's first-frame labels into `out_dir` (atomically)."""
    info = video_lib.video_info(source)
    names = frame_names(source, info["frames"])
    frames = video_lib.prefetched(video_lib.iter_frames(source))  # decoding runs ahead
    try:
        size = (info["height"], info["width"])
        keypoints = pathlib.Path(labels_path).suffix.lower() == ".json"
        if keypoints:
            joints_all, meta = label_io.read_keypoints(labels_path)
            first = joints_all[0]
            if not np.isfinite(first).all(axis=-1).any():
                raise label_io.LabelError(f"{labels_path}: no joint is annotated in frame 0")
            label_io.check_keypoints(labels_path, first, size, meta.get("joint_names"))
            stream = prop.propagate_keypoints(frames, first, embed, config, steps)
        else:
            ids, fmt = read_first_mask(labels_path, parts)
            label_io.check_mask(labels_path, ids, size)
            stream = prop.propagate_mask(frames, ids, embed, config, steps)
        fps = info["fps"] or _FPS.value
        bar = Progress(len(names))
        all_joints = []
        out_dir = pathlib.Path(out_dir)
        if out_dir.exists() and not _OVERWRITE.value:
            raise ValueError(f"{out_dir}: already exists (use --overwrite to replace it)")
        with atomic.Staged(out_dir, directory=True) as tmp:
            writer = video_writer.VideoWriter(tmp / "overlay.mp4", fps) if overlay else None

            def write(t, frame, pred):  # runs on the writer thread, one frame after the other
                name = names[t] if t < len(names) else f"{t:05d}"
                if keypoints:
                    (tmp / f"{name}.json").write_text(label_io.keypoints_json(pred[None], meta))
                    shown = visualize.overlay_keypoints(frame, pred)
                else:
                    label_io.write_mask(tmp / f"{name}.png", pred, fmt)
                    shown = visualize.overlay_mask(frame, pred, fmt)
                if writer is not None:
                    writer.write(shown)

            # Writing PNGs and the overlay overlaps the next frames' decoding and propagation.
            with writer or contextlib.nullcontext(), \
                    concurrent.futures.ThreadPoolExecutor(1, "writer") as pool:
                pending = collections.deque()
                for t, (frame, pred) in enumerate(stream):
                    if keypoints:
                        all_joints.append(pred)
                    pending.append(pool.submit(write, t, frame, pred))
                    while len(pending) > _WRITE_QUEUE or (pending and pending[0].done()):
                        pending.popleft().result()  # raises the writer's error, if any
                    bar.update(t + 1)
                while pending:
                    pending.popleft().result()
                bar.done()
            if keypoints:
                (tmp / "keypoints.json").write_text(
                    label_io.keypoints_json(np.stack(all_joints), meta))
    finally:
        frames.close()  # stops the decoding thread (also on an error)


def main(argv):
    del argv
    cli.require("out")
    given = [name for name in ("video", "davis_root", "vip_root") if flags.FLAGS[name].value]
    if len(given) != 1:
        raise ValueError("give one of --video (with --labels), --davis_root or --vip_root")
    cli.require("encoder", hint=f": {encoder_io.ENCODER_CHOICES}")
    config = protocol_flags.config_from_flags(flags.FLAGS)
    if _VIDEO.value:
        if not _LABELS.value:
            raise ValueError("--video needs --labels (first-frame mask PNG or keypoints JSON)")
        jobs = [(_VIDEO.value, _LABELS.value, pathlib.Path(_OUT.value))]
        overlay = True if _OVERLAY.value is None else _OVERLAY.value
    else:
        jobs = []
        root = pathlib.Path(_DAVIS_ROOT.value or _VIP_ROOT.value)
        layout = ((davis.sequences, davis.IMAGES, davis.ANNOTATIONS) if _DAVIS_ROOT.value
                  else (vip.videos, vip.IMAGES, vip.CATEGORIES))
        listing, images, labels = layout
        for seq, frames in listing(root, images, _SEQUENCES.value):
            first = video_lib.list_frame_files(frames)[0]
            jobs.append((frames, root / labels / seq / f"{first.stem}.png",
                         pathlib.Path(_OUT.value) / seq))
        overlay = bool(_OVERLAY.value)
    if runtimes.is_export(_ENCODER.value):
        runtime = runtimes.load_runtime(_ENCODER.value)
        embed, steps = runtime.embed, runtime.label_steps
    else:
        embed = encoder_io.load_encoder(_ENCODER.value,
                                        **encoder_flags.encoder_kwargs(flags.FLAGS))
        steps = context.KERAS
    for source, labels, out in jobs:
        print(f"{source} -> {out}")
        run_video(source, labels, out, embed, config, overlay, steps,
                  parts=bool(_VIP_ROOT.value))


if __name__ == "__main__":
    cli.run(main)
