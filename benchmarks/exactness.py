"""The exactness figures of the docs, measured: what a per-replica loss gets wrong, and how close
bt_keras' multi-device training is to one device on the same global batch.

    python benchmarks/exactness.py [--skip-training]

Prints two tables:

1. **A per-replica loss** (what public TF ports compute: each replica standardises its own
   share of the batch and builds its own C) against the loss of the global batch: the relative
   error of the gradient, ``‖g_R − g_1‖ / ‖g_1‖``, for R = 2, 4, 8 replicas, on the same
   encoder and global batch, in one process (the gradient of the mean of the R per-share losses).
2. **bt_keras across replicas** (``tests/distributed_case.py``, the case the test suite checks to
   1e-5): the largest difference of any weight after 3 LARS steps, for 2 and 4 logical CPU
   devices and a 2-process MultiWorkerMirroredStrategy cluster on 127.0.0.1, against 1 device;
   and the unsynchronised-BatchNorm control, which must not be exact.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CASE = REPO / "tests" / "distributed_case.py"


def per_replica_gradient_error(replicas=(2, 4, 8), batch=64, dim=128, seed=0) -> dict:
    """``{R: relative gradient error}`` of the mean per-replica loss against the global-batch loss."""
    import keras
    import tensorflow as tf

    import bt_keras
    from bt_keras.losses import barlow_twins_loss

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    images = rng.random((batch, 16, 16, 3)).astype("float32")
    other = np.clip(images + 0.1 * rng.normal(size=images.shape), 0, 1).astype("float32")
    model = bt_keras.BarlowTwins(bt_keras.small_cnn(widths=(8, 16), input_shape=(16, 16, 3)), (dim, dim, dim))
    model.build((None, 16, 16, 3))

    def gradient(r):
        with tf.GradientTape() as tape:
            z_a, z_b = model(images, training=False), model(other, training=False)
            shares = zip(tf.split(z_a, r), tf.split(z_b, r))
            loss = tf.add_n([barlow_twins_loss(a, b) for a, b in shares]) / r
        return tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(loss, model.trainable_variables)], 0)

    exact = gradient(1)
    return {r: float(tf.norm(gradient(r) - exact) / tf.norm(exact)) for r in replicas}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_case(out: Path, name: str, args: list, env_extra=None) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", **(env_extra or {}))
    path = out / f"{name}.npz"
    proc = subprocess.run([sys.executable, str(CASE), *args, "--out", str(path)], env=env, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"exactness.py: {name} failed: {proc.stderr.decode()[-2000:]}")
    return dict(np.load(path))


def _two_workers(out: Path) -> list:
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CONFIG=config)
        cmd = [sys.executable, str(CASE), "--replicas", "1", "--multi-worker", "--out", str(out / f"w{i}.npz")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            sys.exit(f"exactness.py: the 2-worker cluster failed: {err.decode()[-2000:]}")
    return [dict(np.load(out / f"w{i}.npz")) for i in range(2)]


def _max_weight_diff(a: dict, b: dict) -> float:
    keys = [k for k in a if k.startswith("w") and k[1:].isdigit()]
    return max(float(np.abs(a[k] - b[k]).max()) for k in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-training", action="store_true", help="only the per-replica loss table")
    args = parser.parse_args()
    print(f"# {platform.platform()}, {os.cpu_count()} cores")
    print("\nper-replica loss against the global batch (relative gradient error)")
    for r, err in per_replica_gradient_error().items():
        print(f"  {r} replicas   {100 * err:5.1f}%")
    if args.skip_training:
        return
    print("\nbt_keras across devices, max weight difference after 3 LARS steps against 1 device (tested: <= 1e-5)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        one = _run_case(out, "r1", ["--replicas", "1"])
        for name, case in (("2 replicas", ["--replicas", "2"]), ("4 replicas", ["--replicas", "4"])):
            print(f"  {name:<30} {_max_weight_diff(one, _run_case(out, name.replace(' ', '_'), case)):.1e}")
        workers = _two_workers(out)
        print(f"  {'2 workers (MultiWorkerMirrored)':<30} {max(_max_weight_diff(one, w) for w in workers):.1e}")
        control = _run_case(out, "unsynced", ["--replicas", "2", "--no-sync-bn"])
        print(f"  {'control: 2 replicas, BN unsynced':<30} {_max_weight_diff(one, control):.1e}  (tested: > 1e-3)")


if __name__ == "__main__":
    main()
