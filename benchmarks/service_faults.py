"""What the tf.data service guarantees for one epoch when a worker or the dispatcher dies, measured.

One epoch (no repeat) of bt_keras view pairs over a folder of small JPEGs is
read through a ``bt-data-service`` dispatcher and two worker processes on
127.0.0.1, in each processing mode; part-way through, a worker (or the
dispatcher, restarted on the same port and ``--work-dir``) is killed with
SIGKILL. Every pair delivered is matched against the local pipeline's pairs
of the same seed (the views are a function of (seed, example, epoch)), which
tells exactly which examples arrived once, twice or never.

Usage:

    PYTHONPATH=. python benchmarks/service_faults.py            # ≈ 2 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bt_keras.data.config import DataConfig  # noqa: E402


def _folder(root: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i}.jpg")
    return root


def _server(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "bt_keras.cli.data_service", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    if not proc.stdout.readline():
        raise SystemExit(f"{' '.join(cmd)}: did not start")
    return proc


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pairs(ds):
    return [np.stack([a, b]).reshape(-1) for a, b in ds.unbatch().as_numpy_iterator()]


def one_case(folder: Path, n: int, mode: str, victim: str, after: int, work: Path, stall: float) -> tuple:
    """``(delivered, distinct, missing, repeated)`` examples of one epoch with ``victim`` killed after ``after``."""
    port = _port()
    wd = work / f"journal-{mode}-{victim}"
    dispatcher = _server("dispatcher", "--port", str(port), "--work-dir", str(wd), "--worker-timeout", "2")
    workers = [_server("worker", "--dispatcher", f"127.0.0.1:{port}") for _ in range(2)]
    base = dict(source=f"folder:{folder}", image_size=16, augment="imagenet", cache=False, seed=3)
    local = np.stack(_pairs(DataConfig(**base).train_dataset(1)))
    served = DataConfig(**base, service={"dispatcher": f"127.0.0.1:{port}", "mode": mode, "compression": "none"})
    got, done = [], threading.Event()

    def read():  # in a thread: a read that never ends (a dead worker's open task) is reported, not waited on
        for a, b in served.train_dataset(1).unbatch().as_numpy_iterator():
            got.append(np.stack([a, b]).reshape(-1))
            if len(got) == after and victim != "none":
                nonlocal dispatcher
                target = workers[0] if victim == "worker" else dispatcher
                target.kill()
                target.wait()
                if victim == "dispatcher":  # same port, same journal: it resumes the job
                    dispatcher = _server("dispatcher", "--port", str(port), "--work-dir", str(wd))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    ended = done.wait(stall)
    for proc in [dispatcher, *workers]:
        proc.kill()
        proc.wait()
    counts = np.zeros(n, int)
    for g in got:
        d = np.abs(local - g).max(axis=1)
        if d.min() < 1e-3:
            counts[d.argmin()] += 1
    delivered = str(len(got)) if ended else f"{len(got)}, then nothing for {stall:.0f} s"
    return delivered, int((counts > 0).sum()), int((counts == 0).sum()), int((counts > 1).sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=120)
    p.add_argument("--stall", type=float, default=120.0, help="seconds the epoch may take before it counts as stuck")
    p.add_argument("--cases", default="all", help="all, or MODE:VICTIM,... (victim: none, worker, dispatcher)")
    args = p.parse_args(argv)
    n = args.examples
    print(f"{os.cpu_count()} CPU cores, load average at start {os.getloadavg()[0]:.1f}; one epoch of {n} examples")
    print("| mode | killed after 1/3 of the epoch | pairs delivered | distinct examples | never | more than once |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = _folder(work / "photos", n)
        cases = [("distributed_epoch", "none"), ("distributed_epoch", "worker"), ("distributed_epoch", "dispatcher")]
        cases += [("off", "none"), ("off", "worker")]
        if args.cases != "all":
            cases = [tuple(c.split(":")) for c in args.cases.split(",")]
        for mode, victim in cases:
            row = one_case(folder, n, mode, victim, n // 3, work, args.stall)
            print(f"| {mode} | {victim} | {row[0]} | {row[1]} | {row[2]} | {row[3]} |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}", flush=True)
    os._exit(0)  # a stuck read's thread would keep the process alive


if __name__ == "__main__":
    sys.exit(main())
