r"""Scores propagation results: DAVIS J/F, JHMDB PCK or VIP part mIoU. Prints a table and writes a
JSON file.

DAVIS (semantics in tc_keras/propagation/metrics.py, as the official DAVIS-2017 evaluation: first and last frame
excluded, void pixels (255 in palette annotations) ignored, J-Mean / F-Mean over all objects,
recall, decay):
  python tools/evaluate.py --davis_root DAVIS --results results [--sequences a,b] [--json out.json]
  reads results/<seq>/<frame>.png for every ground-truth frame Annotations/480p/<seq>/<frame>.png;
  writes results/davis_metrics.json unless --json is given.

Keypoints (PCK@0.1 and @0.2 as the follow-up work's JHMDB evaluation: L = 0.6 x the diagonal of
the visible ground-truth joints' box, frame 0 excluded, the mean over joints of each joint's PCK):
  python tools/evaluate.py --jhmdb_joints joints.json --results out/kp  (or out/kp/keypoints.json)
  writes <results folder>/pck_metrics.json unless --json is given.

VIP parts (mIoU as docs/METHOD.md "VIP mIoU": one confusion matrix over every scored frame of
every video, IoU per class from it, the mean over the classes present in the ground truth or the
predictions; ground-truth void 255 ignored; each video's first frame, given as input, not scored
unless --vip_first_frame):
  python tools/evaluate.py --vip_root VIP_Fine --results results [--sequences a,b]
  reads results/<video>/<frame>.png (class ids 0..19, grayscale or indexed) for every ground-truth
  frame Annotations/Category_ids/<video>/<frame>.png; writes results/vip_metrics.json unless
  --json is given.

A results folder missing frames is an error naming the missing files (exit status 1).
"""

import json
import pathlib

import numpy as np
from absl import flags

from tc_keras import cli
from tc_keras.data import davis, label_io, vip
from tc_keras.propagation import metrics

_DAVIS_ROOT = flags.DEFINE_string("davis_root", None, "DAVIS root with Annotations/480p/<seq>.")
_RESULTS = flags.DEFINE_string("results", None, "Results root (<seq>/<frame>.png), or for "
                               "--jhmdb_joints a keypoints JSON or a folder with keypoints.json.")
_VIP_ROOT = flags.DEFINE_string(
    "vip_root", None, "VIP root (its VIP_Fine folder) with Annotations/Category_ids/<video>/ "
    "ground truth (grayscale class ids 0..19, 255 void); scores part mIoU.")
_VIP_FIRST_FRAME = flags.DEFINE_bool(
    "vip_first_frame", False, "Also score each video's first frame (given to propagation as "
    "input; the follow-up work's test code writes a prediction for it). Default: false.")
_SEQUENCES = flags.DEFINE_list("sequences", None, "Sequences (DAVIS) or videos (VIP) to score "
                               "(default: every one with annotations).")
_JHMDB_JOINTS = flags.DEFINE_string("jhmdb_joints", None, "Ground-truth keypoints JSON "
                                    "(format of jhmdb-catch/joints.json).")
_JSON = flags.DEFINE_string("json", None, "Where to write the metrics JSON (default: inside "
                            "--results).")

_MAX_LISTED = 5


def _missing_error(missing):
    listed = ", ".join(str(p) for p in missing[:_MAX_LISTED])
    more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    return ValueError(f"results are missing {len(missing)} frame(s): {listed}{more}")


def evaluate_davis(root, results, sequences):
    """{summary} for DAVIS masks; raises ValueError naming missing result files."""
    results = pathlib.Path(results)
    plan = {}
    missing = []
    for seq, folder in davis.sequences(root, davis.ANNOTATIONS, sequences):
        gt_files = sorted(folder.glob("*.png"))
        pred_files = [results / seq / p.name for p in gt_files]
        missing += [p for p in pred_files if not p.is_file()]
        plan[seq] = (gt_files, pred_files)
    if missing:
        raise _missing_error(missing)
    scores = {}
    for seq, (gt_files, pred_files) in plan.items():
        gt, void = zip(*(label_io.split_void(*label_io.read_mask(p)) for p in gt_files))
        pred = [label_io.read_mask(p)[0] for p in pred_files]
        for g, p, path in zip(gt, pred, pred_files):
            if g.shape != p.shape:
                raise ValueError(f"{path}: {p.shape[1]}x{p.shape[0]} but the ground truth is "
                                 f"{g.shape[1]}x{g.shape[0]}")
        scores[seq] = metrics.evaluate_frames(gt, pred, metrics.object_ids(gt[0]), void)
    return metrics.davis_summary(scores)


def _check_ids(path, outside, expected):
    """Raises LabelError naming `path` when `outside` (ids out of range) is not empty."""
    if outside.size:
        shown = ", ".join(str(v) for v in np.unique(outside)[:5])
        raise label_io.LabelError(f"{path}: class ids {shown} outside {expected}")


