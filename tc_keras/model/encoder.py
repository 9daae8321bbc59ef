"""ResNet trunk phi of TimeCycle (docs/METHOD.md, "Encoder").

ResNet-50 or ResNet-18 from scratch, res5 removed, res4 with stride 1 (no dilation), so the total
stride is 8; then a 1x1 convolution to 512 channels without bias, ReLU, and L2 normalisation over
channels. A 240x240 frame gives 30x30x512 features, an 80x80 patch 10x10x512. Every convolution
is initialised as in the reference (Kaiming normal, fan_out; BatchNorm scale 1, offset 0).

Padding: Keras' "same" pads a stride-2 convolution or pool of an even-sized input asymmetrically
(nothing before, the rest after), PyTorch pads k//2 on both sides: the sampled positions differ
by one pixel. Weights converted from the PyTorch releases (tc_keras/convert/releases.py) need PyTorch's
symmetric padding ("zeros": the TimeCycle release; "reflect": the Contrastive Random Walk
release, whose convolutions reflect-pad); "same" is the default and what every tc_keras training
run so far used.
"""

import math

import keras
from keras import layers

from tc_keras.model import batchnorm
from tc_keras.model import initializers
from tc_keras import ops as tops

# Blocks per stage (res2, res3, res4) of the standard ResNets; res5 is removed.
STAGES = {18: (2, 2, 2), 50: (3, 4, 6)}
# Width of each stage; bottleneck blocks expand by 4.
_WIDTHS = (64, 128, 256)
# Stride of each stage after the stem: res4 keeps stride 1 (docs/METHOD.md, "Encoder") -> total stride 8.
_STAGE_STRIDES = (1, 2, 1)
# res5 (ResNet's layer4), which the contrastive random walk trains through at stride 1 and drops
# at test time (docs/METHOD.md, "Contrastive random walk"): blocks and width.
_RES5_BLOCKS = {18: 2, 50: 3}
_RES5_WIDTH = 512
# Total stride of the features: the stem's convolution (2) and max pool (2), then the stages.
FEATURE_STRIDE = 2 * 2 * math.prod(_STAGE_STRIDES)
# The reference's BatchNorm momentum 0.1 in Keras' convention (docs/METHOD.md, "BatchNorm batches").
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# "same": Keras' own (asymmetric for stride 2 on even sizes); "zeros" / "reflect": k//2 on both
# sides, as PyTorch's Conv2d(padding=k//2, padding_mode=...) (see the module docstring).
PADDINGS = ("same", "zeros", "reflect")
# The stem's max pool (k3, stride 2).
POOL_SIZE = 3


def _conv(filters, kernel, stride=1, padding="same", name=None):
    # Symmetric modes pad explicitly in `_pad` (except where "same" is already symmetric: zero
    # padding at stride 1) and convolve "valid".
    same = padding == "same" or (padding == "zeros" and stride == 1) or kernel == 1
    return layers.Conv2D(filters, kernel, strides=stride, padding="same" if same else "valid",
                         use_bias=False, kernel_initializer=initializers.he_normal_fan_out(),
                         name=name)


def _pad(x, conv, padding):
    """Pads `x` by k//2 on each side (mode "zeros" or "reflect") where `conv` convolves "valid"."""
    if conv.padding == "same":
        return x
    p = conv.kernel_size[0] // 2
    # (B, H, W, C) -> (B, H + 2p, W + 2p, C)
    mode = "reflect" if padding == "reflect" else "constant"
    return keras.ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)


def _bn(synchronized, name=None):
    return batchnorm.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name,
                                   synchronized=synchronized)


