"""Performance knobs keep the maths: mixed precision tracks float32, fused BN equals Keras BN,
and the benchmark's FLOP count is right. (XLA vs non-XLA: tests/test_scale.py.)"""

import functools
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import bt_keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import train_step
    finally:
        sys.path.pop(0)
    return train_step


def _model(fused_bn=True):
    keras.utils.set_random_seed(0)
    enc = bt_keras.small_cnn(widths=(8, 16), input_shape=(16, 16, 3), fused_batchnorm=fused_bn)
    model = bt_keras.BarlowTwins(enc, projector_dims=(64, 64, 64), fused_batchnorm=fused_bn)
    model.build((None, 16, 16, 3))
    return model


@functools.cache  # The float32 reference serves two tests.
def _train(policy, steps=5, jit=False, fused_bn=True):
    """Per-step losses of ``steps`` LARS steps on one fixed batch, and the model."""
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = _model(fused_bn)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    model.compile(optimizer=bt_keras.LARS(0.2), jit_compile=jit)
    rng = np.random.default_rng(3)
    x = rng.random((32, 16, 16, 3), np.float32)
    y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    # One step per epoch: each epoch's logged loss is that step's, before its update.
    history = model.fit(ds, epochs=steps, steps_per_epoch=1, verbose=0).history
    return np.array(history["loss"]), model, (x, y)


@pytest.mark.slow
def test_mixed_bfloat16_training_tracks_float32():
    ref, ref_model, batch = _train("float32")
    mixed, model, _ = _train("mixed_bfloat16")
    # Same initial weights (variables stay float32 under the mixed policy).
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    z_a, terms = model._terms(batch, training=False)
    assert z_a.dtype == tf.bfloat16
    assert terms.loss.dtype == terms.on_diag.dtype == terms.off_diag.dtype == tf.float32
    assert all(m.result().dtype == tf.float32 for m in model.metrics)
    assert np.all(np.isfinite(mixed))
    # bfloat16 keeps 8 mantissa bits: a few % on the loss (measured ≤ 4.3%), same trajectory.
    np.testing.assert_allclose(mixed, ref, rtol=0.1)
    assert mixed[-1] < 0.7 * mixed[0] and ref[-1] < 0.7 * ref[0]
    # Kernels move the same way (measured ≈ 0.1% apart); BN β start at 0 and move by ~1e-3,
    # so only their sum is compared.
    for a, b in zip(model.trainable_variables, ref_model.trainable_variables):
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim > 1:
            assert np.linalg.norm(a - b) < 0.01 * np.linalg.norm(b), a.shape
    flat = [np.concatenate([np.ravel(v) for v in m.trainable_variables]) for m in (model, ref_model)]
    assert np.linalg.norm(flat[0] - flat[1]) < 0.05 * np.linalg.norm(flat[1])


def _gradients(fused_bn):
    model = _model(fused_bn)
    n_fused = sum(
        isinstance(layer, bt_keras.layers.FusedBatchNormalization)
        for layer in model._flatten_layers(include_self=False, recursive=True)
    )
    assert n_fused == (6 if fused_bn else 0)  # 4 in the encoder, 2 in the projector
    x = np.random.default_rng(3).random((32, 16, 16, 3), np.float32)

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            _, terms = model._terms((x, x[:, ::-1]), training=True)
        return terms.loss, tape.gradient(terms.loss, model.trainable_variables)

    loss, g = grads()
    return float(loss), [v.numpy() for v in g], [v.numpy() for v in model.non_trainable_variables]


@pytest.mark.slow
def test_fused_batchnorm_matches_keras_batchnorm():
    # The fused kernel (the default) must be the same maths as Keras' BN, in the encoder (4-D)
    # and the projector (2-D). Gradients, not weights after several steps: LARS amplifies
    # float32 round-off chaotically.
    ref_loss, ref_grads, ref_stats = _gradients(False)
    loss, grads, stats = _gradients(True)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for a, b in zip(grads, ref_grads):  # measured ≤ 2e-5, the same as XLA vs non-XLA
        assert np.linalg.norm(a - b) < 1e-4 * np.linalg.norm(b)
    for a, b in zip(stats, ref_stats):  # moving mean/variance (Bessel's correction undone)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    fused, _, _ = _train("float32")
    ref, _, _ = _train("float32", fused_bn=False)
    np.testing.assert_allclose(fused, ref, rtol=1e-3)


def test_benchmark_flop_count_matches_a_hand_count():
    count_flops = _bench().count_flops
    enc = bt_keras.small_cnn(widths=(4, 8), input_shape=(8, 8, 3))
    model = bt_keras.BarlowTwins(enc, projector_dims=(16, 32))
    model.build((None, 8, 8, 3))
    conv = [2 * 8 * 8 * 9 * 3 * 4, 2 * 8 * 8 * 9 * 4 * 4, 2 * 4 * 4 * 9 * 4 * 8, 2 * 4 * 4 * 9 * 8 * 8]
    dense = 2 * 8 * 16 + 2 * 16 * 32
    per_view = 10 * (sum(conv) + 2 * sum(conv[1:]) + conv[0] + 3 * dense)
    loss = 3 * 2 * (2 * 10 * 10 * 32)  # "auto" picks gram: 2·10 < 32
    assert count_flops(model, batch=10, loss_method="auto")["per_step"] == 2 * per_view + loss
