"""``train.mixed_precision: auto``: the dtype policy that is fastest where the run actually runs.

bfloat16 halves the memory traffic of every layer, but only hardware with bf16 units turns that
into speed. Measured with ``python -m bt_keras.precision`` (a 3×3 convolution, forward and
backward, 2026-12-06, a 2-core AMD EPYC with AVX512-BF16, TF 2.21): bf16 1.66× float32 with the
CPU's own units; 0.36× with oneDNN held to AVX-512 without BF16 (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``);
and with ``ONEDNN_MAX_CPU_ISA=AVX2`` oneDNN has no bf16 convolution at all. So on a CPU ``auto``
measures instead of guessing from flags: once per machine, oneDNN setting and TensorFlow version
(the answer is cached), it times the convolution in both precisions and takes bf16 only when it is
at least :data:`MIN_SPEEDUP` faster. On accelerators the answer is known: TPUs compute in bf16;
GPUs from compute capability 8.0 (Ampere) have bf16 tensor cores, from 7.0 float16 ones (Keras
adds loss scaling), older ones neither. The loss and its statistics are float32 whatever is chosen.

Examples:

>>> resolve_precision("float32", "cpu")
('float32', 'train.mixed_precision')
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time

MIN_SPEEDUP = 1.2  # below this a bf16 CPU step is not worth its rounding
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def resolve_precision(setting: str, device: str, gpu_capability: tuple | None = None) -> tuple[str, str]:
    """``(policy, why)`` for ``train.mixed_precision`` = ``setting`` on ``device``.

    Args:
        setting: ``"auto"`` or one of :data:`POLICIES` (returned as it is).
        device: ``"tpu"``, ``"gpu"`` or ``"cpu"``: what the strategy trains on.
        gpu_capability: the first GPU's compute capability ``(major, minor)``, for ``"gpu"``.
    """
    if setting != "auto":
        return setting, "train.mixed_precision"
    if device == "tpu":
        return "mixed_bfloat16", "auto: TPUs compute in bfloat16"
    if device == "gpu":
        if not gpu_capability:
            return "float32", "auto: the GPU's compute capability is unknown (not a CUDA device?)"
        major = gpu_capability[0]
        if major >= 8:
            return "mixed_bfloat16", f"auto: GPU compute capability {major}.x has bfloat16 tensor cores"
        if major >= 7:
            return "mixed_float16", f"auto: GPU compute capability {major}.x has float16 tensor cores"
        return "float32", "auto: this GPU has no tensor cores"
    speedup = cpu_bf16_speedup()
    if speedup >= MIN_SPEEDUP:
        return "mixed_bfloat16", f"auto: bfloat16 measured {speedup:.2f}x float32 on this CPU"
    if speedup == 0:
        return "float32", "auto: this CPU (or oneDNN setting) has no bfloat16 convolution"
    return "float32", f"auto: bfloat16 measured {speedup:.2f}x float32 on this CPU (below {MIN_SPEEDUP}x)"


def jax_gpu_capability(device) -> tuple | None:
    """``(major, minor)`` of a JAX CUDA device (which reports it as the string ``"9.0"``), else None.

    Example:

    >>> import jax
    >>> jax_gpu_capability(jax.devices("cpu")[0]) is None
    True
    """
    try:
        major, minor = str(device.compute_capability).split(".")[:2]
        return int(major), int(minor)
    except (AttributeError, ValueError):
        return None


def with_resolved_precision(cfg, device: str = "cpu"):
    """``cfg`` with ``train.mixed_precision`` resolved to a policy (for scripts that build a model from
    a config themselves, as the benchmarks do; ``bt-train`` resolves it per strategy)."""
    import dataclasses

    policy, _ = resolve_precision(cfg.train.mixed_precision, device)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixed_precision=policy))


def _cpu_fingerprint() -> str:
    """What the measurement depends on: the CPU, its flags, oneDNN's settings, TensorFlow's version."""
    import tensorflow as tf

    model, flags = platform.processor(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = [os.environ.get(k, "") for k in ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "DNNL_MAX_CPU_ISA")]
    text = "|".join([model, flags, tf.__version__, *env])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bt_keras", "precision.json")


def cpu_bf16_speedup(use_cache: bool = True) -> float:
    """float32 time / bfloat16 time of a convolution step on this CPU (0 if bf16 cannot run); cached."""
    key, path = _cpu_fingerprint(), _cache_path()
    cached = {}
    if use_cache:
        try:
            with open(path) as f:
                cached = json.load(f)
            if isinstance(cached, dict) and isinstance(cached.get(key), (int, float)):
                return float(cached[key])
        except (OSError, ValueError):
            cached = {}
    speedup = measure_cpu_bf16_speedup()
    try:
        from bt_keras.io import atomic_write

        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, json.dumps({**(cached if isinstance(cached, dict) else {}), key: speedup}) + "\n")
    except OSError:
        pass  # a read-only home: measured again next time, no harm
    return speedup


def measure_cpu_bf16_speedup(reps: int = 5) -> float:
    """Times a 3×3 convolution (batch 32, 32×32×64, forward and backward) in float32 and bfloat16.

    CPU time, best of ``reps``: the fastest run is the least disturbed by other processes.
    """
    import tensorflow as tf

    def best_seconds(dtype) -> float:
        x = tf.cast(tf.random.stateless_normal([32, 32, 32, 64], seed=[0, 1]), dtype)
        w = tf.cast(0.05 * tf.random.stateless_normal([3, 3, 64, 64], seed=[0, 2]), dtype)

        @tf.function
        def step(x, w):
            with tf.GradientTape() as tape:
                tape.watch(w)
                loss = tf.reduce_sum(tf.cast(tf.nn.conv2d(x, w, 1, "SAME"), tf.float32) ** 2)
            return tape.gradient(loss, w)

        with tf.device("/CPU:0"):
            step(x, w).numpy()
            best = float("inf")
            for _ in range(reps):
                started = time.process_time()
                step(x, w).numpy()
                best = min(best, time.process_time() - started)
        return best

    f32 = best_seconds(tf.float32)
    try:
        bf16 = best_seconds(tf.bfloat16)
    except (tf.errors.OpError, RuntimeError):  # oneDNN without a bf16 kernel for this ISA
        return 0.0
    return round(f32 / max(bf16, 1e-9), 2)


if __name__ == "__main__":  # the measurement, without the cache
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    ratio = measure_cpu_bf16_speedup()
    print(json.dumps({"bf16_speedup": ratio, "oneDNN_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}))
