"""The two published releases, written independently of tc_keras, for tests/test_convert.py.

State dicts with the releases' exact key names and shapes (seeded random values), and their
forward passes in PyTorch (torch.nn.functional, float64) and NumPy (float64), written from the
releases' public model code (docs/METHOD.md, "Published numbers"; tc_keras/convert/releases.py lists the facts):

- TimeCycle `CycleTime` (DataParallel, keys `module.*`): `encoderVideo` = ResNet-50 of Conv3d
  with time kernel 1 (conv1 k(1,7,7) stride (1,2,2) padding (0,3,3); max pool (1,3,3) stride
  (1,2,2) padding (0,1,1); Bottleneck3d with the stride on the 3x3; layer2 stride 2, layer3
  stride 1; layer4 held but unused), `afterconv1` Conv3d 1024 -> 512 k1 no bias, ReLU,
  F.normalize over channels; the tracker `afterconv3_trans`, `afterconv4_trans`, `linear2`.
- CRW (`{'model': ...}`, keys `encoder.model.*`): torchvision ResNet-18, reflect padding on every
  padded conv, layer3/layer4 stride 1, output layer3, L2-normalised; `selfsim_fc` head.
"""

import argparse
import collections

import numpy as np

BN_EPS = 1e-5
TC_PREFIX = "module.encoderVideo."
CRW_PREFIX = "encoder.model."
# (planes, blocks, stride) of layer1..layer4 after each release's changes.
TC_LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 1), (512, 3, 2))
CRW_LAYERS = ((64, 2, 1), (128, 2, 2), (256, 2, 1), (512, 2, 1))


