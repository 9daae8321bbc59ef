"""Training state on disk: a run's checkpoints and its resolved config.

A training workdir holds `config.json` (the resolved `tc_keras.train.config.Config`) and `ckpt/`, a
`tf.train.Checkpoint` made by `training_checkpoint`; `restore_training_model` rebuilds the whole
model (TimeCycle with its tracker, or the contrastive walk with its head) from them. The encoder
alone (`encoder.keras`) is `tc_keras.export.encoder_io`'s; `init_encoder` starts a new run's
encoder from one (--init_from).
"""

import dataclasses
import json
import pathlib

import tensorflow as tf

from tc_keras import flag_fields
from tc_keras.export.encoder_io import CONFIG_FILE, load_encoder_model
from tc_keras.model.encoder import ResNetEncoder
from tc_keras.train import config as tconfig

# Flags that may change when a workdir is run again: how long and with what logging the run goes
# on, on which devices, and on which data. Every other flag (the model, its losses, the
# optimizer, the clip sampling, the seed) fixes what the checkpoints hold and must match the
# workdir's config.json; a new flag added to tc_keras.train.config is fixed unless listed here.
RESUMABLE = frozenset({
    "workdir", "train_steps", "epochs", "checkpoint_every", "log_every", "image_every",
    "strategy", "data", "synthetic_videos", "synthetic_frames", "synthetic_size",
    "shuffle_buffer", "deterministic"})


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
    """The tc_keras.train.config.Config a training run wrote to `<workdir>/config.json`.

    Raises:
      ValueError naming the workdir when it has no config.json.
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{workdir}: not a training workdir (no {CONFIG_FILE})")
    return tconfig.Config.from_dict(json.loads(path.read_text()))


def restore_training_model(workdir, checkpoint=""):
    """(model, checkpoint path) rebuilt from `<workdir>/config.json` and `<workdir>/ckpt`.

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


def _stored(workdir):
    """The dict of `<workdir>/config.json`; None when there is no such file.

    Raises:
      ValueError naming the file when it is not readable JSON.
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not readable JSON ({e})") from None


def resumed_config(workdir, config):
    """(config, taken): `config` resuming the workdir's run for the fields of `tconfig.PREDATING`,
    and the flags so taken, as ["--bn_groups=joint", ...].

    Such a field's default changed after runs were trained with its `PREDATING` value, which a
    config.json written before the field existed means by lacking it. Where the workdir's run has
    that value (stored, or meant by absence) and `config` the default, the run's value is taken:
    a workdir written before --bn_groups keeps resuming, with the joint batch it trained with, under
    the command that started it (and after that, config.json stores "joint"). `config` unchanged
    for a new workdir or an unreadable config.json (config_conflicts names it).
    """
    try:
        stored = _stored(workdir)
    except ValueError:
        return config, []
    if stored is None:
        return config, []
    sections, taken = {}, []
    for section, predating in tconfig.PREDATING.items():
        given = getattr(config, section)
        defaults = {f.name: f.default for f in dataclasses.fields(given)}
        run = {**predating, **stored.get(section, {})}
        values = {name: value for name, value in predating.items()
                  if run[name] == value and getattr(given, name) == defaults[name] != value}
        sections[section] = dataclasses.replace(given, **values)
        taken += [f"--{name}={flag_fields.shown(value)}" for name, value in values.items()]
    return dataclasses.replace(config, **sections), taken


# What an --init_from encoder must share with the run's: everything its weights depend on.
_ARCHITECTURE = ("depth", "out_channels", "padding")


def _described(config):
    projection = config["out_channels"]
    return (f"ResNet-{config['depth']}, " + (f"{projection}-channel projection" if projection
                                              else "no projection")
            + f", {config['padding']!r} padding")


def load_init_encoder(spec, like):
    """The ResNetEncoder saved in `spec` (--init_from: a folder holding encoder.keras, such as a
    training workdir or tools/convert_weights.py output, or a .keras file), checked against
    `like`, the run's encoder.

    Raises:
      ValueError naming `spec` when it holds no encoder, or one of another architecture.
    """
    model = load_encoder_model(spec, flag="--init_from")
    layers = [layer for layer in getattr(model, "layers", [model])
              if isinstance(layer, ResNetEncoder)]
    if len(layers) != 1:
        raise ValueError(f"--init_from {spec}: holds no ResNetEncoder (expected an encoder.keras "
                         "written by training or by tools/convert_weights.py)")
    source, want = layers[0].get_config(), like.get_config()
    if any(source[k] != want[k] for k in _ARCHITECTURE):
        raise ValueError(f"--init_from {spec}: its encoder is {_described(source)}; this run's is "
                         f"{_described(want)} (--objective=walk trains the CRW release's, "
                         "tools/convert_weights.py --from crw)")
    return layers[0]


def init_encoder(encoder, spec):
    """Copies the weights of `spec`'s encoder (see `load_init_encoder`) into `encoder`; returns
    `spec`."""
    encoder.set_weights(load_init_encoder(spec, encoder).get_weights())
    return spec


def config_conflicts(workdir, config):
    """["--encoder: resnet18 (stored) vs resnet50 (given)", ...]: flags outside RESUMABLE whose
    value differs from `<workdir>/config.json`; [] when the workdir has no config.json yet.
    Fields the stored file lacks (written before they existed) are not compared, except those
    whose absence means a value (`tconfig.PREDATING`): that value is."""
    try:
        stored = _stored(workdir)
    except ValueError as e:
        return [str(e)]
    if stored is None:
        return []
    out = []
    for section, values in config.to_dict().items():
        old = {**tconfig.PREDATING.get(section, {}), **stored.get(section, {})}
        for name, value in values.items():
            if name in RESUMABLE or name not in old or old[name] == value:
                continue
            out.append(f"--{name}: {flag_fields.shown(old[name])} (stored) vs "
                       f"{flag_fields.shown(value)} (given)")
    return out


def checkpoint_problem(path):
    """None if every tensor of checkpoint `path` (a prefix such as .../ckpt-30) reads back, else
    a one-line reason (a .index or .data file cut short, missing or corrupt)."""
    try:
        reader = tf.train.load_checkpoint(str(path))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError) as e:
        message = getattr(e, "message", None) or str(e) or type(e).__name__
        return f"{type(e).__name__}: {message.strip().splitlines()[0]}"
    return None
