"""The loss with ``standardize`` center / none over 2 replicas, for tests/test_ablations.py.

Run as a script, one backend per process (set before Keras is imported):

    python tests/standardize_case.py tensorflow --out /tmp/tf.npz   # MirroredStrategy, 2 logical CPUs
    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        python tests/standardize_case.py jax --out /tmp/jax.npz         # the batch sharded over 2 devices

Writes, for every case of :data:`CASES`, the loss and its gradients with
respect to the global ``z_a``/``z_b`` (the replicas' rows put back together).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

N = 24  # global batch, 12 rows per replica
# (standardize, method, D): D=96 gathers the rows (dense or gram); D=16 < 2N all-reduces C on TF.
CASES = [(mode, method, d) for mode in ("center", "none") for method, d in (("dense", 96), ("gram", 96), ("dense", 16))]


def inputs(d: int):
    """The embeddings every backend differentiates the loss at (shared with the test)."""
    rng = np.random.default_rng(d)
    z_a = (rng.normal(size=(N, d)) * 1.5 + 0.5).astype(np.float32)
    z_b = (0.6 * z_a + 0.8 * rng.normal(size=(N, d))).astype(np.float32)
    return z_a, z_b


def key(mode, method, d):
    return f"{mode}_{method}_{d}"


def run_tensorflow():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from bt_keras.losses import barlow_twins_terms

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for mode, method, d in CASES:
        z_a, z_b = inputs(d)

        def rows(z):
            return strategy.experimental_distribute_values_from_function(
                lambda ctx, z=z: tf.constant(z[ctx.replica_id_in_sync_group * (N // 2) :][: N // 2])
            )

        def step(a, b, mode=mode, method=method):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                loss = barlow_twins_terms(a, b, method=method, standardize=mode).loss
                scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
            return (loss, *tape.gradient(scaled, [a, b]))

        loss, g_a, g_b = strategy.run(step, args=(rows(z_a), rows(z_b)))
        losses = [float(v) for v in strategy.experimental_local_results(loss)]
        out[key(mode, method, d)] = np.array(losses)
        out[key(mode, method, d) + "_ga"] = np.concatenate(
            [v.numpy() for v in strategy.experimental_local_results(g_a)]
        )
        out[key(mode, method, d) + "_gb"] = np.concatenate(
            [v.numpy() for v in strategy.experimental_local_results(g_b)]
        )
    return out


def run_jax():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from bt_keras.losses import barlow_twins_terms

    devices = jax.devices()[:2]
    assert len(devices) == 2, devices
    sharding = NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))
    out = {}
    for mode, method, d in CASES:
        z_a, z_b = (jax.device_put(z, sharding) for z in inputs(d))
        assert [s.data.shape[0] for s in z_a.addressable_shards] == [N // 2, N // 2]
        fn = jax.jit(
            jax.value_and_grad(
                lambda a, b, m=mode, f=method: barlow_twins_terms(a, b, method=f, standardize=m).loss, argnums=(0, 1)
            )
        )
        loss, (g_a, g_b) = fn(z_a, z_b)
        out[key(mode, method, d)] = np.array([float(loss)] * 2)
        out[key(mode, method, d) + "_ga"] = np.asarray(g_a)
        out[key(mode, method, d) + "_gb"] = np.asarray(g_b)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("backend", choices=("tensorflow", "jax"))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = run_tensorflow() if args.backend == "tensorflow" else run_jax()
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
