"""The DAVIS dataset layout: frames in JPEGImages/480p/<seq>/, masks in Annotations/480p/<seq>/."""

import pathlib

IMAGES = pathlib.Path("JPEGImages") / "480p"
ANNOTATIONS = pathlib.Path("Annotations") / "480p"


def sequences(root, folder, chosen=None, flag="--davis_root"):
    """[(name, root/folder/name)] of the sequences in `root/folder` (IMAGES or ANNOTATIONS).

    Args:
      chosen: names to keep (None or empty = every sequence there).
      flag: the command-line flag that gave `root`, named in errors (tc_keras.data.vip reuses
        this for its own layout).
    Raises:
      ValueError naming the root when the folder is missing or a chosen sequence is not there.
    """
    root = pathlib.Path(root)
    base = root / folder
    if not base.is_dir():
        raise ValueError(f"{flag} {root}: no {folder} folder")
    available = sorted(p.name for p in base.iterdir() if p.is_dir())
    unknown = sorted(set(chosen or ()) - set(available))
    if unknown:
        raise ValueError(f"{flag} {root}: unknown sequences {', '.join(unknown)}")
    return [(name, base / name) for name in (chosen or available)]
