"""The VIP dataset layout (Video instance-level Parsing, its VIP_Fine folder): frames in
Images/<video>/, part labels in Annotations/Category_ids/<video>/ (grayscale PNGs of class ids
0..19, 255 void), one annotated frame in 25 (frame numbers 1, 26, 51, ...)."""

import pathlib

from tc_keras.data import davis

IMAGES = pathlib.Path("Images")
CATEGORIES = pathlib.Path("Annotations") / "Category_ids"
# Background + 19 human parts (docs/METHOD.md, "VIP mIoU").
NUM_CLASSES = 20
# Label of unannotated pixels, ignored by the evaluation and background for propagation.
VOID_ID = 255


def videos(root, folder, chosen=None):
    """[(name, root/folder/name)] of the videos in `root/folder` (IMAGES or CATEGORIES).

    Raises ValueError naming --vip_root when the folder is missing or a chosen video is not there.
    """
    return davis.sequences(root, folder, chosen, flag="--vip_root")
