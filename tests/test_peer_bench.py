"""``benchmarks/peer.py``'s own measuring parts: the CPU clock both sides share, the NumPy kNN that
scores both, the summary and the argument checks. (The peer itself needs its own venv and is not run.)"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import peer  # noqa: E402
from cpu_clock import tree_cpu_seconds  # noqa: E402

from bt_keras.evaluation import knn_accuracy  # noqa: E402


def test_the_clock_counts_a_busy_child_process_as_the_dataloader_workers_are_counted():
    spin = (
        "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\n"
        "print('spun', flush=True)\ntime.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "spun"  # the child has spent its CPU-second and sleeps
        children = tree_cpu_seconds() - time.process_time()
        assert children >= 0.95, children  # 1 s of spinning (+ its start-up), not only our own time
    finally:
        child.kill()
        child.wait()
    assert tree_cpu_seconds() - time.process_time() < 0.5  # a child that has gone is not counted


def test_the_numpy_knn_agrees_with_bt_keras_knn_on_real_looking_features():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 64))
    y_train, y_test = rng.integers(0, 10, 3000), rng.integers(0, 10, 700)
    x_train = centers[y_train] + 4.0 * rng.normal(size=(3000, 64))
    x_test = centers[y_test] + 4.0 * rng.normal(size=(700, 64))
    ours = knn_accuracy(x_train, y_train, x_test, y_test, k=200, temperature=0.1)["top1"]
    shared = peer.knn_top1(x_train, y_train, x_test, y_test, k=200, temperature=0.1, chunk=256)
    assert 0.3 < shared < 0.99  # neither trivial nor chance: the vote decides
    assert shared == pytest.approx(ours, abs=2 / 700)  # float32 sums may differ in the last bit: a vote or two
    shuffled = peer.knn_top1(x_train, rng.permutation(y_train), x_test, y_test)
    assert shuffled < 0.2  # labels that mean nothing score chance


def test_the_summary_is_the_median_over_rounds_against_lightly_best():
    runs = {
        "bt_keras": [{"pairs_per_cpu_s": v, "pairs_per_wall_s": 2 * v} for v in (100.0, 130.0, 120.0)],
        "lightly best": [{"pairs_per_cpu_s": v, "pairs_per_wall_s": v} for v in (90.0, 100.0, 500.0)],
    }
    rows = {r["side"]: r for r in peer.summarize(runs)}
    assert rows["bt_keras"]["pairs_per_cpu_s"] == 120.0 and rows["bt_keras"]["pairs_per_wall_s"] == 240.0
    assert rows["bt_keras"]["vs_reference"] == 1.2 and rows["lightly best"]["vs_reference"] == 1.0


def test_bad_arguments_are_one_line_with_exit_code_2(tmp_path):
    for argv, message in (
        (["e2e", "--data", str(tmp_path)], "--data: "),
        (["step", "--configs", "small,huge"], "--configs: unknown huge"),
    ):
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "benchmarks", "peer.py"), *argv], capture_output=True, text=True
        )
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "peer.py"), "step", "--venv", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "no peer venv at" in proc.stderr and "peer.py setup" in proc.stderr


def test_run_commands_keep_zero_values_and_drop_unset_ones():
    assert peer.flags(seed=0, warmup=0, out=None, tf_threads=True, bf16=False) == [
        "--seed",
        "0",
        "--warmup",
        "0",
        "--tf-threads",
    ]
    cmd = peer.lightly_cmd("python", "knn", "small", True, seed=0, budget_cpu_s=600.0)
    assert cmd[cmd.index("--seed") + 1] == "0" and "--channels-last" in cmd
