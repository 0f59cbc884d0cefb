"""The loss against a NumPy transcription of the paper's pseudocode."""

import numpy as np
import pytest
import tensorflow as tf

from bt_keras.losses import barlow_twins_loss, barlow_twins_terms, resolve_method


def reference_loss(z_a, z_b, lambd=0.0051, eps=1e-5):
    """The paper's Algorithm 1, in float64 NumPy."""
    z_a = z_a.astype(np.float64)
    z_b = z_b.astype(np.float64)
    n = z_a.shape[0]
    a = (z_a - z_a.mean(0)) / np.sqrt(z_a.var(0) + eps)
    b = (z_b - z_b.mean(0)) / np.sqrt(z_b.var(0) + eps)
    c = a.T @ b / n
    on = ((np.diag(c) - 1) ** 2).sum()
    off = (c**2).sum() - (np.diag(c) ** 2).sum()
    return on + lambd * off, on, off


@pytest.mark.parametrize("n,d", [(16, 8), (64, 256), (32, 8192)])
@pytest.mark.parametrize("method", ["dense", "gram", "auto"])
def test_matches_numpy_reference(n, d, method):
    rng = np.random.default_rng(n + d)
    z_a = rng.normal(size=(n, d)).astype(np.float32) * 3 + 1
    z_b = (0.7 * z_a + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    want, want_on, want_off = reference_loss(z_a, z_b)
    got = barlow_twins_terms(z_a, z_b, method=method)
    assert got.loss.dtype == tf.float32
    np.testing.assert_allclose(float(got.loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(got.on_diag), want_on, rtol=1e-5)
    np.testing.assert_allclose(float(got.off_diag), want_off, rtol=1e-4)


def test_dense_and_gram_gradients_agree():
    rng = np.random.default_rng(0)
    z_a = tf.constant(rng.normal(size=(24, 96)), tf.float32)
    z_b = tf.constant(rng.normal(size=(24, 96)), tf.float32)
    grads = {}
    for method in ("dense", "gram"):
        with tf.GradientTape() as tape:
            tape.watch([z_a, z_b])
            loss = barlow_twins_loss(z_a, z_b, method=method)
        grads[method] = [g.numpy() for g in tape.gradient(loss, [z_a, z_b])]
    for gd, gg in zip(grads["dense"], grads["gram"]):
        assert np.abs(gd).max() > 1e-3
        np.testing.assert_allclose(gg, gd, rtol=1e-4, atol=1e-6)


def test_half_precision_inputs_give_float32_loss():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(32, 64)).astype(np.float32)
    for dtype in (tf.bfloat16, tf.float16):
        loss = barlow_twins_loss(tf.cast(z, dtype), tf.cast(z[::-1], dtype))
        assert loss.dtype == tf.float32
        want = reference_loss(
            tf.cast(tf.cast(z, dtype), tf.float32).numpy(), tf.cast(tf.cast(z[::-1], dtype), tf.float32).numpy()
        )[0]
        np.testing.assert_allclose(float(loss), want, rtol=1e-4)


def test_identical_views_leave_only_off_diagonal_and_invariance():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(128, 32)).astype(np.float32)
    terms = barlow_twins_terms(z, z)
    assert float(terms.on_diag) < 1e-3
    # Per-dimension affine maps of either view do not change the loss.
    scaled = z * rng.uniform(0.5, 3, size=32).astype(np.float32) + 5.0
    np.testing.assert_allclose(float(barlow_twins_loss(z, scaled)), float(terms.loss), rtol=1e-4)


def test_constant_dimension_is_finite():
    z = np.ones((8, 4), np.float32)
    assert np.isfinite(float(barlow_twins_loss(z, z)))


def test_auto_picks_the_cheaper_form():
    assert resolve_method("auto", 256, 8192) == "gram"
    assert resolve_method("auto", 2048, 2048) == "dense"
    with pytest.raises(ValueError, match="method must be one of"):
        resolve_method("fast", 1, 1)