def evaluate_vip(root, results, videos, first_frame=False):
    """{"mIoU", "per_class_IoU", "pixel_accuracy", "frames", "videos"} for VIP part labels.

    One confusion matrix over every scored frame of every video (`metrics.confusion_matrix`),
    mIoU from it (`metrics.mean_iou`: classes with an empty union left out). Raises ValueError
    naming missing result files, a size mismatch or ids outside 0..19.
    """
    results = pathlib.Path(results)
    plan, missing = [], []
    for name, folder in vip.videos(root, vip.CATEGORIES, videos):
        gt_files = sorted(folder.glob("*.png"))[0 if first_frame else 1:]
        for gt in gt_files:
            pred = results / name / gt.name
            missing += [] if pred.is_file() else [pred]
            plan.append((gt, pred))
    if missing:
        raise _missing_error(missing)
    if not plan:
        raise ValueError(f"--vip_root {root}: no frame to score (each video needs ground truth "
                         "beyond its first frame)")
    confusion = np.zeros((vip.NUM_CLASSES, vip.NUM_CLASSES), np.int64)
    for gt_path, pred_path in plan:
        gt, pred = label_io.read_ids(gt_path)[0], label_io.read_ids(pred_path)[0]
        if gt.shape != pred.shape:
            raise ValueError(f"{pred_path}: {pred.shape[1]}x{pred.shape[0]} but the ground truth "
                             f"is {gt.shape[1]}x{gt.shape[0]}")
        _check_ids(gt_path, gt[(gt >= vip.NUM_CLASSES) & (gt != vip.VOID_ID)], "0..19, void 255")
        _check_ids(pred_path, pred[pred >= vip.NUM_CLASSES], "0..19")
        confusion += metrics.confusion_matrix(gt, pred, vip.NUM_CLASSES)
    miou, per_class = metrics.mean_iou(confusion)
    return {"mIoU": miou,
            "per_class_IoU": {str(c): None if np.isnan(v) else float(v)
                              for c, v in enumerate(per_class)},
            "pixel_accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
            "frames": len(plan), "videos": len({gt.parent.name for gt, _ in plan})}


def print_vip(summary):
    print(f"mIoU {summary['mIoU']:.3f} | pixel accuracy {summary['pixel_accuracy']:.3f} | "
          f"{summary['frames']} frames of {summary['videos']} videos")
    print(" | ".join(f"{c}: {'-' if v is None else f'{v:.3f}'}"
                     for c, v in summary["per_class_IoU"].items()))


def print_davis(summary):
    keys = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
    print(" | ".join(f"{k:>8}" for k in keys))
    print(" | ".join(f"{summary[k]:8.3f}" for k in keys))
    print()
    print(f"{'sequence':<20} {'J&F-Mean':>8} {'J-Mean':>8} {'F-Mean':>8}")
    for seq, row in summary["sequences"].items():
        print(f"{seq:<20} {row['J&F-Mean']:8.3f} {row['J-Mean']:8.3f} {row['F-Mean']:8.3f}")


def evaluate_keypoints(gt_path, results):
    """PCK dict; `results` is a keypoints JSON or a folder holding keypoints.json."""
    gt, _ = label_io.read_keypoints(gt_path)
    results = pathlib.Path(results)
    pred_path = results / "keypoints.json" if results.is_dir() else results
    if not pred_path.is_file():
        raise ValueError(f"--results {results}: no keypoints JSON at {pred_path}")
    pred, _ = label_io.read_keypoints(pred_path)
    if pred.shape[1:] != gt.shape[1:]:
        raise ValueError(f"{pred_path}: {pred.shape[1]} joints per frame, the ground truth has "
                         f"{gt.shape[1]}")
    if len(pred) < len(gt):
        raise ValueError(f"{pred_path}: results are missing frames {len(pred)}..{len(gt) - 1} "
                         f"(has {len(pred)} of {len(gt)})")
    return metrics.pck(pred[:len(gt)], gt)


def main(argv):
    del argv
    cli.require("results")
    given = [n for n in ("davis_root", "jhmdb_joints", "vip_root") if flags.FLAGS[n].value]
    if len(given) != 1:
        raise ValueError("give one of --davis_root, --jhmdb_joints or --vip_root")
    results = pathlib.Path(_RESULTS.value)
    if not results.exists():
        raise ValueError(f"--results {results}: no such file or folder")
    folder = results if results.is_dir() else results.parent
    if _DAVIS_ROOT.value:
        out = evaluate_davis(_DAVIS_ROOT.value, results, _SEQUENCES.value)
        print_davis(out)
        json_path = pathlib.Path(_JSON.value or folder / "davis_metrics.json")
    elif _VIP_ROOT.value:
        out = evaluate_vip(_VIP_ROOT.value, results, _SEQUENCES.value, _VIP_FIRST_FRAME.value)
        print_vip(out)
        json_path = pathlib.Path(_JSON.value or folder / "vip_metrics.json")
    else:
        out = evaluate_keypoints(_JHMDB_JOINTS.value, results)
        print(" | ".join(f"{k}: {out[k]:.3f}" for k in out if k.startswith("PCK@")))
        json_path = pathlib.Path(_JSON.value or folder / "pck_metrics.json")
    json_path.write_text(json.dumps(out, indent=1))
    print(f"wrote {json_path}")


if __name__ == "__main__":
    cli.run(main)
