"""Preemption and crashes: kill -9 and SIGTERM mid-epoch, a lost worker, then resume.

Real bt-train processes on the embedded demo at a tiny size: 22 steps per
epoch, 3 epochs, a checkpoint every 4 steps; the lost-worker case runs a real
two-process MultiWorkerMirroredStrategy cluster on 127.0.0.1.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from cluster import free_port, tf_config

from bt_keras.checkpointing import SECOND_INTERRUPT_MESSAGE

pytestmark = pytest.mark.slow  # kill, SIGTERM and lost-worker runs of bt-train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 1438 // 64
EPOCHS = 3
ARGS = [
    "--set",
    "model.width=4",
    "--set",
    "model.projector_dims=[32,32,32]",
    "--set",
    "train.batch_size=64",
    "--set",
    f"train.epochs={EPOCHS}",
    "--set",
    "train.checkpoint_every_steps=4",
    "--set",
    "train.verbose=0",
    "--set",
    "eval.train_source=null",
]


# The runs under faults skip the per-epoch monitors and the report (tests/test_callbacks.py tests those;
# test_jax_train.py interrupts a run that keeps them all, test_guarantees.py runs that keep the monitors):
# a few CPU-seconds a process.
NO_MONITORS = [
    "--set",
    "monitor.health=false",
    "--set",
    "monitor.correlation_image=false",
    "--set",
    "monitor.report=false",
]


def _cmd(run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "bt_keras.cli.train",
        "--config",
        os.path.join(ROOT, "configs", "demo.yaml"),
        "--run-dir",
        str(run_dir),
        *ARGS,
        *extra,
    ]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def _run(run_dir, *extra):
    cmd = _cmd(run_dir, *NO_MONITORS, *extra)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _wait_for_checkpoints(procs, run_dir, saves):
    """Returns once the run's checkpoint has been written ``saves`` times, all ``procs`` still alive."""
    ckpt = run_dir / "checkpoints" / "latest.weights.h5"
    seen, last = 0, None
    deadline = time.time() + 400
    while seen < saves:
        for proc in procs:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint written in time"
        if ckpt.exists() and ckpt.stat().st_mtime_ns != last:
            last = ckpt.stat().st_mtime_ns
            seen += 1
        time.sleep(0.05)


