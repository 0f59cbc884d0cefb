"""bt-train end to end on the embedded demo at reduced size, and resume."""

import csv
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # end-to-end bt-train runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--set",
    "model.width=4",
    "--set",
    "model.projector_dims=[32,32,32]",
    "--set",
    "train.batch_size=64",
    "--set",
    "eval.k=5",
]
TF_LOG_PREFIXES = ("I0000", "W0000", "E0000", "WARNING: All log messages", "oneDNN")


def _new_user_env():
    """A user's shell: no TF_CPP_MIN_LOG_LEVEL of ours."""
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def _bt_train(run_dir, *args, env=None):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bt_keras.cli.train",
            "--config",
            os.path.join(ROOT, "configs", "demo.yaml"),
            "--run-dir",
            str(run_dir),
            *SMALL,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env or dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        cwd=ROOT,
    )


def _bt_train_here(capsys, run_dir, *args):
    """bt-train in this process: its exit code, stdout and stderr."""
    from bt_keras.cli import train

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", os.path.join(ROOT, "configs", "demo.yaml"), "--run-dir", str(run_dir), *SMALL, *args])
    captured = capsys.readouterr()
    return stop.value.code, captured.out, captured.err


def test_demo_runs_end_to_end_then_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    proc = _bt_train(run, "--set", "train.epochs=1", env=_new_user_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Quiet and plain: no TensorFlow log lines, no progress-bar redraws in a log file, one screen.
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not [ln for ln in lines if ln.startswith(TF_LOG_PREFIXES)], proc.stdout + proc.stderr
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout
    assert len(lines) < 30, proc.stdout + proc.stderr
    # The start-of-run summary says what will happen before it happens.
    assert "1438 usable images" in proc.stdout and "batch 64 global, 64 per replica" in proc.stdout
    assert "note: optim.warmup_epochs (2) is not shorter than train.epochs (1)" in proc.stdout  # the demo: 20
    assert f"{1438 // 64} steps/epoch x 1 epochs" in proc.stdout and "starts from scratch" in proc.stdout
    intra = max(1, len(os.sched_getaffinity(0)) // 2)  # train.cpu_threads: auto, the two views side by side
    assert f"CPU threads: {intra} thread{'s' * (intra != 1)} per op, 2 ops at a time" in proc.stdout
    for name in (
        "config.yaml",
        "encoder.keras",
        "preprocessing.json",
        "history.csv",
        "summary.json",
        "checkpoints/latest.weights.h5",
    ):
        assert (run / name).exists(), name
    assert any((run / "logs").rglob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())
    steps_per_epoch = 1438 // 64
    assert summary["steps"] == steps_per_epoch
    for key in ("knn_trained", "knn_random_init"):
        assert 0.1 < summary[key]["top1"] <= 1.0
    assert "trained encoder" in proc.stdout and "random init (same arch)" in proc.stdout
    contract = json.loads((run / "preprocessing.json").read_text())
    assert contract["image_size"] == 32 and contract["crop_fraction"] == 1.0

    # Same run directory, more epochs: resumes at the saved step, schedule continues.
    proc = _bt_train(run, "--set", "train.epochs=2", "--set", "eval.compare_random_init=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from step {steps_per_epoch} (epoch 2)" in proc.stdout
    assert json.loads((run / "summary.json").read_text())["steps"] == 2 * steps_per_epoch
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    lrs = [float(r["learning_rate"]) for r in rows]
    assert lrs[1] != lrs[0] and lrs[1] > 0

    # A finished run, rerun: says so and trains nothing. (In this process: these two exit before training.)
    code, out, err = _bt_train_here(capsys, run, "--set", "train.epochs=2", "--set", "eval.compare_random_init=false")
    assert code == 0, err[-3000:]
    assert "already complete" in out and "Epoch" not in out
    assert json.loads((run / "summary.json").read_text())["steps"] == 2 * steps_per_epoch

    # The same finished run asked for with other data: refused, not reported as if trained on it.
    code, out, err = _bt_train_here(capsys, run, "--set", "train.epochs=2", "--set", "data.source=demo:test")
    assert code == 2 and "is a finished run trained on data.source 'demo:train', not 'demo:test'" in err, err[-2000:]


def test_too_little_data_is_a_clear_error(tmp_path):
    proc = _bt_train(tmp_path / "run", "--set", "train.batch_size=4096", "--set", "train.epochs=1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "fewer than one global batch (4096)" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists(), "a run that failed before training left a directory"


NO_TENSORFLOW_CHECK = """
import sys
from bt_keras.cli import train
try:
    train.main(sys.argv[1:])
except SystemExit as e:
    print("exit", e.code)
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def test_help_and_config_errors_answer_before_tensorflow_loads():
    """--help and a config typo are answered without importing TensorFlow (which takes seconds).

    How long that takes is a benchmark figure (``benchmarks/cli_startup.py``), not a test.
    """
    demo = os.path.join(ROOT, "configs", "demo.yaml")
    for args, code, expected in (
        (["--help"], "0", "docs/training.md"),
        (["--config", demo, "--set", "train.epochz=1"], "2", "unknown key 'train.epochz'"),
        (["--config", demo, "--set", "data.source=folder:/no/such"], "2", "no such directory (looked for /no/such)"),
        (["--config", demo, "--set", "eval.test_source=fldr:x"], "2", "eval.test_source: cannot read 'fldr:x'"),
    ):
        proc = subprocess.run(
            [sys.executable, "-c", NO_TENSORFLOW_CHECK, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        lines = proc.stdout.splitlines()
        assert lines[-2:] == [f"exit {code}", "tensorflow imported: False"], proc.stdout + proc.stderr
        assert expected in proc.stdout + proc.stderr


def test_a_start_that_fails_building_the_model_leaves_no_directory(tmp_path):
    proc = _bt_train(
        tmp_path / "run",
        "--set",
        "model.encoder=keras.applications.MobileNetV3Small",
        "--set",
        "model.encoder_args={bogus_argument: 1}",
    )
    assert proc.returncode == 2 and "model.encoder_args:" in proc.stderr and "bogus_argument" in proc.stderr
    assert not (tmp_path / "run").exists(), "a run that failed before training left a directory"
