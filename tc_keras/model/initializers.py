"""Weight initialisers of the reference code (docs/METHOD.md, "Initialisation").

The reference initialises every convolution (the ResNet trunk, the 1x1 projection and the
localizer's two convolutions) with PyTorch's Kaiming normal, mode fan_out, gain sqrt(2): an
untruncated normal with std sqrt(2 / (kh * kw * out_channels)); its dense layer with N(0, 0.01)
and a zero bias. Keras' "he_normal" is a *truncated* normal over fan_in, hence these. The
contrastive random walk's head is a PyTorch Linear with its default initialisation (weights and
bias uniform in +-1/sqrt(fan_in)).
"""

import keras

# Standard deviation of the localizer's dense layer weights (docs/METHOD.md, "Initialisation").
DENSE_STDDEV = 0.01


def he_normal_fan_out(seed=None):
    """Kaiming normal, fan_out, ReLU gain: N(0, 2 / (kh * kw * out_channels)), not truncated."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out",
                                              distribution="untruncated_normal", seed=seed)


def dense_normal(seed=None):
    """N(0, 0.01) for the localizer's dense layer."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=DENSE_STDDEV, seed=seed)


def linear_uniform(fan_in, seed=None):
    """PyTorch's default for a Linear layer's weights and bias: U(+-1/sqrt(fan_in))."""
    limit = fan_in ** -0.5
    return keras.initializers.RandomUniform(-limit, limit, seed=seed)