def _bn(rng, state, key, n):
    state[key + ".weight"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
    state[key + ".bias"] = rng.normal(0, 0.1, n).astype(np.float32)
    state[key + ".running_mean"] = rng.normal(0, 0.1, n).astype(np.float32)
    state[key + ".running_var"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
    state[key + ".num_batches_tracked"] = np.array(1000, np.int64)


def _conv(rng, shape):
    fan_in = int(np.prod(shape[1:]))
    return rng.normal(0, fan_in ** -0.5, shape).astype(np.float32)


def timecycle_state(seed=0):
    """OrderedDict of the TimeCycle release's state dict (every key, exact shapes)."""
    rng = np.random.default_rng(seed)
    s = collections.OrderedDict()
    s[TC_PREFIX + "conv1.weight"] = _conv(rng, (64, 3, 1, 7, 7))
    _bn(rng, s, TC_PREFIX + "bn1", 64)
    inplanes = 64
    for layer, (planes, blocks, _) in enumerate(TC_LAYERS, 1):
        for i in range(blocks):
            p = f"{TC_PREFIX}layer{layer}.{i}."
            for j, (cin, cout, k) in enumerate(((inplanes, planes, 1), (planes, planes, 3),
                                                (planes, planes * 4, 1)), 1):
                s[f"{p}conv{j}.weight"] = _conv(rng, (cout, cin, 1, k, k))
                _bn(rng, s, f"{p}bn{j}", cout)
            if i == 0:
                s[p + "downsample.0.weight"] = _conv(rng, (planes * 4, inplanes, 1, 1, 1))
                _bn(rng, s, p + "downsample.1", planes * 4)
            inplanes = planes * 4
    s["module.afterconv1.weight"] = _conv(rng, (512, 1024, 1, 1, 1))
    s["module.afterconv3_trans.weight"] = _conv(rng, (128, 900, 4, 4)) * 8
    s["module.afterconv4_trans.weight"] = _conv(rng, (64, 128, 4, 4))
    s["module.linear2.weight"] = rng.normal(0, 0.1, (3, 1024)).astype(np.float32)
    s["module.linear2.bias"] = rng.normal(0, 0.1, 3).astype(np.float32)
    return s


def crw_state(seed=0, wrapped_convs=True):
    """OrderedDict of the CRW release's `model` state dict (every key, exact shapes).

    With `wrapped_convs`, layer1's block convolutions are named `convN.1.weight`, the form the
    release's test code renames.
    """
    rng = np.random.default_rng(seed)
    s = collections.OrderedDict()
    s[CRW_PREFIX + "conv1.weight"] = _conv(rng, (64, 3, 7, 7))
    _bn(rng, s, CRW_PREFIX + "bn1", 64)
    inplanes = 64
    for layer, (planes, blocks, stride) in enumerate(CRW_LAYERS, 1):
        for i in range(blocks):
            p = f"{CRW_PREFIX}layer{layer}.{i}."
            for j, cin in enumerate((inplanes, planes), 1):
                name = f"conv{j}.1" if wrapped_convs and layer == 1 else f"conv{j}"
                s[f"{p}{name}.weight"] = _conv(rng, (planes, cin, 3, 3))
                _bn(rng, s, f"{p}bn{j}", planes)
            if i == 0 and (layer > 1):  # torchvision: downsample where shape changes
                s[p + "downsample.0.weight"] = _conv(rng, (planes, inplanes, 1, 1))
                _bn(rng, s, p + "downsample.1", planes)
            inplanes = planes
    s["selfsim_fc.0.weight"] = rng.normal(0, 0.05, (128, 512)).astype(np.float32)
    s["selfsim_fc.0.bias"] = np.zeros(128, np.float32)
    return s


def crw_checkpoint(state):
    """The dict CRW's train.py saves around its state dict."""
    return {"model": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "lr_scheduler": {"milestones": collections.Counter([20, 30]), "last_epoch": 3},
            "epoch": 3, "args": argparse.Namespace(model_type="scratch", temp=0.05)}


def unwrap(key):
    return key.replace(".1.weight", ".weight") if ("conv1.1.weight" in key
                                                   or "conv2.1.weight" in key) else key


# ---------------------------------------------------------------------------- PyTorch
def timecycle_forward_torch(state, images):
    """(B, 3, H, W) float64 -> (B, 512, H/8, W/8) L2-normalised, as CycleTime.forward_base."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415, N812

    w = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in state.items()}

    def bn(x, key):
        return F.batch_norm(x, w[key + ".running_mean"], w[key + ".running_var"],
                            w[key + ".weight"], w[key + ".bias"], training=False, eps=BN_EPS)

    x = torch.from_numpy(images)[:, :, None]  # (B, 3, H, W) -> (B, 3, T=1, H, W)
    x = F.relu(bn(F.conv3d(x, w[TC_PREFIX + "conv1.weight"], stride=(1, 2, 2),
                           padding=(0, 3, 3)), TC_PREFIX + "bn1"))
    x = F.max_pool3d(x, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
    for layer, (_, blocks, stride) in enumerate(TC_LAYERS[:3], 1):
        for i in range(blocks):
            p = f"{TC_PREFIX}layer{layer}.{i}."
            s = stride if i == 0 else 1
            out = F.relu(bn(F.conv3d(x, w[p + "conv1.weight"]), p + "bn1"))
            out = F.relu(bn(F.conv3d(out, w[p + "conv2.weight"], stride=(1, s, s),
                                     padding=(0, 1, 1)), p + "bn2"))
            out = bn(F.conv3d(out, w[p + "conv3.weight"]), p + "bn3")
            if p + "downsample.0.weight" in w:
                x = bn(F.conv3d(x, w[p + "downsample.0.weight"], stride=(1, s, s)),
                       p + "downsample.1")
            x = F.relu(out + x)
    x = F.relu(F.conv3d(x, w["module.afterconv1.weight"]))
    return F.normalize(x, p=2, dim=1)[:, :, 0].numpy()  # (B, C, 1, h, w) -> (B, C, h, w)


def timecycle_theta_torch(state, image_feats, patch_feats, temperature=512 ** -0.5):
    """CycleTime.compute_transform_img_to_patch: (B,C,30,30), (B,C,10,10) -> theta (B, 2, 3)."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415, N812

    w = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in state.items()}
    img, patch = torch.from_numpy(image_feats), torch.from_numpy(patch_feats)
    b, c = img.shape[:2]
    img = img.transpose(2, 3).reshape(b, c, -1).transpose(1, 2)  # (B, 900 x-major, C)
    corr = torch.matmul(img, patch.reshape(b, c, -1)) / temperature  # (B, 900, 100)
    corr = F.softmax(corr, dim=1).reshape(b, -1, 10, 10)
    x = F.leaky_relu(F.conv2d(corr, w["module.afterconv3_trans.weight"]), 0.1)
    x = F.leaky_relu(F.conv2d(x, w["module.afterconv4_trans.weight"]), 0.1)
    x = x.reshape(b, -1)  # NCHW flatten -> (B, 1024)
    p = F.linear(x, w["module.linear2.weight"], w["module.linear2.bias"])  # (tx, ty, angle)
    cos, sin = torch.cos(p[:, 2]) / 3.0, torch.sin(p[:, 2]) / 3.0
    return torch.stack([cos, -sin, p[:, 0], sin, cos, p[:, 1]], 1).reshape(b, 2, 3).numpy()


def crw_forward_torch(state, images):
    """(B, 3, H, W) float64 -> (B, 256, H/8, W/8) L2-normalised layer3 features."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415, N812

    w = {unwrap(k): torch.from_numpy(np.asarray(v, np.float64)) for k, v in state.items()}

    def conv(x, key, stride=1, pad=0):  # Conv2d(padding_mode="reflect") pads, then convolves
        x = F.pad(x, (pad,) * 4, mode="reflect") if pad else x
        return F.conv2d(x, w[key + ".weight"], stride=stride)

    def bn(x, key):
        return F.batch_norm(x, w[key + ".running_mean"], w[key + ".running_var"],
                            w[key + ".weight"], w[key + ".bias"], training=False, eps=BN_EPS)

    x = F.relu(bn(conv(torch.from_numpy(images), CRW_PREFIX + "conv1", 2, 3), CRW_PREFIX + "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for layer, (_, blocks, stride) in enumerate(CRW_LAYERS[:3], 1):
        for i in range(blocks):
            p = f"{CRW_PREFIX}layer{layer}.{i}."
            s = stride if i == 0 else 1
            out = F.relu(bn(conv(x, p + "conv1", s, 1), p + "bn1"))
            out = bn(conv(out, p + "conv2", 1, 1), p + "bn2")
            if p + "downsample.0.weight" in w:
                x = bn(conv(x, p + "downsample.0", s), p + "downsample.1")
            x = F.relu(out + x)
    return F.normalize(x, p=2, dim=1).numpy()


# ------------------------------------------------------------------------------ NumPy
def _np_conv(x, weight, stride=1, pad=0, mode="reflect"):
    """(B, C, H, W) x (O, C, kh, kw) -> (B, O, H', W'), PyTorch's arithmetic, float64."""
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode=mode)
    kh, kw = weight.shape[2:]
    # (B, C, H - kh + 1, W - kw + 1, kh, kw), then every stride-th window
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]
    return np.einsum("bchwij,ocij->bohw", windows, weight.astype(np.float64), optimize=True)


