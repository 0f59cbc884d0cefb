"""``BarlowTwins``: a Keras model whose ``train_step`` optimises the Barlow Twins
loss of the global batch, exactly, under any ``tf.distribute`` strategy.

Examples:

>>> import numpy as np, tensorflow as tf
>>> import bt_keras
>>> enc = bt_keras.encoders.small_cnn(widths=(8, 16), input_shape=(16, 16, 3))
>>> model = bt_keras.BarlowTwins(enc, projector_dims=(32, 32, 32))
>>> model.compile(optimizer=bt_keras.LARS(learning_rate=0.1))
>>> x = np.random.rand(8, 16, 16, 3).astype("float32")
>>> pairs = tf.data.Dataset.from_tensor_slices((x, x[::-1])).batch(4, drop_remainder=True)
>>> history = model.fit(pairs, epochs=1, verbose=0)
>>> sorted(history.history)[:3]
['embedding_std', 'learning_rate', 'loss']
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from bt_keras.layers import batch_norm
from bt_keras.losses import barlow_twins_terms


def _multi_worker(strategy) -> bool:
    extended = getattr(strategy, "extended", None)
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        getattr(extended, "_in_multi_worker_mode", lambda: False)()
    )


def build_projector(
    dims, sync_batchnorm: bool = True, fused_batchnorm: bool = True, name: str = "projector"
) -> keras.Sequential:
    """``[Dense(no bias) → BN → ReLU] × (len(dims) − 1) → Dense(no bias)``."""
    stack = []
    for i, d in enumerate(dims):
        stack.append(layers.Dense(d, use_bias=False, name=f"dense{i + 1}"))
        if i < len(dims) - 1:
            stack.append(batch_norm(sync_batchnorm, fused_batchnorm, name=f"bn{i + 1}"))
            stack.append(layers.ReLU(name=f"relu{i + 1}"))
    return keras.Sequential(stack, name=name)


@keras.saving.register_keras_serializable(package="bt_keras")
class BarlowTwins(keras.Model):
    """Encoder + projector trained with the Barlow Twins loss.

    ``fit`` consumes a dataset of ``(view_a, view_b)`` batches. Each view goes
    through the encoder and projector on its own (BN statistics never mix the
    views). Under a strategy the loss is that of the global batch on every
    replica, divided by the replica count because Keras' TF optimizer sums the
    replicas' gradients: weights and losses equal single-device training on
    the global batch.

    Args:
      encoder: backbone; ``model.encoder`` is what gets evaluated and exported.
      projector_dims: widths of the projector's Dense layers.
      lambd: off-diagonal weight λ.
      loss_method: ``"auto" | "dense" | "gram"`` (see ``barlow_twins_terms``).
      sync_batchnorm: synchronise the projector's BN over replicas.
      fused_batchnorm: train the projector's BN through one fused kernel
        where its statistics are local (``bt_keras.layers``).

    Logged metrics: ``loss``, ``on_diag``, ``off_diag``, ``learning_rate`` and
    ``embedding_std``: the mean over dimensions of the batch std of the
    L2-normalised embeddings × √D, about 1 for well-spread embeddings and
    0 at collapse.
    """

    def __init__(
        self,
        encoder: keras.Model,
        projector_dims=(8192, 8192, 8192),
        lambd: float = 0.0051,
        loss_method: str = "auto",
        sync_batchnorm: bool = True,
        fused_batchnorm: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.projector_dims = tuple(int(d) for d in projector_dims)
        self.lambd = float(lambd)
        self.loss_method = loss_method
        self.sync_batchnorm = bool(sync_batchnorm)
        self.fused_batchnorm = bool(fused_batchnorm)
        self.projector = build_projector(self.projector_dims, sync_batchnorm, fused_batchnorm)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.on_diag_tracker = keras.metrics.Mean(name="on_diag")
        self.off_diag_tracker = keras.metrics.Mean(name="off_diag")
        self.std_tracker = keras.metrics.Mean(name="embedding_std")

    @property
    def metrics(self):
        return [self.loss_tracker, self.on_diag_tracker, self.off_diag_tracker, self.std_tracker]

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)
        self.projector.build(self.encoder.compute_output_shape(input_shape))
        super().build(input_shape)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 builds a compiled model by strategy.reduce-ing a sample batch,
        # which fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).
        # A built BarlowTwins has nothing symbolic left to build but the optimizer.
        if not self.built or self._compile_metrics is not None or self._compile_loss is not None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def call(self, images, training=False):
        return self.projector(self.encoder(images, training=training), training=training)

    def _terms(self, data, training):
        if len(data) == 1:  # fit(x=(view_a, view_b)) arrives as ((view_a, view_b),)
            data = data[0]
        view_a, view_b = data
        z_a = self(view_a, training=training)
        z_b = self(view_b, training=training)
        return z_a, barlow_twins_terms(z_a, z_b, self.lambd, self.loss_method)

    def _update_metrics(self, z_a, terms):
        z = tf.math.l2_normalize(tf.cast(z_a, tf.float32), axis=1)
        dim = tf.cast(tf.shape(z)[1], tf.float32)
        self.std_tracker.update_state(tf.reduce_mean(tf.math.reduce_std(z, axis=0)) * tf.sqrt(dim))
        self.loss_tracker.update_state(terms.loss)
        self.on_diag_tracker.update_state(terms.on_diag)
        self.off_diag_tracker.update_state(terms.off_diag)
        logs = {m.name: m.result() for m in self.metrics}
        if self.optimizer is not None:
            logs["learning_rate"] = tf.cast(self.optimizer.learning_rate, tf.float32)
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras reduces multi-worker logs with reduce(MEAN, axis=0), which
            # rejects scalars (keras-team/keras#20585): give them a batch axis.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def train_step(self, data):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            z_a, terms = self._terms(data, training=True)
            loss = terms.loss
            if self.losses:  # Regularisers (if any) are per replica: same scaling.
                loss = loss + tf.cast(tf.add_n(self.losses), tf.float32)
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # A diverged step must log a NaN loss (TrainingGuard stops on it), but oneDNN's fused
            # BN + ReLU maps NaN to 0, so the loss can stay finite; the gradients never do.
            # (Under float16 loss scaling, non-finite gradients are routine skipped steps.)
            finite = tf.math.is_finite(tf.linalg.global_norm(grads))
            terms = terms._replace(loss=tf.where(finite, terms.loss, float("nan")))
        return self._update_metrics(z_a, terms)

    def test_step(self, data):
        z_a, terms = self._terms(data, training=False)
        return self._update_metrics(z_a, terms)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "projector_dims": list(self.projector_dims),
                "lambd": self.lambd,
                "loss_method": self.loss_method,
                "sync_batchnorm": self.sync_batchnorm,
                "fused_batchnorm": self.fused_batchnorm,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
