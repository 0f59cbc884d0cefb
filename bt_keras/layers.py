"""``FusedBatchNormalization``: Keras BatchNormalization, one fused kernel in training.

Keras 3 BN on the TensorFlow backend is unfused: moments, then an
elementwise normalisation, with float32 casts around bfloat16/float16 inputs,
several passes over every activation. In the CPU benchmark configuration that
was half of the train step's op time (``benchmarks/train_step.py``).
``FusedBatchNormV3`` reads the activation twice and keeps the compute dtype in
and out; oneDNN, cuDNN and XLA (TPU) all implement it. The maths is the same
(tests/test_performance.py compares losses, gradients and moving statistics).

The fused path is taken in training when the statistics are local: not
synchronised, or synchronised over a single replica. Otherwise (synchronised
BN across replicas, masks, inference) the layer is exactly Keras' own.

On other backends (JAX) the layer is Keras' BatchNormalization. There
``synchronized=True`` is accepted and ignored (under ``keras.distribution`` the
batch statistics are global already) but kept in the config, so a ``.keras``
file loads on either backend with the same meaning.

Examples:

>>> import numpy as np
>>> from keras import ops
>>> from bt_keras.layers import FusedBatchNormalization
>>> bn = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=True)
>>> y = bn(np.random.rand(8, 4, 4, 3).astype("float32"), training=True)
>>> round(float(np.abs(np.mean(ops.convert_to_numpy(y), axis=(0, 1, 2))).max()), 4)
0.0
>>> bn.get_config()["synchronized"]
True
"""

from __future__ import annotations

import keras

_TENSORFLOW = keras.backend.backend() == "tensorflow"
if _TENSORFLOW:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="bt_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` (same arguments, variables and
    checkpoints) that trains through ``FusedBatchNormV3`` on channels-last
    inputs of rank 2 or 4 whenever the batch statistics are local.

    On a backend other than TensorFlow it is Keras' layer, and ``synchronized``
    (which Keras allows only on TensorFlow) is recorded but not passed on.

    Args:
      synchronized: synchronise the statistics over ``tf.distribute`` replicas.
      **kwargs: ``keras.layers.BatchNormalization`` arguments.
    """

    def __init__(self, synchronized=False, **kwargs):
        super().__init__(synchronized=bool(synchronized) and _TENSORFLOW, **kwargs)
        self.requested_synchronized = bool(synchronized)

    def get_config(self):
        config = super().get_config()
        config["synchronized"] = self.requested_synchronized
        return config

    def _fused(self, inputs, training, mask) -> bool:
        if not _TENSORFLOW:
            return False
        if not training or not self.trainable or mask is not None or len(inputs.shape) not in (2, 4):
            return False
        if self.axis not in (-1, len(inputs.shape) - 1):
            return False
        # Synchronised statistics over more than one replica need Keras' all-reduce path.
        return not self.synchronized or tf.distribute.get_strategy().num_replicas_in_sync == 1

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        x = tf.cast(inputs, self.compute_dtype)
        if len(inputs.shape) == 2:
            x = tf.reshape(x, [-1, 1, 1, channels])
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        y, mean, var, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=gamma,
            offset=beta,
            mean=tf.zeros([0], tf.float32),
            variance=tf.zeros([0], tf.float32),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        # The returned batch variance carries Bessel's correction; Keras' moving variance does not.
        count = tf.cast(tf.size(x) // channels, tf.float32)
        var = var * (count - 1.0) / tf.maximum(count, 1.0)
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + tf.cast(mean, self.moving_mean.dtype) * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + tf.cast(var, self.moving_variance.dtype) * (1.0 - m))
        return tf.reshape(y, tf.shape(inputs)) if len(inputs.shape) == 2 else y


def batch_norm(sync: bool, fused: bool = True, zero_gamma: bool = False, name=None):
    """The package's BN layer: momentum 0.9, ε 1e-5 (the official code's PyTorch defaults).

    Args:
      sync: synchronise statistics over TF replicas (ignored on JAX, where they are global).
      fused: ``FusedBatchNormalization`` (else ``keras.layers.BatchNormalization``).
      zero_gamma: initialise γ to 0 (last BN of a residual block).
      name: layer name.

    Examples:

    >>> type(batch_norm(sync=True)).__name__
    'FusedBatchNormalization'
    """
    kwargs = dict(momentum=0.9, epsilon=1e-5, gamma_initializer="zeros" if zero_gamma else "ones", name=name)
    if not fused:
        # Keras refuses synchronized=True off TensorFlow; SPMD statistics are global there anyway.
        return keras.layers.BatchNormalization(synchronized=sync and _TENSORFLOW, **kwargs)
    return FusedBatchNormalization(synchronized=sync, **kwargs)
