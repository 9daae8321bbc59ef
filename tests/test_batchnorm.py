"""batchnorm.BatchNormalization: Keras' BatchNormalization, its training step one fused kernel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tc_keras.model import batchnorm
from tests.layer_check import run_layer_check


def test_layer_check():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 4)).astype(np.float32)
    run_layer_check(batchnorm.BatchNormalization, dict(momentum=0.9, epsilon=1e-5), x, x.shape)


@pytest.mark.parametrize("training", [True, False])
def test_outputs_gradients_and_moving_statistics_equal_keras(training):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(2.0, 3.0, size=(3, 7, 5, 6)).astype(np.float32))
    layers = [cls(momentum=0.9, epsilon=1e-5) for cls in (keras.layers.BatchNormalization,
                                                          batchnorm.BatchNormalization)]
    layers[0].build(x.shape)
    weights = [rng.normal(size=6).astype(np.float32) if i < 2 else w
               for i, w in enumerate(layers[0].get_weights())]  # gamma, beta random
    layers[1].build(x.shape)
    for layer in layers:
        layer.set_weights(weights)
    results = []
    for layer in layers:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * tf.sin(y))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for name, a, b in zip(("y", "dx", "dgamma", "dbeta", "moving mean", "moving variance"),
                          *results):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-4,
                                   err_msg=name)
    if training:  # the statistics did move
        assert not np.allclose(np.asarray(layers[1].moving_mean), 0.0)
