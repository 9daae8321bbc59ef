"""ResNet trunk phi of TimeCycle (PAPER.md, "encoder phi").

ResNet-50 or ResNet-18 from scratch, res5 removed, res4 with stride 1 (no dilation), so the total
stride is 8; then a 1x1 convolution to 512 channels without bias, ReLU, and L2 normalisation over
channels. A 240x240 frame gives 30x30x512 features, an 80x80 patch 10x10x512. Every convolution
is initialised as in the reference (Kaiming normal, fan_out; BatchNorm scale 1, offset 0).
"""

import math

import keras
from keras import layers

from tc_keras import initializers
from tc_keras import ops as tops

# Blocks per stage (res2, res3, res4) of the standard ResNets; res5 is removed.
_STAGES = {18: (2, 2, 2), 50: (3, 4, 6)}
# Width of each stage; bottleneck blocks expand by 4.
_WIDTHS = (64, 128, 256)
# Stride of each stage after the stem: res4 keeps stride 1 (PAPER.md) -> total stride 8.
_STAGE_STRIDES = (1, 2, 1)
# Total stride of the features: the stem's convolution (2) and max pool (2), then the stages.
FEATURE_STRIDE = 2 * 2 * math.prod(_STAGE_STRIDES)
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _conv(filters, kernel, stride=1, name=None):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer=initializers.he_normal_fan_out(), name=name)


def _bn(synchronized, name=None):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name,
                                     synchronized=synchronized)


class _ResidualBlock(layers.Layer):
    """Basic (two 3x3) or bottleneck (1x1-3x3-1x1, x4 expansion) residual block. Internal."""

    def __init__(self, width, stride, bottleneck, project, sync_batchnorm, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.stride = stride
        self.bottleneck = bottleneck
        self.project = project
        out = width * 4 if bottleneck else width
        if bottleneck:
            self.convs = [_conv(width, 1, name="conv1"), _conv(width, 3, stride, name="conv2"),
                          _conv(out, 1, name="conv3")]
        else:
            self.convs = [_conv(width, 3, stride, name="conv1"), _conv(out, 3, name="conv2")]
        self.bns = [_bn(sync_batchnorm, name=f"bn{i + 1}") for i in range(len(self.convs))]
        if project:
            self.shortcut_conv = _conv(out, 1, stride, name="shortcut_conv")
            self.shortcut_bn = _bn(sync_batchnorm, name="shortcut_bn")

    def call(self, x, training=None):
        y = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            y = bn(conv(y), training=training)
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
      out_channels: channels of the 1x1 projection (512 in the paper).
      normalize: L2-normalise the output over channels (True for every use in TimeCycle).
      sync_batchnorm: BatchNorm statistics over all replicas of a tf.distribute strategy
        (TensorFlow backend) instead of each replica's own share of the batch.

    Call arguments:
      frames: (B, H, W, 3) ImageNet-normalised float frames, H and W multiples of 8
        (`FEATURE_STRIDE`).
      training: BatchNorm mode.

    Returns:
      (B, H/8, W/8, out_channels) features, unit L2 norm over channels when `normalize`.
    """

    def __init__(self, depth=50, out_channels=512, normalize=True, sync_batchnorm=False, **kwargs):
        super().__init__(**kwargs)
        if depth not in _STAGES:
            raise ValueError(f"ResNetEncoder depth must be one of {sorted(_STAGES)}, got {depth!r}")
        self.depth = depth
        self.out_channels = out_channels
        self.normalize = normalize
        self.sync_batchnorm = sync_batchnorm
        bottleneck = depth == 50
        self.stem_conv = _conv(64, 7, 2, name="stem_conv")
        self.stem_bn = _bn(sync_batchnorm, name="stem_bn")
        self.stem_pool = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")
        self.blocks = []
        in_ch = 64
        for stage, (count, width, stride) in enumerate(zip(_STAGES[depth], _WIDTHS,
                                                             _STAGE_STRIDES)):
            out_ch = width * 4 if bottleneck else width
            for i in range(count):
                s = stride if i == 0 else 1
                project = i == 0 and (s != 1 or in_ch != out_ch)
                self.blocks.append(_ResidualBlock(width, s, bottleneck, project, sync_batchnorm,
                                                  name=f"res{stage + 2}_{i}"))
                in_ch = out_ch
        self.feature_channels = in_ch
        self.projection = layers.Conv2D(out_channels, 1, use_bias=False, name="projection",
                                        kernel_initializer=initializers.he_normal_fan_out())

    def build(self, input_shape):
        # Builds every sub-layer by tracing one symbolic call (also used when loading).
        shape = tuple(input_shape)[:-1] + (3,)
        self.call(keras.KerasTensor(shape))
        self.built = True

    def call(self, frames, training=None):
        x = self.stem_bn(self.stem_conv(frames), training=training)
        x = self.stem_pool(keras.ops.relu(x))
        for block in self.blocks:
            x = block(x, training=training)
        x = keras.ops.relu(self.projection(x))
        if self.normalize:
            x = tops.l2_normalize(x, axis=-1)
        return x

    def compute_output_shape(self, input_shape):
        def down(n):  # "same" padding: ceil(n / stride)
            return None if n is None else -(-n // FEATURE_STRIDE)
        return (input_shape[0], down(input_shape[1]), down(input_shape[2]), self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(depth=self.depth, out_channels=self.out_channels, normalize=self.normalize,
                      sync_batchnorm=self.sync_batchnorm)
        return config
