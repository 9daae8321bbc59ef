"""BatchNormalization whose training step is one fused kernel under TensorFlow.

Keras 3's BatchNormalization computes the batch moments and the normalisation with separate ops
(a mean, a squared difference, a mean, a subtraction, a multiplication, ...), each a pass over the
activations, and as many again for their gradients: in the ResNet-50 TimeCycle step that is about
a quarter of the time. Under the TensorFlow backend, in training mode, this `BatchNormalization`
runs TensorFlow's FusedBatchNormV3 (oneDNN on CPU, cuDNN on GPU) and its fused gradient instead.
Same formula, same moving-statistics update, same variables; outputs equal to float rounding.
The class keeps Keras' name: Keras stores the weights of layers held in a list under their class
name in snake case (`.../bns/batch_normalization`), so encoder files saved with Keras' layer load
into this one and the other way round (tested). Inference, other backends, synchronized
statistics, masks and anything but 4-D channels-last float32 input take Keras' own path.
"""

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="tc_keras")
class BatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a fused training step under TensorFlow.

    Args, call arguments and returns: those of `keras.layers.BatchNormalization`.
    """

    def _fusable(self, inputs, training, mask):
        return (training and self.trainable and mask is None and not self.synchronized
                and not self.renorm and self.scale and self.center
                and keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4
                and self.axis in (-1, 3) and keras.backend.standardize_dtype(inputs.dtype)
                == "float32")

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # noqa: PLC0415 (the TensorFlow backend only)

        empty = tf.constant([], tf.float32)
        outputs, mean, variance = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=self.gamma, offset=self.beta, mean=empty, variance=empty,
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
            is_training=True)[:3]
        # The kernel normalises with the biased batch variance but returns the unbiased one
        # (n / (n - 1)); Keras' moving variance averages the biased one: undo the correction.
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
        variance = variance * (count - 1.0) / count
        momentum = tf.cast(self.momentum, tf.float32)
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum
                                    + variance * (1.0 - momentum))
        return outputs