def crw_forward_numpy(state, images):
    """crw_forward_torch in NumPy float64 (no torch needed)."""
    w = {unwrap(k): np.asarray(v, np.float64) for k, v in state.items()}

    def bn(x, key):
        return _np_bn(w, x, key)

    def relu(x):
        return np.maximum(x, 0.0)

    x = relu(bn(_np_conv(images, w[CRW_PREFIX + "conv1.weight"], 2, 3), CRW_PREFIX + "bn1"))
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    # (B, C, H', W', 3, 3) windows -> max, stride 2
    x = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    x = x.max(axis=(-1, -2))
    for layer, (_, blocks, stride) in enumerate(CRW_LAYERS[:3], 1):
        for i in range(blocks):
            p = f"{CRW_PREFIX}layer{layer}.{i}."
            s = stride if i == 0 else 1
            out = relu(bn(_np_conv(x, w[p + "conv1.weight"], s, 1), p + "bn1"))
            out = bn(_np_conv(out, w[p + "conv2.weight"], 1, 1), p + "bn2")
            if p + "downsample.0.weight" in w:
                x = bn(_np_conv(x, w[p + "downsample.0.weight"], s), p + "downsample.1")
            x = relu(out + x)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _np_bn(w, x, key):
    scale = w[key + ".weight"] / np.sqrt(w[key + ".running_var"] + BN_EPS)
    shift = w[key + ".bias"] - w[key + ".running_mean"] * scale
    return x * scale[:, None, None] + shift[:, None, None]


