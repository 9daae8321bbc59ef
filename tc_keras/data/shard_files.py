"""Reading prepared shards back: where they are, and whether each reads back whole.

What the tf.data reader (`pipeline`), training and `tools/prepare_vlog.py --verify` need of the
shards that `prepare` writes, without the writer's PyAV and worker-process stack.
"""

import glob
import json
import os
import pathlib
import re

def resolve_shards(path):
    """Sorted list of shard files from a shard folder, a manifest.jsonl, a glob, or a list of them.

    Raises FileNotFoundError naming `path` when nothing is found.
    """
    if isinstance(path, (list, tuple)):
        return sorted({s for p in path for s in resolve_shards(p)})
    p = pathlib.Path(path)
    if p.is_dir():
        shards = sorted(str(s) for s in p.glob("*.tfrecord"))
        if not shards:
            raise FileNotFoundError(f"{p}: folder holds no *.tfrecord shards")
        return shards
    if p.is_file() and p.suffix == ".jsonl":
        names = set()
        for line in p.read_text().splitlines():
            if line.strip():
                names.add(json.loads(line)["shard"])
        shards = sorted(str(p.parent / n) for n in names)
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing or not shards:
            raise FileNotFoundError(f"{p}: manifest lists no shards" if not shards else
                                    f"{p}: manifest names missing shards, e.g. {missing[0]}")
        return shards
    if p.is_file():
        return [str(p)]
    shards = sorted(s for s in glob.glob(str(path)) if os.path.isfile(s))
    if not shards:
        raise FileNotFoundError(f"{path}: no shard folder, manifest, shard file or matching files")
    return shards


def check_shard(path):
    """None if every record of a TFRecord shard reads back (lengths and CRCs), else the reason."""
    import tensorflow as tf  # noqa: PLC0415 (decoding workers never import TensorFlow)

    count = 0
    try:
        for _ in tf.data.TFRecordDataset(str(path)):
            count += 1
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError,
            tf.errors.InvalidArgumentError) as e:
        return f"truncated or corrupt after {count} good records ({_tf_reason(e)})"
    meta_path = pathlib.Path(path).with_suffix(".json")
    if meta_path.is_file():
        try:
            expected = len(json.loads(meta_path.read_text())["videos"])
        except (ValueError, KeyError, TypeError):
            return None
        if count != expected:
            return f"{count} records, its .json lists {expected} videos (cut short?)"
    return None


def _tf_reason(error):
    """The gist of a tf.data reading error: "truncated record at byte 1620106" and the like."""
    text = (getattr(error, "message", None) or str(error)).strip().splitlines()[0]
    text = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", text)  # graph-node prefix, op suffix
    m = re.search(r"truncated record at (\d+)", text)
    return f"a record cut short at byte {m.group(1)}" if m else text


def verify(path):
    """{shard: reason} for every shard of a prepared folder (or manifest, glob) that does not read
    back whole (see `check_shard`); {} when all are good."""
    bad = {}
    for shard in resolve_shards(path):
        reason = check_shard(shard)
        if reason:
            bad[shard] = reason
    return bad


def bad_shard_message(shard, reason):
    """The one-line error for a bad shard: what is wrong and what to do."""
    return (f"{shard}: {reason}; remove it and rerun tools/prepare_vlog.py with the same --input "
            f"and --out to redo it (tools/prepare_vlog.py --verify --out "
            f"{pathlib.Path(shard).parent} lists every bad shard)")
