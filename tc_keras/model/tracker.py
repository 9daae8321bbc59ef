"""The differentiable tracker T(x_I, x_p) = h(x_I, g(f(x_I, x_p))) (docs/METHOD.md, "Model").

f = `Affinity`, g = `Localizer`, h = `SpatialSampler`; `Tracker` composes them.
"""

import keras
from keras import layers

from tc_keras.model import initializers
from tc_keras import ops as tops

# Affinity temperature T = 512**-0.5: logits are dot / T, i.e. dot * 22.6 (docs/METHOD.md, "Affinity").
AFFINITY_TEMPERATURE = 512 ** -0.5
# The localizer (docs/METHOD.md, "Localizer"): two valid convolutions of kernel 4 with 128 and 64
# filters, LeakyReLU slope 0.1.
LOCALIZER_FILTERS = (128, 64)
LOCALIZER_KERNEL = 4
LEAKY_SLOPE = 0.1


@keras.saving.register_keras_serializable(package="tc_keras")
class Affinity(layers.Layer):
    """Softmax over image positions of scaled feature dot products.

    Args:
      temperature: logits are dot / temperature (default 512**-0.5).

    Call arguments:
      image_feats: (B, H, W, C) L2-normalised image features.
      query_feats: (B, h, w, C) L2-normalised query (patch) features.

    Returns:
      (B, h, w, N), N = H*W image positions in row-major (y*W + x) order, summing to 1 over N.
    """

    def __init__(self, temperature=AFFINITY_TEMPERATURE, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature

    def call(self, image_feats, query_feats):
        return tops.affinity_softmax(image_feats, query_feats, self.temperature)

    def compute_output_shape(self, image_feats_shape, query_feats_shape):
        n = (None if None in image_feats_shape[1:3]
             else image_feats_shape[1] * image_feats_shape[2])
        return (query_feats_shape[0], query_feats_shape[1], query_feats_shape[2], n)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        return config


@keras.saving.register_keras_serializable(package="tc_keras")
class Localizer(layers.Layer):
    """CNN g: affinity (as N channels over the query grid) -> affine theta with fixed scale.

    conv N->128 k4 valid + LeakyReLU 0.1, conv 128->64 k4 valid + LeakyReLU 0.1, flatten,
    dense 3 = (tx, ty, angle), theta = [[s cos a, -s sin a, tx], [s sin a, s cos a, ty]].
    Initialised as the reference: convolutions without bias, Kaiming normal fan_out; the dense
    layer N(0, 0.01) with a zero bias, so an untrained localizer answers theta close to a centred,
    unrotated patch.

    Args:
      filters: channels of the two convolutions (128, 64 in the paper).
      kernel_size: kernel of both convolutions (4).
      scale: the fixed scale s of theta (1/3).

    Call arguments:
      affinity: (B, h, w, N) from `Affinity`; h, w fixed per model (10x10 -> 7x7 -> 4x4 -> 1024).

    Returns:
      (B, 2, 3) theta.
    """

    def __init__(self, filters=LOCALIZER_FILTERS, kernel_size=LOCALIZER_KERNEL,
                 scale=tops.PATCH_SCALE, **kwargs):
        super().__init__(**kwargs)
        self.filters = tuple(filters)
        self.kernel_size = kernel_size
        self.scale = scale
        policy = self.dtype_policy  # the sub-layers run in this layer's policy, not the global one
        self.convs = [layers.Conv2D(f, kernel_size, padding="valid", use_bias=False,
                                    kernel_initializer=initializers.he_normal_fan_out(),
                                    name=f"conv{i + 1}", dtype=policy)
                      for i, f in enumerate(self.filters)]
        self.flatten = layers.Flatten(dtype=policy)
        self.dense = layers.Dense(3, kernel_initializer=initializers.dense_normal(),
                                  bias_initializer="zeros", name="params", dtype=policy)

    def build(self, input_shape):
        self.call(keras.KerasTensor(tuple(input_shape)))  # builds the sub-layers
        self.built = True

    def call(self, affinity):
        x = affinity
        for conv in self.convs:
            x = keras.ops.leaky_relu(conv(x), negative_slope=LEAKY_SLOPE)
        params = self.dense(self.flatten(x))  # (B, 3) = tx, ty, angle
        return tops.theta_from_params(params[:, 0], params[:, 1], params[:, 2], self.scale)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2, 3)

    def get_config(self):
        config = super().get_config()
        config.update(filters=list(self.filters), kernel_size=self.kernel_size, scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package="tc_keras")
class SpatialSampler(layers.Layer):
    """Spatial transformer h: bilinear sampling of a feature map through theta, zero padding.

    Args:
      height, width: size of the output grid (10x10 for the patch at training resolution).

    Call arguments:
      features: (B, H, W, C) any spatial size.
      theta: (B, 2, 3).

    Returns:
      (B, height, width, C).
    """

    def __init__(self, height=10, width=10, **kwargs):
        super().__init__(**kwargs)
        self.height = height
        self.width = width

    def call(self, features, theta):
        return tops.affine_sample(features, theta, self.height, self.width)

    def compute_output_shape(self, features_shape, theta_shape):
        return (features_shape[0], self.height, self.width, features_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(height=self.height, width=self.width)
        return config


@keras.saving.register_keras_serializable(package="tc_keras")
class Tracker(layers.Layer):
    """One tracking step: where is the query in the image, and what does the image hold there.

    Args:
      patch_size: (h, w) of the query feature grid (10, 10).
      temperature: affinity temperature.
      filters, kernel_size, scale: localizer arguments.

    Call arguments:
      image_feats: (B, H, W, C) L2-normalised.
      query_feats: (B, h, w, C) L2-normalised.

    Returns:
      dict with `theta` (B, 2, 3), `affinity` (B, h, w, N) and `features` (B, h, w, C): the image
      features sampled at theta, re-normalised (the next query of a cycle).
    """

    def __init__(self, patch_size=(10, 10), temperature=AFFINITY_TEMPERATURE,
                 filters=LOCALIZER_FILTERS, kernel_size=LOCALIZER_KERNEL, scale=tops.PATCH_SCALE,
                 **kwargs):
        super().__init__(**kwargs)
        self.patch_size = tuple(patch_size)
        self.temperature = temperature
        self.filters = tuple(filters)
        self.kernel_size = kernel_size
        self.scale = scale
        # The sub-layers run in the tracker's own dtype policy (float32 under a mixed policy: its
        # coordinates need it), not the global one.
        policy = self.dtype_policy
        self.affinity = Affinity(temperature, name="affinity", dtype=policy)
        self.localizer = Localizer(filters, kernel_size, scale, name="localizer", dtype=policy)
        self.sampler = SpatialSampler(*self.patch_size, name="sampler", dtype=policy)

    def build(self, image_feats_shape, query_feats_shape):
        self.call(keras.KerasTensor(tuple(image_feats_shape)),
                  keras.KerasTensor(tuple(query_feats_shape)))  # builds the sub-layers
        self.built = True

    def call(self, image_feats, query_feats):
        affinity = self.affinity(image_feats, query_feats)
        theta = self.localizer(affinity)
        features = tops.l2_normalize(self.sampler(image_feats, theta), axis=-1)
        return {"theta": theta, "affinity": affinity, "features": features}

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=list(self.patch_size), temperature=self.temperature,
                      filters=list(self.filters), kernel_size=self.kernel_size, scale=self.scale)
        return config
