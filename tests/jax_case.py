"""Subprocess worker for tests/test_jax.py: one Keras backend and device layout per process.

The parent sets ``KERAS_BACKEND`` (jax or tensorflow) and, for JAX,
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` in this process's
environment before it starts. Each case writes an .npz the parent compares.

    KERAS_BACKEND=jax python tests/jax_case.py loss --out /tmp/loss.npz
    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python tests/jax_case.py train --distribute --out /tmp/j4.npz
    KERAS_BACKEND=jax python tests/jax_case.py train --distribute --num-processes 2 --process-id 0 \\
        --port 12345 --out /tmp/p0.npz
    KERAS_BACKEND=jax python tests/jax_case.py single --out /tmp/one  # all 1-device JAX cases, one process
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

GLOBAL_BATCH = 16
STEPS = 3
SHAPE = (8, 8, 3)


def xla_flags(devices):
    """``XLA_FLAGS`` for a test's JAX process: ``devices`` CPU devices, and the flags the suite compiles with
    (``tests/conftest.py``), without a device count inherited from the caller's environment."""
    inherited = os.environ.get("XLA_FLAGS", "").split()
    kept = [flag for flag in inherited if not flag.startswith("--xla_force_host_platform_device_count")]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def loss_inputs():
    """The embeddings both backends differentiate the loss at (shared with the parent)."""
    rng = np.random.default_rng(7)
    z_a = (rng.normal(size=(24, 96)) * 2 + 1).astype(np.float32)
    z_b = (0.6 * z_a + rng.normal(size=(24, 96))).astype(np.float32)
    return z_a, z_b


def batches():
    """STEPS global batches of (view_a, view_b)."""
    rng = np.random.RandomState(0)
    images = rng.rand(GLOBAL_BATCH * STEPS, *SHAPE).astype("float32")
    return images, (images * 0.8 + 0.1 * rng.rand(*images.shape)).astype("float32")


def initial_weights(model):
    """He-normal kernels from a fixed NumPy seed, BN's usual start, so every backend and layout starts equal.

    Computed without reading the variables: under ``keras.distribution`` over several processes,
    Keras 3.15 creates arrays from layout-aware initializers that JAX cannot read back on CPU
    ("input arrays must have one shard each"); assigning new values replaces them.
    """
    init = np.random.RandomState(1)
    values = []
    for w in model.weights:
        if len(w.shape) > 1:
            values.append(init.normal(0, np.sqrt(2.0 / np.prod(w.shape[:-1])), w.shape).astype("float32"))
        else:
            one = w.path.endswith(("gamma", "moving_variance"))
            values.append(np.full(w.shape, 1.0 if one else 0.0, "float32"))
    return values


def to_numpy(x):
    """A host copy of a variable or array, also when it spans processes (replicated)."""
    value = getattr(x, "value", x)
    shards = getattr(value, "addressable_shards", None)
    if shards is not None and not value.is_fully_addressable:
        return np.asarray(shards[0].data)
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value))


def run_loss(args):
    import jax

    from bt_keras.losses import barlow_twins_terms

    z_a, z_b = loss_inputs()
    out = {}
    for method in ("dense", "gram"):
        fn = lambda a, b, m=method: barlow_twins_terms(a, b, method=m).loss
        value, (g_a, g_b) = jax.value_and_grad(fn, argnums=(0, 1))(z_a, z_b)
        out.update({f"{method}_loss": np.asarray(value), f"{method}_ga": np.asarray(g_a), f"{method}_gb": g_b})
        out[f"{method}_dtype"] = np.array(str(value.dtype))
    np.savez(args.out, **{k: np.asarray(v) for k, v in out.items()})


def build_model(dim=64, method="auto", cls=None):
    import bt_keras

    encoder = bt_keras.small_cnn(widths=(4, 8), input_shape=SHAPE)
    model = (cls or bt_keras.BarlowTwins)(encoder, projector_dims=(32, 32, dim), loss_method=method)
    model.build((None, *SHAPE))
    return model


def _probe_class():
    import keras

    import bt_keras

    class Probed(bt_keras.BarlowTwins):
        """Records, while the step is traced, how the trainer sharded the batch over devices."""

        seen = []

        def train_step(self, *args):
            if keras.backend.backend() == "jax":
                import jax

                view_a = args[1][0]
                jax.debug.inspect_array_sharding(
                    view_a, callback=lambda s: self.seen.append((len(s.device_set), s.shard_shape(view_a.shape)[0]))
                )
            return super().train_step(*args)

    return Probed


def setup_distribution(args):
    """Returns the number of processes; sets DataParallel over every device when asked."""
    import keras

    if args.num_processes > 1:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(
            job_addresses=f"127.0.0.1:{args.port}", num_processes=args.num_processes, process_id=args.process_id
        )
    if args.distribute:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
    return args.num_processes


def run_train(args):
    import keras
    import tensorflow as tf

    import bt_keras

    setup_distribution(args)
    probed = _probe_class()
    model = build_model(method=args.method, cls=probed)
    initial = initial_weights(model)
    model.set_weights(initial)
    schedule = bt_keras.WarmupCosine(1.0, warmup_steps=1, total_steps=STEPS)
    model.compile(optimizer=bt_keras.LARS(schedule, weight_decay=1e-4, eta=0.02))

    view_a, view_b = batches()
    # The global batch, with a static size: over several processes DataParallel (auto_shard_dataset)
    # rebatches it and gives each process its share.
    ds = tf.data.Dataset.from_tensor_slices((view_a, view_b)).batch(GLOBAL_BATCH, drop_remainder=True)

    losses, rates = [], []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(float(to_numpy(logs["loss"])))
            rates.append(float(to_numpy(logs["learning_rate"])))

    model.fit(ds, epochs=1, verbose=0, callbacks=[Record()])
    np.savez(
        args.out,
        losses=np.array(losses),
        rates=np.array(rates),
        shards=np.array(probed.seen).reshape(-1, 2),
        devices=np.array(len(keras.distribution.list_devices()) if keras.backend.backend() == "jax" else 1),
        **{f"w{i}": to_numpy(w) for i, w in enumerate(model.weights)},
        **{f"init{i}": w for i, w in enumerate(initial)},
    )


