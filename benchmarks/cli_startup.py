"""How fast each ``bt-*`` command answers ``--help`` and a bad argument, next to importing TensorFlow.

The commands check their arguments and configs before importing TensorFlow, so a typo costs a
fraction of a second instead of TensorFlow's start-up. ``tests/test_train.py`` checks that
TensorFlow is not imported; this script measures what that buys, median of ``--rounds`` runs.
It also times TensorFlow and Keras loaded as the commands load them (``load_tensorflow``: the
optional imports they try, JAX, SciPy, scikit-learn, matplotlib, skipped) next to a plain
``import keras, tensorflow``, in wall and CPU seconds (the CPU time is what a busy machine pays):

    python benchmarks/cli_startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = ("train", "eval", "export", "data", "embed")


def _seconds(argv: list[str], rounds: int, cpu: bool = False):
    """Median wall seconds of ``argv`` (and, with ``cpu``, the median CPU seconds of the process)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    times, cpus = [], []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return (statistics.median(times), statistics.median(cpus)) if cpu else statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, median of {args.rounds} runs")
    baseline = _seconds([sys.executable, "-c", "import tensorflow"], args.rounds)
    label = "python -c 'import tensorflow' (baseline)"
    print(f"{label:<44} {baseline:6.2f} s")
    for name in COMMANDS:
        module = f"bt_keras.cli.{name}"
        help_s = _seconds([sys.executable, "-m", module, "--help"], args.rounds)
        bad_s = _seconds([sys.executable, "-m", module, "--no-such-flag"], args.rounds)
        print(f"{'bt-' + name + ' --help':<44} {help_s:6.2f} s   bad flag {bad_s:5.2f} s   ({help_s / baseline:.2f}x)")
    plain = _seconds([sys.executable, "-c", "import keras, tensorflow"], args.rounds, cpu=True)
    ours = _seconds(
        [sys.executable, "-c", "from bt_keras.cli import load_tensorflow; load_tensorflow()"], args.rounds, cpu=True
    )
    print(f"{'import keras, tensorflow':<44} {plain[0]:6.2f} s   CPU {plain[1]:5.2f} s")
    print(
        f"{'as the commands load them (load_tensorflow)':<44} {ours[0]:6.2f} s   CPU {ours[1]:5.2f} s"
        f"   ({ours[1] / plain[1]:.2f}x the CPU)"
    )


if __name__ == "__main__":
    main()
