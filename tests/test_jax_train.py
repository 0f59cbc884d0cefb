"""bt-train on the JAX backend, as a user runs it: the demo over 2 devices, resume, faults, export.

Each run is a real ``bt-train`` process with ``train.backend=jax`` and two virtual
CPU devices (``XLA_FLAGS``), so the DataParallel path, the per-device batch and
checkpoints of sharded variables are the ones a GPU host or TPU VM runs.
"""

import csv
import json
import os
import signal
import subprocess
import sys

import jax_case
import pytest
import test_faults as faults

pytest.importorskip("jax")
pytestmark = pytest.mark.slow  # end-to-end bt-train runs on JAX

ROOT = faults.ROOT
JAX = ("--set", "train.backend=jax")


def _jax_env(devices=2):
    return dict(faults._env(), XLA_FLAGS=jax_case.xla_flags(devices))


def _bt(module, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", f"bt_keras.cli.{module}", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env or _jax_env(),
        cwd=ROOT,
    )


def _start(run, *args):
    """A bt-train run of the demo on JAX: 2 epochs of 22 steps, a checkpoint every 4, the kNN monitor."""
    small = [*faults.ARGS, "--set", "train.epochs=2", "--set", "monitor.knn_every_epochs=1"]
    small += ["--set", "monitor.knn_train_source=demo:train", "--set", "monitor.knn_val_source=demo:test"]
    small += ["--set", "monitor.knn_max_train=300", "--set", "monitor.knn_max_val=100", *JAX, *args]
    cmd = [sys.executable, "-m", "bt_keras.cli.train", "--config", os.path.join(ROOT, "configs", "demo.yaml")]
    cmd += ["--run-dir", str(run), *small]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_jax_env(), cwd=ROOT)


def test_two_devices_sigterm_resume_then_export(tmp_path):
    """One run's life on JAX: preempted, resumed to the end, exported (kill -9: test_faults, on TensorFlow)."""
    run, out, cache = tmp_path / "run", tmp_path / "export", tmp_path / "jax-cache"
    steps = 2 * faults.STEPS_PER_EPOCH
    cached = ("--set", f"train.jax_compilation_cache={cache}")  # the resumed process compiles less

    proc = _start(run, *cached)  # SIGTERM after its first checkpoint: a checkpoint at the signal, exit 0
    faults._wait_for_checkpoints([proc], run, saves=1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"backend jax, DataParallel: 2 CPU device(s); compilation cache {cache}" in stdout
    assert any(cache.iterdir())  # the compiled train step, for the resumed run
    assert "batch 64 global, 32 per replica" in stdout
    marker = "SIGTERM received: checkpoint written at step "
    assert marker in stdout, stdout + stderr[-2000:]
    sigterm_step = int(stdout.split(marker)[1].split(";")[0])
    assert 4 <= sigterm_step < steps

    proc = _start(run, *cached)  # to the end
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert faults._resumed_step(stdout) == sigterm_step
    assert json.loads((run / "summary.json").read_text())["steps"] == steps  # no step lost, none repeated
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert sorted({int(r["epoch"]) for r in rows}) == [0, 1]
    assert float(rows[-1]["learning_rate"]) != float(rows[0]["learning_rate"])  # the schedule went on
    assert (run / "knn.csv").exists() and (run / "report.png").exists()

    # The JAX-trained encoder loads on TensorFlow and exports behind the parity gate (its kNN: the monitor's).
    proc = _bt("export", "--run", str(run), "--out", str(out), env=faults._env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "export_report.json").read_text())["parity"]["passed"]
    knn = list(csv.DictReader(open(run / "knn.csv")))
    assert float(knn[-1]["top1"]) > 0.2


def test_backend_disagreeing_with_the_environment_is_one_line(tmp_path):
    env = dict(faults._env(), KERAS_BACKEND="tensorflow")
    proc = subprocess.run(faults._cmd(tmp_path / "run", *JAX), capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train.backend is 'jax' but KERAS_BACKEND=tensorflow" in proc.stderr
    proc = subprocess.run(
        faults._cmd(tmp_path / "run", *JAX, "--set", "train.strategy=mirrored"),
        capture_output=True,
        text=True,
        env=_jax_env(),
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "'mirrored' is a TensorFlow strategy" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()
