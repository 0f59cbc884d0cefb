"""The JAX backend: the loss, fit over 1 and 4 devices and 2 processes (one device each), saving, bf16, the NaN guard.

Every JAX case runs ``tests/jax_case.py`` in its own process with
``KERAS_BACKEND=jax`` and ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
set before it starts; this (TensorFlow) process compares the results with
TensorFlow's and with each other.
"""

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,  # about a minute of subprocesses (imports and XLA compiles) on 2 cores
    pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason='JAX not installed (pip install "jax[cpu]")'),
]

sys.path.insert(0, os.path.dirname(__file__))
import jax_case  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "jax_case.py")
CASES = {
    "single": ("jax", 1, ["single"]),  # the loss, 1-device training (j1) and the extras: one process
    # 2 devices: the two-process case below (one device each) and test_jax_train's 2-device run.
    "j4": ("jax", 4, ["train", "--distribute"]),
}


def _env(backend, devices):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "KERAS_BACKEND")}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    if backend == "jax":
        env["XLA_FLAGS"] = jax_case.xla_flags(devices)
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_case(out, name):
    backend, devices, args = CASES[name]
    path = out / (name if name == "single" else f"{name}.npz")
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args, "--out", str(path)],
        env=_env(backend, devices),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if name == "single":
        return {key: dict(np.load(path / f"{key}.npz")) for key in ("loss", "j1", "extras")}
    return {name: dict(np.load(path))}


def _run_two_processes(out):
    """Two JAX processes (one CPU device each) on 127.0.0.1, gloo collectives, one DataParallel mesh."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, SCRIPT, "train", "--distribute", "--num-processes", "2", "--process-id", str(i)]
            + ["--port", str(port), "--out", str(out / f"p{i}.npz")],
            env=_env("jax", 1),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output[-3000:]
    return {"processes": [dict(np.load(out / f"p{i}.npz")) for i in range(2)]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax")
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(_run_case, out, name) for name in CASES]
        jobs.append(pool.submit(_run_two_processes, out))
        results = {"folder": out}
        for job in jobs:
            results.update(job.result())
    return results


def _weights(r):
    return [r[k] for k in sorted((k for k in r if k.startswith("w")), key=lambda k: int(k[1:]))]


def _max_weight_diff(a, b):
    wa, wb = _weights(a), _weights(b)
    assert len(wa) == len(wb) > 0
    return max(float(np.abs(x - y).max()) for x, y in zip(wa, wb))


@pytest.mark.parametrize("method", ["dense", "gram"])
def test_jax_loss_and_gradients_equal_tensorflow(runs, method):
    import tensorflow as tf

    from bt_keras.losses import barlow_twins_loss

    got = runs["loss"]
    z_a, z_b = (tf.constant(z) for z in jax_case.loss_inputs())
    with tf.GradientTape() as tape:
        tape.watch([z_a, z_b])
        loss = barlow_twins_loss(z_a, z_b, method=method)
    g_a, g_b = tape.gradient(loss, [z_a, z_b])
    assert str(got[f"{method}_dtype"]) == "float32"
    np.testing.assert_allclose(got[f"{method}_loss"], loss.numpy(), rtol=1e-5)
    for jax_grad, tf_grad in ((got[f"{method}_ga"], g_a.numpy()), (got[f"{method}_gb"], g_b.numpy())):
        assert np.abs(tf_grad).max() > 1e-2
        np.testing.assert_allclose(jax_grad, tf_grad, rtol=1e-5, atol=1e-5 * np.abs(tf_grad).max())


@pytest.mark.parametrize("devices", [4])
def test_data_parallel_equals_one_device(runs, devices):
    one, many = runs["j1"], runs[f"j{devices}"]
    assert int(many["devices"]) == devices and len(one["losses"]) == jax_case.STEPS
    # Inside the step, the batch is one global array split over every device: global / devices rows each.
    assert many["shards"].tolist() == [[devices, jax_case.GLOBAL_BATCH // devices]]
    assert one["shards"].tolist() == [[1, jax_case.GLOBAL_BATCH]]
    np.testing.assert_allclose(many["losses"], one["losses"], rtol=1e-5, atol=1e-5)
    assert _max_weight_diff(one, many) <= 1e-5


def test_training_moved_the_weights(runs):
    r = runs["j1"]
    moved = max(float(np.abs(r[f"w{i}"] - r[f"init{i}"]).max()) for i in range(len(_weights(r))))
    assert moved > 1e-2  # so the 1e-5 agreements are meaningful
    np.testing.assert_allclose(r["rates"], [1.0, 0.5005, 0.001], rtol=1e-4)  # WarmupCosine after each step


def test_jax_equals_tensorflow_training(runs, tmp_path):
    # The same case, on TensorFlow in this process: same initial weights, same batches.
    args = argparse.Namespace(out=str(tmp_path / "tf1.npz"), distribute=False, method="auto", num_processes=1)
    jax_case.run_train(args)
    tf1 = dict(np.load(args.out))
    np.testing.assert_allclose(runs["j1"]["losses"], tf1["losses"], rtol=1e-4, atol=1e-4)
    assert _max_weight_diff(runs["j1"], tf1) <= 1e-4


def test_two_processes_equal_one_process(runs):
    for proc in runs["processes"]:
        assert int(proc["devices"]) == 2
        assert proc["shards"].tolist() == [[2, jax_case.GLOBAL_BATCH // 2]]
        np.testing.assert_allclose(proc["losses"], runs["j1"]["losses"], rtol=1e-5, atol=1e-5)
        assert _max_weight_diff(runs["j1"], proc) <= 1e-5


def test_keras_files_round_trip_on_jax_and_load_on_tensorflow(runs):
    import keras

    import bt_keras.model
    import bt_keras.optimizers

    r = runs["extras"]
    assert str(r["rt_class"]) == "BarlowTwins" and r["rt_config"].tolist() == [0.01, 32, 1]
    assert float(r["rt_moved"]) > 0
    np.testing.assert_allclose(r["rt_loaded"], r["rt_model"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["rt_encoder_loaded"], r["rt_encoder"], rtol=1e-5, atol=1e-6)
    # This process runs TensorFlow: the JAX-trained files load and give the same outputs.
    folder = runs["folder"] / "single"
    enc = keras.saving.load_model(folder / "encoder.keras", safe_mode=True)
    np.testing.assert_allclose(enc.predict(r["rt_x"], verbose=0), r["rt_encoder"], rtol=1e-5, atol=1e-5)
    model = keras.saving.load_model(folder / "bt.keras", safe_mode=True)
    assert isinstance(model, bt_keras.BarlowTwins) and model.sync_batchnorm
    bns = [layer for layer in model.projector.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.synchronized for layer in bns)  # the request survives a JAX save
    np.testing.assert_allclose(model.predict(r["rt_x"], verbose=0), r["rt_model"], rtol=1e-5, atol=1e-5)


def test_mixed_bfloat16_on_jax_keeps_the_loss_in_float32(runs):
    r = runs["extras"]
    assert str(r["mp_z_dtype"]) == "bfloat16" and str(r["mp_kernel_dtype"]) == "float32"
    assert r["mp_loss_dtypes"].tolist() == ["float32"] * 3
    assert str(r["mp_metric_dtype"]) == "float32"
    assert np.isfinite(r["mp_losses"]).all()


def test_non_finite_step_logs_nan_and_keeps_the_variables_on_jax(runs):
    r = runs["extras"]
    assert np.isnan(r["nan_losses"]).all() and len(r["nan_losses"]) == 1
    assert float(r["nan_max_change"]) == 0.0 and bool(r["nan_all_finite"])