def run_single(args):
    """Every one-device JAX case in one process (imports and JAX's warm-up are paid once):
    ``loss.npz``, ``j1.npz`` (training) and ``extras.npz`` in the folder ``--out``."""
    folder = args.out
    os.makedirs(folder, exist_ok=True)
    run_loss(argparse.Namespace(out=os.path.join(folder, "loss.npz")))
    run_train(argparse.Namespace(**{**vars(args), "out": os.path.join(folder, "j1.npz")}))
    run_extras(argparse.Namespace(out=folder))


def run_extras(args):
    """Save/load round trip, mixed precision and the non-finite guard, on JAX."""
    os.makedirs(args.out, exist_ok=True)
    out = {}
    out.update(extras_round_trip(args.out))
    out.update(extras_mixed_precision())
    out.update(extras_nan_guard())
    np.savez(os.path.join(args.out, "extras.npz"), **out)


def extras_round_trip(folder):
    import keras
    import tensorflow as tf

    import bt_keras

    keras.utils.set_random_seed(0)
    enc = bt_keras.small_cnn(widths=(4, 8), input_shape=SHAPE)
    model = bt_keras.BarlowTwins(enc, projector_dims=(16, 16, 32), lambd=0.01, loss_method="gram")
    model.build((None, *SHAPE))
    model.compile(optimizer=bt_keras.LARS(0.5))
    view_a, view_b = batches()
    model.fit(tf.data.Dataset.from_tensor_slices((view_a, view_b)).batch(8), epochs=1, verbose=0)
    x = np.random.default_rng(2).random((6, *SHAPE), np.float32)
    model.save(os.path.join(folder, "bt.keras"))
    model.encoder.save(os.path.join(folder, "encoder.keras"))
    loaded = keras.saving.load_model(os.path.join(folder, "bt.keras"), safe_mode=True)
    enc2 = keras.saving.load_model(os.path.join(folder, "encoder.keras"), safe_mode=True)
    return {
        "rt_config": np.array([loaded.lambd, loaded.projector_dims[-1], loaded.loss_method == "gram"]),
        "rt_class": np.array(type(loaded).__name__),
        "rt_x": x,
        "rt_model": to_numpy(model.predict(x, verbose=0)),
        "rt_loaded": to_numpy(loaded.predict(x, verbose=0)),
        "rt_encoder": to_numpy(model.encoder.predict(x, verbose=0)),
        "rt_encoder_loaded": to_numpy(enc2.predict(x, verbose=0)),
        "rt_moved": np.array(max(float(np.abs(to_numpy(w)).max()) for w in model.encoder.weights)),
    }


def extras_mixed_precision():
    import keras
    import tensorflow as tf

    import bt_keras

    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model(dim=32)
        view_a, view_b = batches()
        z_a, terms = model._terms((view_a[:8], view_b[:8]), training=True)
        model.compile(optimizer=bt_keras.LARS(0.1))
        hist = model.fit(tf.data.Dataset.from_tensor_slices((view_a, view_b)).batch(8), epochs=1, verbose=0)
        return {
            "mp_z_dtype": np.array(keras.backend.standardize_dtype(z_a.dtype)),
            "mp_loss_dtypes": np.array([keras.backend.standardize_dtype(t.dtype) for t in terms]),
            "mp_kernel_dtype": np.array(keras.backend.standardize_dtype(model.projector.layers[0].kernel.dtype)),
            "mp_losses": np.array(hist.history["loss"]),
            "mp_metric_dtype": np.array(model.loss_tracker.variables[0].dtype),
        }
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def extras_nan_guard():
    import keras
    import tensorflow as tf

    import bt_keras

    model = build_model(dim=32)
    model.compile(optimizer=bt_keras.LARS(0.1))
    view_a, view_b = batches()
    good = tf.data.Dataset.from_tensor_slices((view_a[:8], view_b[:8])).batch(8)
    model.fit(good, epochs=1, verbose=0)
    before = [to_numpy(v) for v in model.variables + model.optimizer.variables]
    bad_a = view_a[8:16].copy()
    bad_a[3] = np.nan
    losses = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(float(to_numpy(logs["loss"])))

    model.fit(
        tf.data.Dataset.from_tensor_slices((bad_a, view_b[8:16])).batch(8), epochs=1, verbose=0, callbacks=[Record()]
    )
    after = [to_numpy(v) for v in model.variables + model.optimizer.variables]
    return {
        "nan_losses": np.array(losses),
        "nan_max_change": np.array(max(float(np.abs(a - b).max()) for a, b in zip(before, after))),
        "nan_all_finite": np.array(all(np.isfinite(a).all() for a in after)),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=["loss", "train", "extras", "single"])
    p.add_argument("--out", required=True)
    p.add_argument("--distribute", action="store_true", help="DataParallel over every device")
    p.add_argument("--method", default="auto")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    {"loss": run_loss, "train": run_train, "extras": run_extras, "single": run_single}[args.case](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
