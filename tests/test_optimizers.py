"""LARS against a hand computation; the warmup + cosine schedule."""

import math

import keras
import numpy as np
import pytest

from bt_keras.optimizers import LARS, WarmupCosine


def lars_reference(p, g, mu, lr, wd, momentum, eta, rank1_mult, clip=False):
    """The official PyTorch LARS step, in NumPy (``clip``: solo-learn's ``clip_lr``)."""
    dp = g.copy()
    if p.ndim == 1:
        lr = lr * rank1_mult
    else:
        dp = dp + wd * p
        pn, un = np.linalg.norm(p), np.linalg.norm(dp)
        q = eta * pn / un if (pn > 0 and un > 0) else 1.0
        dp = dp * (min(q / lr, 1.0) if clip else q)
    mu = momentum * mu + dp
    return p - lr * mu, mu


def test_lars_matches_hand_computation_over_steps():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    b0 = rng.normal(size=(3,)).astype(np.float32)
    z0 = np.zeros((4, 2), np.float32)  # zero weight: trust ratio falls back to 1
    w, b, z = keras.Variable(w0), keras.Variable(b0), keras.Variable(z0)
    opt = LARS(learning_rate=0.5, weight_decay=0.01, momentum=0.9, eta=0.02, rank1_lr_multiplier=0.1)
    ref = {"w": (w0.astype(np.float64), 0.0), "b": (b0.astype(np.float64), 0.0), "z": (z0.astype(np.float64), 0.0)}
    for _ in range(3):
        grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in (("w", w0), ("b", b0), ("z", z0))}
        opt.apply_gradients([(grads["w"], w), (grads["b"], b), (grads["z"], z)])
        for k in ref:
            p, mu = ref[k]
            ref[k] = lars_reference(p, grads[k], mu, 0.5, 0.01, 0.9, 0.02, 0.1)
    np.testing.assert_allclose(w.numpy(), ref["w"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), ref["b"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z.numpy(), ref["z"][0], rtol=1e-5, atol=1e-6)
    assert np.abs(w.numpy() - w0).max() > 1e-3 and np.abs(z.numpy()).max() > 1e-3


@pytest.mark.parametrize("eta", [0.001, 10.0])  # trust ratio below the lr (clipped to it) and above
def test_clipped_trust_matches_hand_computation(eta):
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(6, 4)).astype(np.float32)
    w = keras.Variable(w0)
    opt = LARS(learning_rate=0.3, weight_decay=1e-4, momentum=0.9, eta=eta, clip_trust=True)
    ref, plain = (w0.astype(np.float64), 0.0), (w0.astype(np.float64), 0.0)
    for _ in range(3):
        g = rng.normal(size=w0.shape).astype(np.float32)
        opt.apply_gradients([(g, w)])
        ref = lars_reference(ref[0], g, ref[1], 0.3, 1e-4, 0.9, eta, 1.0, clip=True)
        plain = lars_reference(plain[0], g, plain[1], 0.3, 1e-4, 0.9, eta, 1.0)
    np.testing.assert_allclose(w.numpy(), ref[0], rtol=1e-5, atol=1e-6)
    assert np.abs(ref[0] - plain[0]).max() > 1e-3  # clipping changed the step
    assert LARS.from_config(opt.get_config()).clip_trust


def test_rank1_variables_get_no_decay_and_no_adaptation():
    b = keras.Variable(np.full((4,), 2.0, np.float32))
    opt = LARS(learning_rate=1.0, weight_decay=10.0, momentum=0.0, eta=1e-3, rank1_lr_multiplier=0.5)
    opt.apply_gradients([(np.ones(4, np.float32), b)])
    # Plain SGD with lr 0.5: no weight decay, no trust ratio.
    np.testing.assert_allclose(b.numpy(), np.full(4, 1.5), rtol=1e-6)


def test_config_round_trip():
    opt = LARS(learning_rate=WarmupCosine(0.3, 5, 50), weight_decay=2e-6, eta=0.002, rank1_lr_multiplier=0.03)
    clone = LARS.from_config(opt.get_config())
    assert (clone.lars_weight_decay, clone.eta, clone.rank1_lr_multiplier) == (2e-6, 0.002, 0.03)
    assert float(clone.learning_rate) == pytest.approx(float(opt.learning_rate))


def test_schedule_values():
    s = WarmupCosine(base_learning_rate=0.8, warmup_steps=10, total_steps=110, end_factor=0.001)
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(0.4)
    assert float(s(10)) == pytest.approx(0.8)
    mid = 0.8 * 0.5 + 0.8 * 0.001 * 0.5  # halfway through the cosine
    assert float(s(60)) == pytest.approx(mid, rel=1e-6)
    assert float(s(110)) == pytest.approx(0.8 * 0.001, rel=1e-5)
    assert float(s(1000)) == pytest.approx(0.8 * 0.001, rel=1e-5)
    q = 0.5 * (1 + math.cos(math.pi * 25 / 100))
    assert float(s(35)) == pytest.approx(0.8 * q + 0.0008 * (1 - q), rel=1e-6)


def test_lars_and_schedule_under_xla_equal_the_plain_graph():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    init, grads = rng.normal(size=(3, 3)).astype(np.float32), rng.normal(size=(3, 3, 3)).astype(np.float32)

    def train(jit_compile):
        w, b = keras.Variable(init), keras.Variable(init[0])  # b: rank 1, no weight decay or adaptation
        opt = LARS(learning_rate=WarmupCosine(0.1, 2, 10), weight_decay=1e-2)
        opt.build([w, b])

        @tf.function(jit_compile=jit_compile)
        def step(g):
            opt.apply_gradients([(g, w), (g[0], b)])
            return opt.iterations

        for g in grads:
            step(tf.constant(g))
        return int(opt.iterations), w.numpy(), b.numpy()

    (steps, w_xla, b_xla), (_, w_plain, b_plain) = train(True), train(False)
    assert steps == 3 and np.abs(w_xla - init).max() > 1e-5 and np.abs(b_xla - init[0]).max() > 1e-5
    np.testing.assert_allclose(w_xla, w_plain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b_xla, b_plain, rtol=1e-6, atol=1e-7)