class _ResidualBlock(layers.Layer):
    """Basic (two 3x3) or bottleneck (1x1-3x3-1x1, x4 expansion) residual block. Internal."""

    def __init__(self, width, stride, bottleneck, project, sync_batchnorm, padding="same",
                 **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.stride = stride
        self.bottleneck = bottleneck
        self.project = project
        self.padding = padding
        out = width * 4 if bottleneck else width
        if bottleneck:
            self.convs = [_conv(width, 1, name="conv1"),
                          _conv(width, 3, stride, padding, name="conv2"),
                          _conv(out, 1, name="conv3")]
        else:
            self.convs = [_conv(width, 3, stride, padding, name="conv1"),
                          _conv(out, 3, 1, padding, name="conv2")]
        self.bns = [_bn(sync_batchnorm, name=f"bn{i + 1}") for i in range(len(self.convs))]
        if project:
            self.shortcut_conv = _conv(out, 1, stride, name="shortcut_conv")
            self.shortcut_bn = _bn(sync_batchnorm, name="shortcut_bn")

    def call(self, x, training=None):
        y = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            y = bn(conv(_pad(y, conv, self.padding)), training=training)
            if i < len(self.convs) - 1:
                y = keras.ops.relu(y)
        shortcut = x
        if self.project:
            shortcut = self.shortcut_bn(self.shortcut_conv(x), training=training)
        return keras.ops.relu(y + shortcut)


@keras.saving.register_keras_serializable(package="tc_keras")
class ResNetEncoder(layers.Layer):
    """ResNet-18/50 trunk at stride 8 with a 1x1 projection and L2-normalised output.

    Args:
      depth: 18 or 50.
      out_channels: channels of the 1x1 projection + ReLU (512 in the paper); None for no
        projection: the output is res4's (1024 channels for ResNet-50, 256 for ResNet-18; the
        Contrastive Random Walk release).
      normalize: L2-normalise the output over channels (True for every use in TimeCycle).
      sync_batchnorm: BatchNorm statistics over all replicas of a tf.distribute strategy
        (TensorFlow backend) instead of each replica's own share of the batch.
      padding: one of `PADDINGS`: "same" (Keras', the default), "zeros" or "reflect" (k//2 on
        both sides of every convolution and of the stem's max pool, as PyTorch).

    Call arguments:
      frames: (B, H, W, 3) ImageNet-normalised float frames, H and W multiples of 8
        (`FEATURE_STRIDE`).
      training: BatchNorm mode.
      normalize: overrides the `normalize` argument for this call (None: keep it); the
        contrastive random walk trains on the features before normalisation.

    Returns:
      (B, H/8, W/8, C) features, C = out_channels (res4's channels when None), unit L2 norm over
      channels when `normalize`.
    """

    def __init__(self, depth=50, out_channels=512, normalize=True, sync_batchnorm=False,
                 padding="same", **kwargs):
        super().__init__(**kwargs)
        if depth not in STAGES:
            raise ValueError(f"ResNetEncoder depth must be one of {sorted(STAGES)}, got {depth!r}")
        if padding not in PADDINGS:
            raise ValueError(f"ResNetEncoder padding must be one of {PADDINGS}, got {padding!r}")
        self.depth = depth
        self.out_channels = out_channels
        self.normalize = normalize
        self.sync_batchnorm = sync_batchnorm
        self.padding = padding
        bottleneck = depth == 50
        self.stem_conv = _conv(64, 7, 2, padding, name="stem_conv")
        self.stem_bn = _bn(sync_batchnorm, name="stem_bn")
        # Symmetric modes pad the pool's input by 1 with zeros, which equals PyTorch's -inf
        # padding here: the input is a ReLU output (>= 0) and every window holds a real pixel.
        self.stem_pool = layers.MaxPooling2D(POOL_SIZE, strides=2, name="stem_pool",
                                             padding="same" if padding == "same" else "valid")
        self.blocks = []
        in_ch = 64
        for stage, (count, width, stride) in enumerate(zip(STAGES[depth], _WIDTHS,
                                                             _STAGE_STRIDES)):
            out_ch = width * 4 if bottleneck else width
            for i in range(count):
                s = stride if i == 0 else 1
                project = i == 0 and (s != 1 or in_ch != out_ch)
                self.blocks.append(_ResidualBlock(width, s, bottleneck, project, sync_batchnorm,
                                                  padding, name=f"res{stage + 2}_{i}"))
                in_ch = out_ch
        self.feature_channels = in_ch
        self.projection = None
        if out_channels is not None:
            self.projection = layers.Conv2D(out_channels, 1, use_bias=False, name="projection",
                                            kernel_initializer=initializers.he_normal_fan_out())

    def build(self, input_shape):
        # Builds every sub-layer by tracing one symbolic call (also used when loading).
        shape = tuple(input_shape)[:-1] + (3,)
        self.call(keras.KerasTensor(shape))
        self.built = True

    def call(self, frames, training=None, normalize=None):
        x = self.stem_bn(self.stem_conv(_pad(frames, self.stem_conv, self.padding)),
                         training=training)
        x = keras.ops.relu(x)
        if self.padding != "same":
            p = POOL_SIZE // 2
            # (B, H, W, C) -> (B, H + 2p, W + 2p, C), zeros (see stem_pool)
            x = keras.ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        x = self.stem_pool(x)
        for block in self.blocks:
            x = block(x, training=training)
        if self.projection is not None:
            x = keras.ops.relu(self.projection(x))
        if self.normalize if normalize is None else normalize:
            x = tops.l2_normalize(x, axis=-1)
        return x

    def compute_output_shape(self, input_shape):
        def down(n):  # "same" padding: ceil(n / stride)
            return None if n is None else -(-n // FEATURE_STRIDE)
        channels = self.feature_channels if self.out_channels is None else self.out_channels
        return (input_shape[0], down(input_shape[1]), down(input_shape[2]), channels)

    def get_config(self):
        config = super().get_config()
        config.update(depth=self.depth, out_channels=self.out_channels, normalize=self.normalize,
                      sync_batchnorm=self.sync_batchnorm, padding=self.padding)
        return config


def res5_blocks(depth, sync_batchnorm=False, padding="same"):
    """ResNet's res5 stage at stride 1 (list of blocks, named res5_0, ...): 512 channels after
    ResNet-18's res4 (256), 2048 after ResNet-50's (1024). Not part of `ResNetEncoder`, whose
    features end at res4; the contrastive random walk trains through it (see `_RES5_BLOCKS`)."""
    if depth not in STAGES:
        raise ValueError(f"res5_blocks depth must be one of {sorted(STAGES)}, got {depth!r}")
    bottleneck = depth == 50
    return [_ResidualBlock(_RES5_WIDTH, 1, bottleneck, project=i == 0,
                           sync_batchnorm=sync_batchnorm, padding=padding, name=f"res5_{i}")
            for i in range(_RES5_BLOCKS[depth])]
