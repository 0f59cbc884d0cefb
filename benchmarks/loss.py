"""Forward+backward time and peak memory of the loss forms, side by side.

    python benchmarks/loss.py                  # full grid (≈ 5 min on 2 cores)
    python benchmarks/loss.py --n 256 --d 8192 # one point

Each (method, N, D) runs in its own process so peak memory (max RSS growth
over the inputs already allocated) is not polluted by the previous case.
"""

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(method, n, d, repeats):
    import numpy as np
    import tensorflow as tf

    from bt_keras.losses import barlow_twins_loss

    rng = np.random.default_rng(0)
    z_a = tf.constant(rng.normal(size=(n, d)).astype(np.float32))
    z_b = tf.constant(rng.normal(size=(n, d)).astype(np.float32))

    @tf.function
    def step(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = barlow_twins_loss(a, b, method=method)
        ga, gb = tape.gradient(loss, [a, b])
        return loss, tf.reduce_sum(ga) + tf.reduce_sum(gb)

    step.get_concrete_function(z_a, z_b)
    before = _rss_mb()
    loss, _ = step(z_a, z_b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        loss, g = step(z_a, z_b)
        float(g)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "method": method,
        "n": n,
        "d": d,
        "seconds": float(np.median(times)),
        "peak_mb": max(peak - before, 0.0),
        "loss": float(loss),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="*", default=[256, 1024, 2048])
    p.add_argument("--d", type=int, nargs="*", default=[2048, 8192, 16384])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", nargs=3, metavar=("METHOD", "N", "D"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        m, n, d = args.one
        print(json.dumps(measure(m, int(n), int(d), args.repeats)))
        return
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    print(
        f"{'N':>6}{'D':>7} | {'dense s':>9}{'gram s':>9}{'auto s':>9} | {'dense MB':>9}{'gram MB':>9}"
        f"{'auto MB':>9} | auto picks | speed-up | mem ratio | rel. diff",
        flush=True,
    )
    for n, d in itertools.product(args.n, args.d):
        r = {}
        for m in ("dense", "gram", "auto"):
            out = subprocess.run(
                [sys.executable, __file__, "--one", m, str(n), str(d), "--repeats", str(args.repeats)],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            r[m] = json.loads(out.stdout.strip().splitlines()[-1])
        from bt_keras.losses import resolve_method

        picks = resolve_method("auto", n, d)
        speed = r["dense"]["seconds"] / r["auto"]["seconds"]
        mem = r["dense"]["peak_mb"] / max(r["auto"]["peak_mb"], 1e-9)
        diff = abs(r["gram"]["loss"] - r["dense"]["loss"]) / abs(r["dense"]["loss"])
        print(
            f"{n:>6}{d:>7} | {r['dense']['seconds']:>9.3f}{r['gram']['seconds']:>9.3f}{r['auto']['seconds']:>9.3f}"
            f" | {r['dense']['peak_mb']:>9.0f}{r['gram']['peak_mb']:>9.0f}{r['auto']['peak_mb']:>9.0f}"
            f" | {picks:>10} | {speed:>7.1f}× | {mem:>8.1f}× | {diff:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
