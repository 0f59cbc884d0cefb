"""Trains a tiny BarlowTwins model for a few LARS steps on R logical CPU devices.

Run as a script (one strategy per process): writes per-step losses and all
weights to an .npz so tests can compare R = 1, 2, 4.

    python tests/distributed_case.py --replicas 2 --dim 64 --out /tmp/r2.npz
    python tests/distributed_case.py --replicas 2 --case r2 --case r2_gram:method=gram --out /tmp/dist

With ``--case NAME[:KEY=VALUE,...]`` (``dim``, ``method``, ``sync``), one process trains each case
in turn under its one strategy and writes ``OUT/NAME.npz``: the cases of one replica count share
the process's start-up.

With ``--multi-worker`` it is one worker of a MultiWorkerMirroredStrategy
cluster described by ``TF_CONFIG`` (``--replicas`` logical devices per worker),
and also records which examples of a ``two_view_dataset`` epoch it saw.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bt_keras.cli import _unused_imports_skipped

with _unused_imports_skipped():  # as the bt-* commands start: a third less CPU per process
    import tensorflow as tf

GLOBAL_BATCH = 16
STEPS = 3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--replicas", type=int, required=True)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--method", default="auto")
    p.add_argument("--jit", action="store_true")
    p.add_argument("--no-sync-bn", action="store_true", help="negative control: per-replica BN statistics")
    p.add_argument("--multi-worker", action="store_true")
    p.add_argument("--case", action="append", default=[], help="NAME[:dim=D,method=M,sync=0]; --out is a folder")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.replicas)

    import keras

    keras.config.disable_traceback_filtering()

    from bt_keras.distribute import make_strategy

    if args.multi_worker:
        strategy = make_strategy("multi_worker")
    else:
        strategy = make_strategy("mirrored") if args.replicas > 1 else make_strategy("cpu")
        assert strategy.num_replicas_in_sync == args.replicas
    if not args.case:
        record = train(strategy, args.dim, args.method, not args.no_sync_bn, args.jit)
        if args.multi_worker:
            record["seen"] = seen_examples(strategy)
        np.savez(args.out, **record)
        return 0
    os.makedirs(args.out, exist_ok=True)
    for case in args.case:
        name, _, spec = case.partition(":")
        opts = dict(kv.split("=") for kv in spec.split(",") if kv)
        record = train(strategy, int(opts.get("dim", 64)), opts.get("method", "auto"), opts.get("sync", "1") == "1")
        np.savez(os.path.join(args.out, f"{name}.npz"), **record)
    return 0


def train(strategy, dim, method, sync, jit=False) -> dict:
    """Trains the tiny model for STEPS steps under ``strategy``: per-step losses, initial and final weights."""
    import keras

    import bt_keras
    from bt_keras.distribute import distribute

    rng = np.random.RandomState(0)
    images = rng.rand(GLOBAL_BATCH * STEPS, 8, 8, 3).astype("float32")
    views = (images, (images * 0.8 + 0.1 * rng.rand(*images.shape)).astype("float32"))

    def dataset_fn(ctx):
        # This input pipeline's slice of every global batch, split into per-replica batches.
        chunk = GLOBAL_BATCH // ctx.num_input_pipelines
        lo = ctx.input_pipeline_id * chunk
        ds = tf.data.Dataset.from_tensor_slices(views).batch(GLOBAL_BATCH)
        ds = ds.map(lambda a, b: (a[lo : lo + chunk], b[lo : lo + chunk])).unbatch()
        return ds.batch(ctx.get_per_replica_batch_size(GLOBAL_BATCH), drop_remainder=True)

    with strategy.scope():
        encoder = bt_keras.small_cnn(widths=(4, 8), input_shape=(8, 8, 3), sync_batchnorm=sync)
        model = bt_keras.BarlowTwins(encoder, projector_dims=(32, 32, dim), loss_method=method, sync_batchnorm=sync)
        model.build((None, 8, 8, 3))
        init = np.random.RandomState(1)
        initial = [
            init.normal(0, np.sqrt(2.0 / np.prod(w.shape[:-1])), w.shape).astype("float32")
            if len(w.shape) > 1
            else w.numpy()
            for w in model.weights
        ]
        model.set_weights(initial)
        schedule = bt_keras.WarmupCosine(1.0, warmup_steps=1, total_steps=STEPS)
        model.compile(optimizer=bt_keras.LARS(schedule, weight_decay=1e-4, eta=0.02), jit_compile=jit)

    losses = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(float(logs["loss"]))

    model.fit(distribute(strategy, dataset_fn), epochs=1, verbose=0, callbacks=[Record()])
    return {
        "losses": np.array(losses),
        **{f"w{i}": w.numpy() for i, w in enumerate(model.weights)},
        **{f"init{i}": w for i, w in enumerate(initial)},
    }


def seen_examples(strategy, n=64):
    """Indices of the examples this worker reads in one two_view_dataset epoch.

    Image i is the constant value 2i + 40, so the index survives the
    (augmentation-free) resize and normalisation.
    """
    from bt_keras.augment import get_preset
    from bt_keras.data import two_view_dataset

    cfg = get_preset("none")
    images = np.broadcast_to((2 * np.arange(n) + 40).astype(np.uint8)[:, None, None, None], (n, 8, 8, 3)).copy()
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: two_view_dataset(images, batch_size=8, image_size=8, augment=cfg, input_context=ctx)
    )
    seen = []
    for view_a, _ in dist:
        for local in strategy.experimental_local_results(view_a):
            pixels = (local.numpy()[:, 0, 0, 0] * cfg.std[0] + cfg.mean[0]) * 255
            seen.extend(np.round((pixels - 40) / 2).astype(int).tolist())
    return np.array(seen)


if __name__ == "__main__":
    sys.exit(main())
