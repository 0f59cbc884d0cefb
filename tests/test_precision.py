"""``train.mixed_precision: auto``: the policy that is fastest on the device, measured on CPUs."""

import json
import os
import subprocess
import sys

import pytest

from bt_keras.precision import resolve_precision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "device, capability, policy",
    [
        ("tpu", None, "mixed_bfloat16"),
        ("gpu", (9, 0), "mixed_bfloat16"),
        ("gpu", (8, 6), "mixed_bfloat16"),
        ("gpu", (7, 5), "mixed_float16"),
        ("gpu", (6, 1), "float32"),
        ("gpu", None, "float32"),  # capability unknown (a ROCm device under JAX): no guess
    ],
)
def test_auto_on_accelerators_follows_the_hardware(device, capability, policy):
    chosen, why = resolve_precision("auto", device, capability)
    assert chosen == policy and why.startswith("auto: ")


def test_jax_gpu_capability_reads_the_cuda_string():
    """JAX's CUDA devices report ``compute_capability = "9.0"`` (checked on an H100: benchmarks/gpu_jax.py);
    no GPU runs here, so a stand-in with that attribute, and the real CPU device, which has none."""
    import types

    import jax

    from bt_keras.precision import jax_gpu_capability

    assert jax_gpu_capability(types.SimpleNamespace(compute_capability="9.0")) == (9, 0)
    assert jax_gpu_capability(types.SimpleNamespace(compute_capability="gfx90a")) is None
    assert jax_gpu_capability(jax.devices("cpu")[0]) is None


def test_an_explicit_policy_is_kept_everywhere():
    for device in ("tpu", "gpu", "cpu"):
        assert resolve_precision("mixed_float16", device, (6, 1)) == ("mixed_float16", "train.mixed_precision")


AUTO_ON_CPU = """
import json, sys
from bt_keras.precision import _cache_path, resolve_precision
first = resolve_precision("auto", "cpu")
second = resolve_precision("auto", "cpu")  # from the cache
print(json.dumps({"first": first, "second": second, "cache": json.load(open(_cache_path()))}))
"""


@pytest.mark.slow  # a subprocess that imports TensorFlow and measures a convolution
def test_auto_on_a_cpu_without_bf16_units_is_float32(tmp_path, isa="AVX2"):
    """oneDNN held to AVX2 (what an AVX2-only CPU has): float32.

    Measured on the machine of the docs: AVX2 has no bf16 convolution at all (the probe's step
    fails); ``AVX512_CORE`` runs one at 0.36x float32 (``python -m bt_keras.precision``).
    """
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa, XDG_CACHE_HOME=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", AUTO_ON_CPU], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["first"][0] == "float32" and out["first"][1].startswith("auto: ")
    assert out["second"] == out["first"]
    (speedup,) = out["cache"].values()  # one entry: this CPU, oneDNN setting and TensorFlow version
    assert speedup < 1.2