def timecycle_forward_numpy(state, images):
    """timecycle_forward_torch in NumPy float64: each (out, in, 1, kh, kw) Conv3d on a clip of
    one frame is a 2-D convolution with zero padding."""
    w = {k: np.asarray(v, np.float64)[:, :, 0] if v.ndim == 5 else np.asarray(v, np.float64)
         for k, v in state.items()}  # (out, in, 1, kh, kw) -> (out, in, kh, kw)

    def relu(x):
        return np.maximum(x, 0.0)

    x = _np_conv(images, w[TC_PREFIX + "conv1.weight"], 2, 3, mode="constant")
    x = relu(_np_bn(w, x, TC_PREFIX + "bn1"))
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    x = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    x = x.max(axis=(-1, -2))  # (B, C, H', W', 3, 3) -> (B, C, H', W')
    for layer, (_, blocks, stride) in enumerate(TC_LAYERS[:3], 1):
        for i in range(blocks):
            p = f"{TC_PREFIX}layer{layer}.{i}."
            s = stride if i == 0 else 1
            out = relu(_np_bn(w, _np_conv(x, w[p + "conv1.weight"]), p + "bn1"))
            out = relu(_np_bn(w, _np_conv(out, w[p + "conv2.weight"], s, 1, "constant"),
                              p + "bn2"))
            out = _np_bn(w, _np_conv(out, w[p + "conv3.weight"]), p + "bn3")
            if p + "downsample.0.weight" in w:
                x = _np_bn(w, _np_conv(x, w[p + "downsample.0.weight"], s), p + "downsample.1")
            x = relu(out + x)
    x = relu(_np_conv(x, w["module.afterconv1.weight"]))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def timecycle_theta_numpy(state, image_feats, patch_feats, temperature=512 ** -0.5):
    """timecycle_theta_torch in NumPy float64."""
    w = {k: np.asarray(v, np.float64) for k, v in state.items()}
    b, c = image_feats.shape[:2]
    # (B, C, H, W) -> (B, C, W, H) -> (B, 900 x-major, C)
    img = image_feats.transpose(0, 1, 3, 2).reshape(b, c, -1).transpose(0, 2, 1)
    corr = img @ patch_feats.reshape(b, c, -1) / temperature  # (B, 900, 100)
    corr = np.exp(corr - corr.max(axis=1, keepdims=True))
    corr = (corr / corr.sum(axis=1, keepdims=True)).reshape(b, -1, 10, 10)

    def leaky(x):
        return np.where(x > 0, x, 0.1 * x)

    x = leaky(_np_conv(corr, w["module.afterconv3_trans.weight"]))
    x = leaky(_np_conv(x, w["module.afterconv4_trans.weight"])).reshape(b, -1)  # NCHW flatten
    p = x @ w["module.linear2.weight"].T + w["module.linear2.bias"]  # (B, 3) = tx, ty, angle
    cos, sin = np.cos(p[:, 2]) / 3.0, np.sin(p[:, 2]) / 3.0
    return np.stack([cos, -sin, p[:, 0], sin, cos, p[:, 1]], 1).reshape(b, 2, 3)
