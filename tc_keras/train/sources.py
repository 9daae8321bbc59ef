"""A run's training data: --data turned into shard files, their videos counted, the clip datasets.

`resolve_data` prepares what needs preparing (the synthetic corpus, raw videos) into the workdir
and returns shard files; `count_videos` sizes an epoch; `make_dataset` and `vis_batch` are the
clips a run trains on and draws; `naming_bad_shards` turns tf.data's nameless DataLossError into
an error naming the bad shard.
"""

import contextlib
import json
import pathlib

import tensorflow as tf
from absl import logging

from tc_keras.data import pipeline, prepare, shard_files, synthetic
from tc_keras.train import config as tconfig


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and what to do."""


def resolve_data(config, workdir):
    """Shard files for --data (comma-separated sources).

    `synthetic` generates and prepares that corpus first; a video list file (.txt, see
    `prepare.find_videos`) or a folder of videos with no shards is prepared (12 fps, height 256)
    into <workdir>/prepared/<name>; anything else names prepared shards.
    """
    d = config.data
    shards = []
    for source in [s.strip() for s in d.data.split(",") if s.strip()]:
        if source == tconfig.SYNTHETIC:
            logging.info("Generating and preparing %d synthetic videos in %s/data",
                         d.synthetic_videos, workdir)
            source = synthetic.prepared_corpus(
                pathlib.Path(workdir) / "data", num_videos=d.synthetic_videos,
                frames=d.synthetic_frames, size=(d.synthetic_size, d.synthetic_size),
                seed=config.train.seed)
        elif _is_video_source(source):
            out = pathlib.Path(workdir) / "prepared" / pathlib.Path(source).stem
            logging.info("Preparing the videos of %s in %s", source, out)
            prepare.prepare(source, out)  # NothingStored (a ValueError) names the source
            source = out
        shards += shard_files.resolve_shards(source)
    return sorted(set(shards))


def _is_video_source(source):
    """A list file of videos (.txt) or a folder of videos that holds no prepared shards."""
    path = pathlib.Path(source)
    if path.is_file():
        return path.suffix == ".txt"
    return path.is_dir() and not any(path.glob("*.tfrecord"))


def count_videos(shards):
    """Videos (records) in the shards: from manifest.jsonl beside them, else by reading."""
    manifests = {pathlib.Path(s).parent / "manifest.jsonl" for s in shards}
    if all(m.is_file() for m in manifests):
        names = {pathlib.Path(s).name for s in shards}
        rows = [json.loads(line) for m in manifests for line in m.read_text().splitlines() if line]
        return sum(1 for r in rows if pathlib.Path(str(r.get("shard", ""))).name in names) or len(rows)
    return int(tf.data.TFRecordDataset(shards).reduce(0, lambda n, _: n + 1))


def make_dataset(config, shards, strategy, seed, rotation_scale=None):
    """The training clips of a run, distributed over `strategy`'s replicas when it has several."""
    d = config.data
    make, clips = tconfig.clip_source(config)  # the objective's clips
    kwargs = dict(clips, shuffle_buffer=d.shuffle_buffer, seed=seed,
                  deterministic=d.deterministic)
    if rotation_scale is not None:
        kwargs.update(rotation_scale=rotation_scale)
    if strategy.num_replicas_in_sync > 1 or hasattr(strategy, "cluster_resolver"):
        return pipeline.distributed_clip_dataset(strategy, shards, config.train.batch_size,
                                                 make=make, **kwargs)
    return make(shards, batch_size=config.train.batch_size, **kwargs)


def vis_batch(config, shards):
    """A fixed batch of up to 4 clips to draw tracked patches on."""
    ds = pipeline.clip_dataset(shards, batch_size=min(4, config.train.batch_size),
                               shuffle_buffer=8, seed=1234, deterministic=True,
                               **tconfig.clip_kwargs(config))
    return next(iter(ds))


@contextlib.contextmanager
def naming_bad_shards(shards):
    """Turns tf.data's DataLossError (no file named) into a DataError naming the bad shard."""
    try:
        yield
    except tf.errors.DataLossError as e:
        logging.info("Reading the %d shard(s) to find the bad one", len(shards))
        for shard in shards:
            reason = shard_files.check_shard(shard)
            if reason:
                raise DataError(shard_files.bad_shard_message(shard, reason)) from None
        raise DataError(f"training data: {e.message.strip().splitlines()[0]} (check the shards "
                        "with tools/prepare_vlog.py --verify --out DIR)") from None
