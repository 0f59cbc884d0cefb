"""How fast each ``bt-*`` command answers ``--help`` and a bad argument, next to importing TensorFlow.

The commands check their arguments and configs before importing TensorFlow, so a typo costs a
fraction of a second instead of TensorFlow's start-up. ``tests/test_train.py`` checks that
TensorFlow is not imported; this script measures what that buys, median of ``--rounds`` runs:

    python benchmarks/cli_startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = ("train", "eval", "export", "data", "embed")


def _seconds(argv: list[str], rounds: int) -> float:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


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


if __name__ == "__main__":
    main()
