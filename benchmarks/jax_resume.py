"""What ``train.jax_compilation_cache`` saves a resumed JAX run: CPU seconds of the process that resumes.

Each round starts the demo on the JAX backend over ``--devices`` virtual CPU devices, stops it
with SIGTERM after its first checkpoint, and resumes it to the end, once with a fresh cache
directory and once with the cache off (null), in alternating order. Printed: the median CPU
seconds (user + system) of the resumed process in each setting, their ratio, and the cache's
size on disk. Needs JAX (``pip install "bt_keras[jax]"``); about a minute per round on 2 cores:

    python benchmarks/jax_resume.py [--rounds 3] [--devices 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = [
    "--config",
    str(ROOT / "configs" / "demo.yaml"),
    *("--set", "train.backend=jax", "--set", "train.epochs=2", "--set", "train.checkpoint_every_steps=4"),
    *("--set", "model.width=4", "--set", "model.projector_dims=[32,32,32]", "--set", "train.batch_size=64"),
    *("--set", "train.verbose=0", "--set", "monitor.knn_every_epochs=1", "--set", "monitor.knn_max_train=300"),
    *("--set", "monitor.knn_max_val=100", "--set", "monitor.knn_train_source=demo:train"),
    *("--set", "monitor.knn_val_source=demo:test", "--set", "eval.train_source=null"),
]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _life(run: Path, cache: str, env: dict) -> float:
    """Starts, preempts (SIGTERM after the first checkpoint) and resumes a run; the resumed process's CPU-s."""
    cmd = [sys.executable, "-m", "bt_keras.cli.train", "--run-dir", str(run), *DEMO]
    cmd += ["--set", f"train.jax_compilation_cache={cache}"]
    checkpoint = run / "checkpoints" / "latest.weights.h5"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    while not checkpoint.exists():
        if proc.poll() is not None:
            sys.exit(f"jax_resume.py: the first process failed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate()
    before = _cpu_seconds()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"jax_resume.py: the resumed process failed: {done.stderr[-2000:]}")
    return _cpu_seconds() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="jax")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    cpu = {"cache": [], "off": []}
    sizes = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for setting in ("cache", "off") if r % 2 == 0 else ("off", "cache"):
                cache = Path(tmp, f"cache-{r}")
                run = Path(tmp, f"run-{r}-{setting}")
                cpu[setting].append(_life(run, str(cache) if setting == "cache" else "null", env))
                if setting == "cache":
                    sizes.append(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()))
                shutil.rmtree(run)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.devices} JAX CPU devices")
    print(f"# median of {args.rounds} rounds; CPU seconds (user + system) of the process that resumes")
    on, off = statistics.median(cpu["cache"]), statistics.median(cpu["off"])
    print(f"{'train.jax_compilation_cache: null (baseline)':<46} {off:6.1f} CPU-s")
    print(f"{'train.jax_compilation_cache: a directory':<46} {on:6.1f} CPU-s   ({on / off:.2f}x)")
    print(f"cache size after one run's life: {statistics.median(sizes) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
