"""Training over 2 and 4 replicas equals single-device training on the global batch.

Each replica count runs ``tests/distributed_case.py`` in its own process (one
tf.distribute strategy per process) on logical CPU devices.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from cluster import free_port, tf_config

pytestmark = pytest.mark.slow  # multi-replica and multi-process training

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_case.py")
# One process per replica count (one strategy per process), training its cases in turn.
CASES = {
    1: ["r1", "r1_d16:dim=16"],  # D = 16 < 2N: C is all-reduced instead of gathering rows
    2: ["r2", "r2_gram:method=gram", "r2_d16:dim=16", "r2_unsynced_bn:sync=0"],
    4: ["r4"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")

    def run(replicas):
        cases = [arg for case in CASES[replicas] for arg in ("--case", case)]
        proc = subprocess.run(
            [sys.executable, SCRIPT, "--replicas", str(replicas), *cases, "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, CASES))
    names = [case.split(":")[0] for cases in CASES.values() for case in cases]
    return {name: dict(np.load(out / f"{name}.npz")) for name in names}


def _weights(r):
    return [r[k] for k in sorted((k for k in r if k.startswith("w")), key=lambda k: int(k[1:]))]


def _max_weight_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(_weights(a), _weights(b)))


@pytest.mark.parametrize("case,baseline", [("r2", "r1"), ("r4", "r1"), ("r2_gram", "r1"), ("r2_d16", "r1_d16")])
def test_replicas_match_single_device(runs, case, baseline):
    a, b = runs[baseline], runs[case]
    assert len(a["losses"]) == 3
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5, atol=1e-5)
    assert _max_weight_diff(a, b) <= 1e-5


def test_training_moved_the_weights(runs):
    r = runs["r1"]
    moved = max(float(np.abs(r[f"w{i}"] - r[f"init{i}"]).max()) for i in range(len(_weights(r))))
    assert moved > 1e-2  # so a 1e-5 agreement is meaningful


def test_unsynchronised_batchnorm_breaks_exactness(runs):
    # Negative control: per-replica BN statistics make the result depend on the replica count.
    assert _max_weight_diff(runs["r1"], runs["r2_unsynced_bn"]) > 1e-3


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """A real 2-process MultiWorkerMirroredStrategy cluster on 127.0.0.1, one CPU device each."""
    out = tmp_path_factory.mktemp("mw")
    ports = [free_port(), free_port()]
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", TF_CONFIG=tf_config(ports, i))
        procs.append(
            subprocess.Popen(
                [sys.executable, SCRIPT, "--replicas", "1", "--multi-worker", "--out", str(out / f"w{i}.npz")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    results = []
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output[-3000:]
    for i in range(2):
        results.append(dict(np.load(out / f"w{i}.npz")))
    return results


def test_two_workers_match_single_process(runs, two_workers):
    for worker in two_workers:
        np.testing.assert_allclose(worker["losses"], runs["r1"]["losses"], rtol=1e-5, atol=1e-5)
        assert _max_weight_diff(runs["r1"], worker) <= 1e-5


def test_two_workers_see_every_example_exactly_once(two_workers):
    seen = np.concatenate([w["seen"] for w in two_workers])
    assert sorted(seen.tolist()) == list(range(64))
    assert set(two_workers[0]["seen"].tolist()).isdisjoint(two_workers[1]["seen"].tolist())