def _start_and_wait_for_checkpoints(run_dir, saves, *extra):
    """Starts a run; returns it once its checkpoint has been written ``saves`` times."""
    proc = subprocess.Popen(
        _cmd(run_dir, *NO_MONITORS, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    _wait_for_checkpoints([proc], run_dir, saves)
    return proc


def _history(run_dir):
    return list(csv.DictReader(open(run_dir / "history.csv")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference")
    _run(run)
    return run


def _resumed_step(stdout):
    marker = "resuming from step "
    assert marker in stdout, stdout
    return int(stdout.split(marker)[1].split()[0])


def _assert_same_course_as(reference, run):
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == EPOCHS * STEPS_PER_EPOCH  # no step lost, none repeated
    ref_rows, rows = _history(reference), _history(run)
    # The schedule continued: the last epoch's learning rate is the reference's, to the bit.
    assert float(rows[-1]["learning_rate"]) == pytest.approx(float(ref_rows[-1]["learning_rate"]), rel=1e-6)
    # No reset: the last epoch's loss is where an uninterrupted run gets, not back at epoch 1's.
    ref_first, ref_last, last = float(ref_rows[0]["loss"]), float(ref_rows[-1]["loss"]), float(rows[-1]["loss"])
    assert ref_last < ref_first
    assert abs(last - ref_last) < 0.25 * (ref_first - ref_last), (last, ref_last, ref_first)


def test_kill_9_then_sigterm_then_resume_follow_the_uninterrupted_course(tmp_path, reference):
    """One run's life: killed (kill -9), resumed and preempted (SIGTERM), resumed to the end.

    Each signal follows an observed checkpoint while the run is alive and training on, so no sleep
    decides where it lands. The finished run must equal the uninterrupted reference's course.
    """
    run = tmp_path / "run"
    proc = _start_and_wait_for_checkpoints(run, saves=2)  # past step 4, inside epoch 1
    proc.kill()
    proc.wait()

    # The first sighting of the checkpoint is the one it resumes from; the second is its own.
    proc = _start_and_wait_for_checkpoints(run, saves=2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    killed_at = _resumed_step(stdout)
    # Checkpoints land every 4 steps and at each epoch's end; the kill can follow either.
    assert killed_at % 4 == 0 or killed_at % STEPS_PER_EPOCH == 0, killed_at
    marker = "SIGTERM received: checkpoint written at step "
    assert marker in stdout, stdout + stderr[-2000:]
    step = int(stdout.split(marker)[1].split(";")[0])
    assert 0 < killed_at < step < EPOCHS * STEPS_PER_EPOCH

    out = _run(run, "--set", "train.verbose=2")
    assert _resumed_step(out.stdout) == step
    _assert_same_course_as(reference, run)
    # Progress counts epochs out of the run's total, the interrupted epoch's remaining steps first.
    epochs = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("Epoch ")]
    first = step // STEPS_PER_EPOCH + 1
    assert epochs == [f"{e}/{EPOCHS}" for e in range(first, EPOCHS + 1)], out.stdout
    remaining = STEPS_PER_EPOCH - step % STEPS_PER_EPOCH
    assert f"{remaining}/{remaining} - " in out.stdout, out.stdout


def _start_workers(run_dir, ports, epochs):
    """Two bt-train processes forming a MultiWorkerMirroredStrategy cluster on 127.0.0.1."""
    procs = []
    for i in range(2):
        cmd = _cmd(run_dir, *NO_MONITORS, "--set", "train.strategy=multi_worker", "--set", f"train.epochs={epochs}")
        env = dict(_env(), TF_CONFIG=tf_config(ports, i), CUDA_VISIBLE_DEVICES="")
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        )
    return procs


LOST_WORKER_BOUND_S = 240


def test_lost_worker_stops_the_other_with_a_message_then_both_resume(tmp_path):
    epochs = 1  # the kill follows the first checkpoint (step 4), well before the end (step 22)
    run = tmp_path / "run"
    chief, worker = _start_workers(run, [free_port(), free_port()], epochs)
    try:
        _wait_for_checkpoints([chief, worker], run, saves=1)
        worker.kill()
        worker.wait()
        try:
            _, stderr = chief.communicate(timeout=LOST_WORKER_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the surviving worker did not stop within {LOST_WORKER_BOUND_S} s of losing its peer")
    finally:
        for p in (chief, worker):
            if p.poll() is None:
                p.kill()
    assert chief.returncode == 1, stderr[-3000:]
    assert "bt-train: error: lost contact with another worker" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr

    ports = [free_port(), free_port()]
    procs = _start_workers(run, ports, epochs)
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        step = _resumed_step(out)
        assert 0 < step < epochs * STEPS_PER_EPOCH
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == epochs * STEPS_PER_EPOCH


BLOCKED_STEP = """
import sys
import tensorflow as tf
from bt_keras.checkpointing import TrainingGuard

guard = TrainingGuard(sys.argv[1], exit_inside_step=True)  # as bt-train makes it
guard.on_train_begin()
queue = tf.queue.FIFOQueue(1, tf.float32)
print("step running", flush=True)
queue.dequeue()  # blocks in C++ for good: what a minutes-long training step looks like to Python
"""


def test_a_second_ctrl_c_stops_at_once_even_inside_a_step(tmp_path):
    """Python runs signal handlers only between bytecodes; a heavy step would hold both Ctrl-Cs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_STEP, str(tmp_path / "ckpt.weights.h5")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    watchdog = threading.Timer(120, proc.kill)  # a hang fails the test instead of blocking the suite
    watchdog.start()
    try:
        assert proc.stdout.readline().strip() == "step running", proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGINT)
        lines = iter(proc.stderr.readline, "")  # TensorFlow's start-up lines may come first
        first = next((line for line in lines if line.startswith("Ctrl-C")), "")  # at once: the step still runs
        assert first.startswith("Ctrl-C: stopping after this step with a checkpoint"), first
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)  # without the watcher: blocked for good, and this times out
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == SECOND_INTERRUPT_MESSAGE
