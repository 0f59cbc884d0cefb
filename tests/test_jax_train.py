"""bt-train on the JAX backend, as a user runs it: the demo over 2 devices, resume, faults, export, eval.

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

import pytest
import test_faults as faults

pytest.importorskip("jax")
pytestmark = pytest.mark.slow  # end-to-end bt-train runs on JAX

ROOT = faults.ROOT
JAX = ("--set", "train.backend=jax")


def _jax_env(devices=2):
    return dict(faults._env(), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _bt(module, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", f"bt_keras.cli.{module}", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env or _jax_env(),
        cwd=ROOT,
    )


def _demo(run, *args):
    small = ["model.width=4", "model.projector_dims=[32,32,32]", "train.batch_size=64", "eval.k=5", *args]
    sets = [x for kv in small for x in ("--set", kv)]
    config = os.path.join(ROOT, "configs", "demo.yaml")
    return _bt("train", "--config", config, "--run-dir", str(run), *JAX, *sets)


def test_demo_on_two_devices_then_resume_export_and_eval(tmp_path):
    run, out = tmp_path / "run", tmp_path / "export"
    proc = _demo(run, "train.epochs=1", "eval.compare_random_init=false", "monitor.knn_every_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend jax, DataParallel: 2 CPU device(s)" in proc.stdout
    assert "batch 64 global, 32 per replica" in proc.stdout
    assert (run / "knn.csv").exists() and (run / "report.png").exists()
    knn = json.loads((run / "summary.json").read_text())["knn_trained"]
    assert 0.2 < knn["top1"] <= 1.0

    proc = _demo(run, "train.epochs=2", "eval.train_source=null")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from step {faults.STEPS_PER_EPOCH} (epoch 2)" in proc.stdout
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])

    # The JAX-trained encoder through the TensorFlow exporter (parity gate) and bt-eval.
    proc = _bt("export", "--run", str(run), "--out", str(out), env=faults._env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["passed"]
    proc = _bt("eval", "--run", str(run), "--protocol", "knn", "--train-data", "demo:train", "--test-data", "demo:test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "eval_report.json").read_text())["knn"]["top1"] > 0.2


def test_sigterm_and_kill_9_then_resume_on_jax(tmp_path):
    run = tmp_path / "run"
    env = _jax_env()
    extra = JAX

    # SIGTERM: a checkpoint at the signal, exit 0.
    proc = subprocess.Popen(
        faults._cmd(run, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    faults._wait_for_checkpoints([proc], run, saves=1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    marker = "SIGTERM received: checkpoint written at step "
    assert marker in stdout, stdout + stderr[-2000:]
    sigterm_step = int(stdout.split(marker)[1].split(";")[0])

    # Resume, then kill -9 after the next checkpoint, then resume to the end.
    proc = subprocess.Popen(
        faults._cmd(run, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    faults._wait_for_checkpoints([proc], run, saves=2)  # the first sighting is the SIGTERM checkpoint
    proc.kill()
    stdout, _ = proc.communicate()
    assert faults._resumed_step(stdout) == sigterm_step
    final = subprocess.run(faults._cmd(run, *extra), capture_output=True, text=True, env=env, cwd=ROOT)
    assert final.returncode == 0, final.stderr[-3000:]
    assert faults._resumed_step(final.stdout) > sigterm_step
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == faults.EPOCHS * faults.STEPS_PER_EPOCH  # no step lost, none repeated
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert sorted({int(r["epoch"]) for r in rows}) == list(range(faults.EPOCHS))


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
