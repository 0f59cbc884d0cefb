"""``BarlowTwins``: a Keras model whose ``train_step`` optimises the Barlow Twins
loss of the global batch, exactly, on TensorFlow (any ``tf.distribute``
strategy) and on JAX (one device, or ``keras.distribution`` over many).

The training steps are backend-specific (``_TensorFlowSteps``: a
``tf.GradientTape`` step run per replica; ``_JaxSteps``: a stateless step that
``jax.jit`` compiles over the global batch); the loss
(``bt_keras.losses``), the metrics and the saved format are shared.

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

import math

import keras
from keras import layers, ops

from bt_keras.layers import batch_norm
from bt_keras.losses import barlow_twins_terms, check_standardize

BACKEND = keras.backend.backend()
if BACKEND == "tensorflow":
    import tensorflow as tf


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


def _views(data):
    if len(data) == 1:  # fit(x=(view_a, view_b)) arrives as ((view_a, view_b),)
        data = data[0]
    return data


def check_encoder_output(shape) -> None:
    """Raises a one-line ``ValueError`` unless the encoder's output ``shape`` is ``[batch, dim]``.

    An encoder that ends in a feature map would otherwise fail deep inside the loss with a raw
    shape error; ``bt-train`` pools such backbones itself (``bt_keras.backbones``).

    >>> check_encoder_output((None, 4, 4, 64))
    Traceback (most recent call last):
    ...
    ValueError: BarlowTwins needs an encoder whose output is [batch, dim]; this one outputs (None, 4, 4, 64): ...
    """
    shape = tuple(shape)
    if len(shape) != 2:
        raise ValueError(
            f"BarlowTwins needs an encoder whose output is [batch, dim]; this one outputs {shape}: "
            "end it with keras.layers.GlobalAveragePooling2D() (or Flatten())"
        )


def _embedding_std(z):
    """Mean over dimensions of the batch std of the L2-normalised rows, × √D: the ``embedding_std`` metric on
    both backends (``callbacks.health`` computes the per-dimension values in NumPy for its reports)."""
    z = ops.cast(z, "float32")
    z = z * ops.rsqrt(ops.maximum(ops.sum(ops.square(z), axis=1, keepdims=True), 1e-12))
    return ops.mean(ops.std(z, axis=0)) * math.sqrt(z.shape[-1])


class _TensorFlowSteps:
    """``train_step`` / ``test_step`` on TensorFlow: run per replica under any ``tf.distribute`` strategy."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 builds a compiled model by strategy.reduce-ing a sample batch,
        # which fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).
        # A built BarlowTwins has nothing symbolic left to build but the optimizer.
        if not self.built or self._compile_metrics is not None or self._compile_loss is not None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def _update_metrics(self, z_a, terms):
        self.std_tracker.update_state(_embedding_std(z_a))
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


