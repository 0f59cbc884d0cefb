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
    "train.verbose=0",
    "--set",
    "eval.k=5",
]


def _bt_train(run_dir, *args):
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
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        cwd=ROOT,
    )


def test_demo_runs_end_to_end_then_resumes(tmp_path):
    run = tmp_path / "run"
    proc = _bt_train(run, "--set", "train.epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
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


def test_too_little_data_is_a_clear_error(tmp_path):
    proc = _bt_train(tmp_path / "run", "--set", "train.batch_size=4096", "--set", "train.epochs=1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "fewer than one global batch (4096)" in proc.stderr and "Traceback" not in proc.stderr
