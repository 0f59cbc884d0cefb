"""``benchmarks/roofline.py``: the FLOPs it reads from oneDNN's shapes and the per-step sums it makes of a
real oneDNN verbose log (the format is oneDNN's and changes with TensorFlow's copy of it)."""

import doctest
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import roofline  # noqa: E402

TINY_STEP = """
import tensorflow as tf
x, k = tf.random.normal([2, 8, 8, 4]), tf.random.normal([3, 3, 4, 8])
a, b = tf.random.normal([16, 32]), tf.random.normal([32, 8])
f = tf.function(lambda: (tf.nn.conv2d(x, k, 1, "SAME"), tf.matmul(a, b)))
for _ in range(3):
    f()
"""


def test_the_flop_counts_of_its_docstring_hold():
    assert doctest.testmod(roofline).failed == 0


@pytest.mark.slow  # starts a TensorFlow process
def test_a_real_verbose_log_sums_to_one_conv_and_one_matmul_per_step():
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", TINY_STEP], capture_output=True, text=True, env=env, check=True).stdout
    rows = roofline.parse_exec_lines(out, calls=3, timed=2)
    by_kind = {kind: row for (kind, _impl, _prop), row in rows.items() if kind != "reorder"}
    assert set(by_kind) == {"convolution", "gemm_api"}, rows
    assert by_kind["convolution"]["calls"] == 1 and by_kind["gemm_api"]["calls"] == 1
    assert by_kind["convolution"]["gflop"] == pytest.approx(2 * 2 * 8 * 8 * 3 * 3 * 4 * 8 / 1e9)
    assert by_kind["gemm_api"]["gflop"] == pytest.approx(2 * 16 * 32 * 8 / 1e9)
    # The first call's matmul creates its kernel (tens of ms); the timed calls leave it out.
    assert all(0 < row["ms"] < 20 for row in by_kind.values()), by_kind
    with pytest.raises(SystemExit, match="do not split into 2 equal calls"):
        roofline.parse_exec_lines(out, calls=2, timed=1)