class _JaxSteps:
    """Stateless ``train_step`` / ``test_step`` on JAX.

    Keras ``jax.jit``-compiles them; under ``keras.distribution.DataParallel`` the
    batch is one global array sharded over devices, so BN statistics, the loss
    and its gradients are those of the global batch (XLA adds the collectives)
    and no division by the device count is needed.
    """

    def _jax_forward(self, trainable, non_trainable, data, training):
        view_a, view_b = _views(data)
        z_a, non_trainable, _ = self.stateless_call(
            trainable, non_trainable, view_a, training=training, return_losses=True
        )
        z_b, non_trainable, losses = self.stateless_call(
            trainable, non_trainable, view_b, training=training, return_losses=True
        )
        terms = barlow_twins_terms(z_a, z_b, self.lambd, self.loss_method, standardize=self.standardize)
        loss = terms.loss
        for extra in losses:  # Regularisers (if any), as self.losses after the second view on TF.
            loss = loss + ops.cast(extra, "float32")
        return loss, (z_a, terms, non_trainable)

    def _jax_metrics(self, metrics_variables, z_a, terms):
        with keras.StatelessScope(state_mapping=list(zip(self.metrics_variables, metrics_variables))) as scope:
            self.std_tracker.update_state(_embedding_std(z_a))
            self.loss_tracker.update_state(terms.loss)
            self.on_diag_tracker.update_state(terms.on_diag)
            self.off_diag_tracker.update_state(terms.off_diag)
            logs = {m.name: m.result() for m in self.metrics}
        updated = [scope.get_current_value(v) for v in self.metrics_variables]
        return logs, [old if new is None else new for new, old in zip(updated, metrics_variables)]

    def train_step(self, state, data):
        import jax
        import jax.numpy as jnp

        trainable, non_trainable, optimizer_variables, metrics_variables = state
        optimizer_mapping = list(zip(self.optimizer.variables, optimizer_variables))

        def scaled_loss(trainable_values, non_trainable_values):
            loss, aux = self._jax_forward(trainable_values, non_trainable_values, data, training=True)
            with keras.StatelessScope(state_mapping=optimizer_mapping):
                return self.optimizer.scale_loss(loss), aux

        (_, (z_a, terms, new_non_trainable)), grads = jax.value_and_grad(scaled_loss, has_aux=True)(
            trainable, non_trainable
        )
        new_trainable, new_optimizer = self.optimizer.stateless_apply(optimizer_variables, grads, trainable)
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # As on TensorFlow, a diverged step logs a NaN loss (TrainingGuard stops on it); here it
            # also leaves every variable as it was. (Loss scaling skips such steps itself.)
            finite = jnp.isfinite(jnp.sqrt(sum(jnp.sum(jnp.square(g.astype("float32"))) for g in grads)))
            keep = lambda new, old: jnp.where(finite, new, old)
            new_trainable = jax.tree_util.tree_map(keep, new_trainable, trainable)
            new_non_trainable = jax.tree_util.tree_map(keep, new_non_trainable, non_trainable)
            new_optimizer = jax.tree_util.tree_map(keep, new_optimizer, optimizer_variables)
            terms = terms._replace(loss=jnp.where(finite, terms.loss, jnp.nan))
        logs, metrics_variables = self._jax_metrics(metrics_variables, z_a, terms)
        with keras.StatelessScope(state_mapping=list(zip(self.optimizer.variables, new_optimizer))):
            logs["learning_rate"] = ops.cast(self.optimizer.learning_rate, "float32")
        return logs, (new_trainable, new_non_trainable, new_optimizer, metrics_variables)

    def test_step(self, state, data):
        trainable, non_trainable, metrics_variables = state
        _, (z_a, terms, non_trainable) = self._jax_forward(trainable, non_trainable, data, training=False)
        logs, metrics_variables = self._jax_metrics(metrics_variables, z_a, terms)
        return logs, (trainable, non_trainable, metrics_variables)


_STEPS = {"tensorflow": _TensorFlowSteps, "jax": _JaxSteps}


