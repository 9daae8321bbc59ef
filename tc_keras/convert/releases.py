"""Published PyTorch weights -> tc_keras encoders (and the TimeCycle release's tracker).

Two releases (README, "Published weights"):

- `timecycle`: the TimeCycle authors' VLOG ResNet-50 (`checkpoint_14.pth.tar`, docs/METHOD.md, "Published numbers"). A
  `CycleTime` saved through DataParallel: {'epoch', 'state_dict'} with keys `module.*`. Its
  encoder `encoderVideo` is a ResNet-50 of 3-D convolutions with a time kernel of 1 (weights
  (out, in, 1, kh, kw), zero padding k//2 both sides), res4 at stride 1; `layer4` exists in the
  module but its forward stops at layer3, so those keys are ignored. Then `afterconv1`, a 1x1x1
  convolution 1024 -> 512 without bias, ReLU, L2 normalisation. The tracker: `afterconv3_trans`
  (900 -> 128, k4, no bias), `afterconv4_trans` (128 -> 64, k4, no bias), LeakyReLU 0.1,
  NCHW flatten, `linear2` (1024 -> 3 = tx, ty, angle).
- `crw`: the Contrastive Random Walk ResNet-18 (`pretrained.pth`): {'model': ...} with the
  torchvision ResNet under `encoder.model.*`, every padded convolution in reflect mode, layer3
  and layer4 at stride 1; its test code drops layer4, so the features are layer3's (256
  channels, stride 8), L2-normalised, no projection. The release's test code renames keys
  holding `conv1.1.weight` / `conv2.1.weight` to `.weight`; so does this module. The training
  head (`selfsim_fc`) and layer4 are ignored.

Keys are matched exactly (shapes included); missing or misshapen keys are an error naming the
file, the release and the keys expected and found. A leading `module.` is ignored.
"""

import hashlib
import json
import pathlib

import keras
import numpy as np

from tc_keras import atomic
from tc_keras.convert import pth
from tc_keras.export.encoder_io import CONFIG_FILE, ENCODER_FILE, save_encoder
from tc_keras.model.encoder import STAGES, ResNetEncoder

TRACKER_FILE = "tracker.weights.h5"
# The release's tracker works on 30x30 image features (900 affinity channels) and 10x10 patch
# features: the 240x240 training crop at stride 8 (docs/METHOD.md, "Model").
TRACKER_FEATURE_SIZE = 30
TRACKER_PATCH_SIZE = 10
TRACKER_CROP_SIZE = 240

RELEASES = {
    # display: the key prefix as in the release file (shown in error messages).
    "timecycle": dict(depth=50, out_channels=512, padding="zeros", prefix="encoderVideo.",
                      display="module.",
                      preset="paper", tracker=True, time_kernel=True,
                      file="checkpoint_14.pth.tar", wrapper="state_dict"),
    "crw": dict(depth=18, out_channels=None, padding="reflect", prefix="encoder.model.",
                display="",
                preset="crw", tracker=False, time_kernel=False, file="pretrained.pth",
                wrapper="model"),
}


class ConversionError(ValueError):
    """A checkpoint that is not the release it was given as (the message names the file)."""


# ---------------------------------------------------------------------------------- key maps
def _encoder_pairs(encoder, release):
    """[(PyTorch key stem, Keras Conv2D or BatchNormalization)] of a ResNetEncoder, in order."""
    prefix = RELEASES[release]["prefix"]
    pairs = [(prefix + "conv1", encoder.stem_conv), (prefix + "bn1", encoder.stem_bn)]
    blocks = iter(encoder.blocks)
    for stage, count in enumerate(STAGES[encoder.depth]):  # layer1..layer3 = res2..res4
        for i in range(count):
            block = next(blocks)
            stem = f"{prefix}layer{stage + 1}.{i}."
            for j, (conv, bn) in enumerate(zip(block.convs, block.bns)):
                pairs += [(f"{stem}conv{j + 1}", conv), (f"{stem}bn{j + 1}", bn)]
            if block.project:
                pairs += [(stem + "downsample.0", block.shortcut_conv),
                          (stem + "downsample.1", block.shortcut_bn)]
    if encoder.projection is not None:
        pairs.append(("afterconv1", encoder.projection))
    return pairs


