"""The TPU path as far as this machine can go: XLA-compiled train step, resolver errors."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import bt_keras

pytestmark = pytest.mark.slow  # XLA compiles and bt-train subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fit_once(jit):
    keras.utils.set_random_seed(0)
    enc = bt_keras.resnet(18, stem="cifar", width=4, input_shape=(16, 16, 3))
    model = bt_keras.BarlowTwins(enc, projector_dims=(64, 64, 64))
    model.build((None, 16, 16, 3))
    weights = [
        np.random.default_rng(i).normal(0, 0.1, w.shape).astype("float32") if len(w.shape) > 1 else w.numpy()
        for i, w in enumerate(model.weights)
    ]
    model.set_weights(weights)
    model.compile(optimizer=bt_keras.LARS(bt_keras.WarmupCosine(0.5, 1, 4)), jit_compile=jit)
    x = np.random.default_rng(9).random((32, 16, 16, 3), np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, x[:, ::-1])).batch(16, drop_remainder=True)
    history = model.fit(ds, epochs=2, verbose=0).history
    return history["loss"], model


def test_full_train_step_compiles_with_xla_and_matches():
    # Static shapes (drop_remainder), encoder + projector + loss + LARS in one XLA cluster:
    # the closest check to TPU compilation available on a CPU.
    xla_losses, xla_model = _fit_once(True)
    ref_losses, ref_model = _fit_once(False)
    assert xla_model.jit_compile is True
    np.testing.assert_allclose(xla_losses, ref_losses, rtol=1e-4)
    # Weights after 4 LARS steps: float32 round-off of two kernels, grown by the updates
    # (measured ≤ 2e-4 relative per variable).
    for a, b in zip(xla_model.weights, ref_model.weights):
        a, b = np.asarray(a), np.asarray(b)
        assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(b) + 1e-6, a.shape


def test_tpu_strategy_without_a_tpu_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bt_keras.cli.train",
            "--config",
            os.path.join(ROOT, "configs", "demo.yaml"),
            "--run-dir",
            str(tmp_path / "run"),
            "--set",
            "train.strategy=tpu",
            "--set",
            "train.tpu=local",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("bt-train: error:")]
    assert len(errors) == 1 and "cannot reach TPU local" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_multi_worker_needs_a_valid_tf_config(tmp_path):
    base = [
        sys.executable,
        "-m",
        "bt_keras.cli.train",
        "--config",
        os.path.join(ROOT, "configs", "demo.yaml"),
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        "train.strategy=multi_worker",
    ]
    for tf_config, expected in (
        (None, "needs the TF_CONFIG environment variable"),
        ('{"cluster": {}}', "TF_CONFIG is malformed"),
        ("not json", "TF_CONFIG is malformed"),
    ):
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        if tf_config is not None:
            env["TF_CONFIG"] = tf_config
        proc = subprocess.run(base, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
