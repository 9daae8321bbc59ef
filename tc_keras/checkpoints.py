"""Training state on disk: a run's checkpoints and its resolved config.

A training workdir holds `config.json` (the resolved `tc_keras.config.Config`) and `ckpt/`, a
`tf.train.Checkpoint` made by `training_checkpoint`; `restore_training_model` rebuilds the whole
TimeCycle (encoder and tracker) from them. The encoder alone (`encoder.keras`) is
`tc_keras.encoder_io`'s.
"""

import json
import pathlib

import tensorflow as tf

from tc_keras import config as tconfig

CONFIG_FILE = "config.json"


def training_checkpoint(model, **extra):
    """The tf.train.Checkpoint of a training run: model, optimizer and every model variable.

    TensorFlow's object graph does not follow layers that Keras 3 keeps in Python lists (the
    encoder's blocks, the localizer's convolutions): their trainable variables would be saved only
    through the optimizer and their BatchNorm moving statistics not at all. Every variable of the
    model is therefore also tracked by its Keras path.
    """
    # Keras paths start with the model's own name, which is unique per process (time_cycle_1, ...).
    by_path = {v.path.split("/", 1)[-1].replace("/", "."): v for v in model.variables}
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                               model_variables=by_path, **extra)


def load_run_config(workdir):
    """The tc_keras.config.Config a training run wrote to `<workdir>/config.json`.

    Raises:
      ValueError naming the workdir when it has no config.json.
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{workdir}: not a training workdir (no {CONFIG_FILE})")
    return tconfig.Config.from_dict(json.loads(path.read_text()))


def restore_training_model(workdir, checkpoint=""):
    """(TimeCycle, checkpoint path) rebuilt from `<workdir>/config.json` and `<workdir>/ckpt`.

    Args:
      workdir: a training run folder.
      checkpoint: a checkpoint name in `<workdir>/ckpt` (e.g. "ckpt-500"); "" for the latest.
    Raises:
      ValueError naming the workdir or checkpoint when there is none.
    """
    workdir = pathlib.Path(workdir)
    config = load_run_config(workdir)
    path = (str(workdir / "ckpt" / checkpoint) if checkpoint
            else tf.train.latest_checkpoint(str(workdir / "ckpt")))
    if not path or not pathlib.Path(path + ".index").is_file():
        raise ValueError(f"{workdir}: no checkpoint {checkpoint or ''} in {workdir / 'ckpt'}")
    model = tconfig.build_model(config)
    model.build_from_crop()
    model.compile()  # builds the optimizer: older checkpoints hold the weights only through it
    training_checkpoint(model).restore(path).expect_partial()
    return model, path