def _conv_shape(conv, time_kernel):
    """PyTorch weight shape of a Keras Conv2D: (out, in, kh, kw), or (out, in, 1, kh, kw)."""
    kh, kw, cin, cout = conv.kernel.shape
    return (cout, cin, 1, kh, kw) if time_kernel else (cout, cin, kh, kw)


def _expected(pairs, time_kernel, tracker):
    """{PyTorch key: shape} of every tensor a release must hold."""
    shapes = {}
    for stem, layer in pairs:
        if isinstance(layer, keras.layers.Conv2D):
            shapes[stem + ".weight"] = _conv_shape(layer, time_kernel)
        else:
            n = layer.gamma.shape[0]
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{stem}.{name}"] = (n,)
    if tracker:  # the Localizer (docs/METHOD.md, "Localizer"): conv 900->128 k4, conv 128->64 k4, dense 1024->3
        n = TRACKER_FEATURE_SIZE ** 2
        shapes.update({"afterconv3_trans.weight": (128, n, 4, 4),
                       "afterconv4_trans.weight": (64, 128, 4, 4),
                       "linear2.weight": (3, 64 * 4 * 4), "linear2.bias": (3,)})
    return shapes


# ----------------------------------------------------------------------------- state dicts
def read_state_dict(path, release):
    """{key: float array} of a release checkpoint, unwrapped and with its keys normalised.

    Returns:
      (state, found, checkpoint): the tensors by normalised key, the keys as in the file (in
      its order), and the whole object read from the file.
    Raises:
      ConversionError / pth.PthError naming `path`.
    """
    checkpoint = pth.load(path)
    state = checkpoint
    if isinstance(state, dict):
        for wrapper in (RELEASES[release]["wrapper"], "state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not any(isinstance(v, np.ndarray) for v in state.values()):
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else [
            type(checkpoint).__name__]
        raise ConversionError(f"{path}: no state dict of tensors (expected a dict of tensors or "
                              f"one under 'state_dict' / 'model'; found {', '.join(found[:8])})")
    out, found = {}, []
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            continue
        key = str(key)
        found.append(key)
        key = key[len("module."):] if key.startswith("module.") else key
        if release == "crw" and ("conv1.1.weight" in key or "conv2.1.weight" in key):
            key = key.replace(".1.weight", ".weight")  # as the release's test code
        out[key] = value
    return out, found, checkpoint


def _names(keys, more):
    return ", ".join(keys) + (", ..." if more else "")


def check_keys(state, expected, path, release, found=None):
    """Raises ConversionError naming the keys expected and found unless every one matches.

    `found`: the file's own key names, for the message (default: the keys of `state`).
    """
    show = RELEASES[release]["display"]
    missing = [k for k in expected if k not in state]
    if len(missing) == len(expected):
        found = list(state) if found is None else found
        raise ConversionError(
            f"{path}: not the {release} release (expected keys like "
            f"{_names([show + k for k in list(expected)[:3]], True)}, {len(expected)} in all; "
            f"found {_names(found[:3], len(found) > 3)}, {len(found)} in all)")
    if missing:
        raise ConversionError(
            f"{path}: {len(missing)} of the {len(expected)} {release} keys are missing: "
            f"{_names([show + k for k in missing[:4]], len(missing) > 4)}")
    wrong = [f"{show}{k} expected {tuple(s)} found {tuple(state[k].shape)}"
             for k, s in expected.items() if tuple(state[k].shape) != tuple(s)]
    if wrong:
        raise ConversionError(f"{path}: {len(wrong)} {release} tensors have the wrong shape: "
                              f"{'; '.join(wrong[:3])}")


# ------------------------------------------------------------------------------ weights
def _f32(x):
    return np.asarray(x, np.float32)


def _assign_encoder(pairs, state, time_kernel):
    for stem, layer in pairs:
        if isinstance(layer, keras.layers.Conv2D):
            w = state[stem + ".weight"]
            if time_kernel:
                w = w[:, :, 0]  # (out, in, 1, kh, kw) -> (out, in, kh, kw)
            layer.kernel.assign(_f32(w.transpose(2, 3, 1, 0)))  # -> (kh, kw, in, out)
        else:
            layer.gamma.assign(_f32(state[stem + ".weight"]))
            layer.beta.assign(_f32(state[stem + ".bias"]))
            layer.moving_mean.assign(_f32(state[stem + ".running_mean"]))
            layer.moving_variance.assign(_f32(state[stem + ".running_var"]))


def affinity_channel_order(size=TRACKER_FEATURE_SIZE):
    """(size*size,) index: tc_keras affinity channel y*size + x -> the reference's x*size + y.

    The reference transposes H and W before flattening image positions (x-major, docs/METHOD.md, "Affinity");
    tc_keras.ops.affinity_softmax flattens them row-major (y-major).
    """
    return np.arange(size * size).reshape(size, size).T.reshape(-1)  # [y, x] -> x*size + y


def _assign_tracker(tracker, state):
    conv1, conv2 = tracker.localizer.convs
    w = state["afterconv3_trans.weight"][:, affinity_channel_order()]  # (128, 900, 4, 4)
    conv1.kernel.assign(_f32(w.transpose(2, 3, 1, 0)))  # -> (4, 4, 900, 128)
    conv2.kernel.assign(_f32(state["afterconv4_trans.weight"].transpose(2, 3, 1, 0)))
    # linear2 reads PyTorch's NCHW flatten c*16 + y*4 + x; Keras flattens NHWC y*256 + x*64 + c.
    w = state["linear2.weight"].reshape(3, 64, 4, 4)  # (3, 1024) -> (3, C, H, W)
    tracker.localizer.dense.kernel.assign(_f32(w.transpose(2, 3, 1, 0).reshape(-1, 3)))
    tracker.localizer.dense.bias.assign(_f32(state["linear2.bias"]))


def build_encoder(release):
    """An untrained ResNetEncoder shaped and padded as `release`, built."""
    r = RELEASES[release]
    encoder = ResNetEncoder(depth=r["depth"], out_channels=r["out_channels"],
                            padding=r["padding"], name="encoder")
    encoder.build((None, None, None, 3))
    return encoder


def tracker_model(tracker, channels=512):
    """A functional model around `tracker`: (image, query features) -> theta; builds it.

    The weights file of this model is `TRACKER_FILE`; the same wrapper around another Tracker
    (e.g. a TimeCycle's) loads it.
    """
    image = keras.Input((TRACKER_FEATURE_SIZE, TRACKER_FEATURE_SIZE, channels), name="image")
    query = keras.Input((TRACKER_PATCH_SIZE, TRACKER_PATCH_SIZE, channels), name="query")
    return keras.Model([image, query], tracker(image, query)["theta"], name="tracker_model")


def convert_state(state, release, path="checkpoint", found=None):
    """(encoder, tracker or None) with the release's weights from its state dict.

    `state` maps normalised keys (see `read_state_dict`) to arrays; `path` and `found` (the
    file's key names) are for error messages.
    """
    r = RELEASES[release]
    encoder = build_encoder(release)
    pairs = _encoder_pairs(encoder, release)
    check_keys(state, _expected(pairs, r["time_kernel"], r["tracker"]), path, release, found)
    _assign_encoder(pairs, state, r["time_kernel"])
    tracker = None
    if r["tracker"]:
        from tc_keras.model.tracker import Tracker  # noqa: PLC0415

        # The release's tracker: 10x10 patch cells on 30x30 image features.
        tracker = Tracker(patch_size=(TRACKER_PATCH_SIZE, TRACKER_PATCH_SIZE), name="tracker",
                          dtype="float32")
        tracker_model(tracker)  # builds its weights
        _assign_tracker(tracker, state)
    return encoder, tracker


# -------------------------------------------------------------------------------- files
def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert(release, checkpoint, out, overwrite=False):
    """Converts a release checkpoint into the folder `out` (written atomically).

    `out` gets `encoder.keras` (what every tc_keras entry point accepts as `--encoder out`),
    `config.json` (the source: release, file, sha256, key counts; the encoder's options and the
    propagation preset the release was evaluated with) and, for TimeCycle, `tracker.weights.h5`
    (see `timecycle_from_release`).

    Returns:
      the config dict written to config.json.
    Raises:
      ValueError (ConversionError, pth.PthError) naming the file or folder at fault.
    """
    if release not in RELEASES:
        raise ValueError(f"release must be one of {sorted(RELEASES)}, got {release!r}")
    checkpoint, out = pathlib.Path(checkpoint), pathlib.Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out}: already exists (use --overwrite to replace it)")
    state, found, whole = read_state_dict(checkpoint, release)
    encoder, tracker = convert_state(state, release, checkpoint, found)
    r = RELEASES[release]
    used = set(_expected(_encoder_pairs(encoder, release), r["time_kernel"], r["tracker"]))
    # Unused tensors (layer4, training heads); BatchNorm's step counters are not listed.
    ignored = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    epoch = whole.get("epoch") if isinstance(whole, dict) else None
    config = {
        "source": {"release": release, "file": str(checkpoint.resolve()),
                   "sha256": _sha256(checkpoint),
                   "epoch": epoch if isinstance(epoch, int) else None,
                   "tensors": len(state), "converted": len(used), "ignored": len(ignored),
                   "ignored_keys": ignored},
        "encoder": {"depth": r["depth"], "out_channels": r["out_channels"],
                    "padding": r["padding"],
                    "channels": encoder.compute_output_shape((1, 8, 8, 3))[-1]},
        "tracker": TRACKER_FILE if tracker is not None else None,
        "preset": r["preset"],
        "converted_by": "tools/convert_weights.py",
    }
    with atomic.Staged(out, directory=True) as tmp:
        save_encoder(encoder, tmp / ENCODER_FILE)
        if tracker is not None:
            tracker_model(tracker).save_weights(str(tmp / TRACKER_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return config


def timecycle_from_release(folder, **kwargs):
    """A TimeCycle(depth=50) holding a converted TimeCycle release (encoder and tracker).

    Training resumes from the published weights with the usual Keras calls:
      model = timecycle_from_release("weights/timecycle"); model.compile(); model.fit(clips)
    (clips from tc_keras.data.pipeline.clip_dataset, crop 240: the tracker is tied to 30x30
    features).

    Args:
      folder: the output of `convert("timecycle", ...)`.
      **kwargs: further TimeCycle arguments (crop_size must stay 240).
    Raises:
      ValueError naming `folder` when it is not a converted TimeCycle release.
    """
    from tc_keras.model.timecycle import TimeCycle  # noqa: PLC0415 (model imports TensorFlow)

    folder = pathlib.Path(folder)
    config_path = folder / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
        release, padding = config["source"]["release"], config["encoder"]["padding"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{folder}: not a converted release (no readable {CONFIG_FILE})") from None
    if release != "timecycle" or not (folder / TRACKER_FILE).is_file():
        raise ValueError(f"{folder}: not a converted TimeCycle release with {TRACKER_FILE} "
                         f"(found release {release!r})")
    if kwargs.get("crop_size", TRACKER_CROP_SIZE) != TRACKER_CROP_SIZE:
        raise ValueError(f"crop_size must be {TRACKER_CROP_SIZE} for the release's tracker "
                         f"({TRACKER_FEATURE_SIZE**2} affinity channels)")
    model = TimeCycle(depth=RELEASES["timecycle"]["depth"], encoder_padding=padding, **kwargs)
    model.build_from_crop()
    source = keras.saving.load_model(str(folder / ENCODER_FILE), compile=False)
    model.encoder.set_weights(source.layers[-1].get_weights())
    tracker_model(model.tracker).load_weights(str(folder / TRACKER_FILE))
    return model
