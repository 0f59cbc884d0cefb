"""The JAX backend on one GPU, without TensorFlow: the policy ``train.mixed_precision: auto`` picks,
how exact the float32 loss is there, and the train step in float32 against that policy.

1. ``auto``: the GPU's compute capability as JAX reports it and the policy
   :func:`bt_keras.precision.resolve_precision` takes from it (``bt-train`` does the same through
   :func:`bt_keras.distribute.device_kind`).
2. The loss of one fixed pair of projections (batch 256, D 2048, correlated views), computed on
   the GPU at XLA's default matmul precision (on Ampere and later GPUs that lets float32 matmuls
   run as TF32, 10 mantissa bits) and at ``highest``, against the same loss on the CPU.
3. The train step of ``configs/cifar10_resnet18.yaml``'s model (ResNet-18 CIFAR stem, width 64,
   projector 2048³, LARS, batch 256) on synthetic batches: pairs/s in float32 and in the ``auto``
   policy, interleaved rounds, best and median of each; the loss's dtype and first/last value.

Usage (a GPU machine with ``jax[cuda]`` and ``keras``; TensorFlow is not needed)::

    KERAS_BACKEND=jax python benchmarks/gpu_jax.py --json gpu_jax.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def loss_precision(batch: int = 256, dim: int = 2048) -> dict:
    """Relative error of the float32 loss on the GPU (default and highest precision) against the CPU's."""
    import jax
    import numpy as np

    from bt_keras.losses import barlow_twins_loss

    rng = np.random.default_rng(0)
    z_a = rng.normal(size=(batch, dim)).astype("float32")
    z_b = (0.8 * z_a + 0.6 * rng.normal(size=(batch, dim))).astype("float32")
    cpu, gpu = jax.devices("cpu")[0], jax.devices()[0]

    def loss_on(device, precision=None):
        a, b = jax.device_put(z_a, device), jax.device_put(z_b, device)
        if precision is None:
            return float(barlow_twins_loss(a, b, method="dense"))
        with jax.default_matmul_precision(precision):
            return float(barlow_twins_loss(a, b, method="dense"))

    reference = loss_on(cpu, "highest")
    out = {"batch": batch, "dim": dim, "cpu_loss": reference}
    for name in ("default", "highest"):
        value = loss_on(gpu, None if name == "default" else name)
        out[f"gpu_{name}_loss"] = value
        out[f"gpu_{name}_rel_err"] = abs(value - reference) / abs(reference)
    return out


def build_model(policy: str, batch: int):
    import keras

    from bt_keras.encoders import build_encoder
    from bt_keras.model import BarlowTwins
    from bt_keras.optimizers import LARS

    keras.mixed_precision.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    encoder = build_encoder("resnet18_cifar", (32, 32, 3), width=64)
    model = BarlowTwins(encoder, projector_dims=(2048, 2048, 2048), lambd=0.0051)
    model.compile(optimizer=LARS(learning_rate=0.2 * batch / 256, weight_decay=1.5e-6))
    return model


def step_rates(policies, batch: int, steps: int, rounds: int) -> dict:
    """pairs/s per policy over ``rounds`` interleaved timed fits of ``steps`` steps each."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    pairs = [tuple(rng.uniform(size=(batch, 32, 32, 3)).astype("float32") for _ in range(2)) for _ in range(4)]

    def batches():  # (view_a, view_b) per step, as a two-view tf.data pipeline yields them
        while True:
            yield from pairs

    models, rates, losses = {}, {p: [] for p in policies}, {}
    for policy in policies:
        models[policy] = build_model(policy, batch)
        history = models[policy].fit(batches(), epochs=1, steps_per_epoch=3, verbose=0)
        losses[policy] = {"first": history.history["loss"][0]}
    keras.mixed_precision.set_dtype_policy("float32")
    for _ in range(rounds):
        for policy in policies:
            start = time.perf_counter()
            history = models[policy].fit(batches(), epochs=1, steps_per_epoch=steps, verbose=0)
            rates[policy].append(batch * steps / (time.perf_counter() - start))
            losses[policy]["last"] = history.history["loss"][-1]
    out = {}
    for policy in policies:
        model = models[policy]
        out[policy] = {
            "pairs_per_s_best": max(rates[policy]),
            "pairs_per_s_median": statistics.median(rates[policy]),
            "compute_dtype": model.encoder.layers[-1].dtype_policy.compute_dtype,
            "loss": losses[policy],
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=40, help="steps per timed fit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import jax
    import keras

    from bt_keras.precision import jax_gpu_capability, resolve_precision

    if keras.backend.backend() != "jax" or jax.devices()[0].platform != "gpu":
        print(f"{Path(__file__).name}: needs the JAX backend on a GPU (found {jax.devices()[0].platform})")
        return 2
    device = jax.devices()[0]
    capability = jax_gpu_capability(device)
    policy, why = resolve_precision("auto", "gpu", capability)
    result = {
        "device": device.device_kind,
        "compute_capability": capability,
        "jax": jax.__version__,
        "keras": keras.__version__,
        "auto_policy": policy,
        "auto_why": why,
        "loss_precision": loss_precision(),
    }
    policies = ["float32"] + ([policy] if policy != "float32" else [])
    result["step"] = step_rates(policies, args.batch, args.steps, args.rounds)
    result["date"] = time.strftime("%Y-%m-%d")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