@keras.saving.register_keras_serializable(package="bt_keras")
class BarlowTwins(_STEPS.get(BACKEND, object), keras.Model):
    """Encoder + projector trained with the Barlow Twins loss.

    ``fit`` consumes a dataset of ``(view_a, view_b)`` batches. Each view goes
    through the encoder and projector on its own (BN statistics never mix the
    views). On TensorFlow under a strategy the loss is that of the global batch
    on every replica, divided by the replica count because Keras' TF optimizer
    sums the replicas' gradients. On JAX under ``keras.distribution`` the step
    sees the global batch as one sharded array. Either way weights and losses
    equal single-device training on the global batch. A step whose gradients
    are not finite logs ``loss = NaN`` (on JAX it also leaves the variables
    unchanged). The model trains on the ``tensorflow`` and ``jax`` backends.

    Args:
      encoder: backbone, any ``keras.Model`` whose output is ``[batch, dim]``
        (end a convolutional one with ``GlobalAveragePooling2D``);
        ``model.encoder`` is what gets evaluated and exported.
      projector_dims: widths of the projector's Dense layers; the paper's
        ImageNet recipe uses ``(8192, 8192, 8192)``.
      lambd: off-diagonal weight λ.
      loss_method: ``"auto" | "dense" | "gram"`` (see ``barlow_twins_terms``).
      sync_batchnorm: synchronise the projector's BN over TF replicas (on JAX
        the statistics are global anyway; the flag is kept for saved files).
      fused_batchnorm: train the projector's BN through one fused kernel
        where its statistics are local (``bt_keras.layers``).
      standardize: the loss's per-view normalisation of the embeddings:
        ``"full"`` (the paper's, default); ``"center"`` and ``"none"`` are
        ablation switches (see ``barlow_twins_terms``), not recommendations.

    Logged metrics: ``loss``, ``on_diag``, ``off_diag``, ``learning_rate`` and
    ``embedding_std``: the mean over dimensions of the batch std of the
    L2-normalised embeddings × √D, about 1 for well-spread embeddings and
    0 at collapse.
    """

    def __init__(
        self,
        encoder: keras.Model,
        projector_dims=(2048, 2048, 2048),
        lambd: float = 0.0051,
        loss_method: str = "auto",
        sync_batchnorm: bool = True,
        fused_batchnorm: bool = True,
        standardize: str = "full",
        **kwargs,
    ):
        if BACKEND not in _STEPS:
            raise NotImplementedError(f"BarlowTwins trains on the tensorflow or jax Keras backend, not {BACKEND!r}")
        super().__init__(**kwargs)
        try:  # a functional or Sequential encoder knows its output already; a subclass, when called
            outputs = encoder.outputs
        except (AttributeError, ValueError):
            outputs = None
        if outputs and len(outputs) == 1:
            check_encoder_output(outputs[0].shape)
        self.encoder = encoder
        self.projector_dims = tuple(int(d) for d in projector_dims)
        self.lambd = float(lambd)
        self.loss_method = loss_method
        self.sync_batchnorm = bool(sync_batchnorm)
        self.fused_batchnorm = bool(fused_batchnorm)
        self.standardize = check_standardize(standardize)
        self.projector = build_projector(self.projector_dims, sync_batchnorm, fused_batchnorm)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.on_diag_tracker = keras.metrics.Mean(name="on_diag")
        self.off_diag_tracker = keras.metrics.Mean(name="off_diag")
        self.std_tracker = keras.metrics.Mean(name="embedding_std")

    @property
    def metrics(self):
        return [self.loss_tracker, self.on_diag_tracker, self.off_diag_tracker, self.std_tracker]

    def build(self, input_shape):
        # A subclassed encoder without a build() of its own is built by tracing its call below: Keras'
        # default build() would warn that it "may cause failures down the line".
        own_build = type(self.encoder).build not in (keras.Model.build, keras.layers.Layer.build)
        if not self.encoder.built and own_build:
            self.encoder.build(input_shape)
        try:
            encoded = self.encoder.compute_output_shape(input_shape)
        except NotImplementedError:  # a subclassed encoder without it: trace its call symbolically
            encoded = self.encoder.compute_output_spec(keras.KerasTensor(input_shape)).shape
        check_encoder_output(encoded)
        self.projector.build(encoded)
        super().build(input_shape)

    def fit(self, x=None, *args, shuffle=None, **kwargs):
        """``keras.Model.fit``, with ``shuffle`` False by default for a ``tf.data`` dataset: the
        pipeline shuffles (``two_view_dataset`` does, per epoch), and Keras would warn on every
        call that it ignores ``shuffle=True``."""
        if shuffle is None:
            shuffle = not hasattr(x, "element_spec")  # a tf.data.Dataset (or distributed dataset)
        return super().fit(x, *args, shuffle=shuffle, **kwargs)

    def call(self, images, training=False):
        encoded = self.encoder(images, training=training)
        check_encoder_output(encoded.shape)
        return self.projector(encoded, training=training)

    def _terms(self, data, training):
        view_a, view_b = _views(data)
        z_a = self(view_a, training=training)
        z_b = self(view_b, training=training)
        return z_a, barlow_twins_terms(z_a, z_b, self.lambd, self.loss_method, standardize=self.standardize)

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
                "standardize": self.standardize,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
