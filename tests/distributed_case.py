"""Trains a tiny BarlowTwins model for a few LARS steps on R logical CPU devices.

Run as a script (one strategy per process): writes per-step losses and all
weights to an .npz so tests can compare R = 1, 2, 4.

    python tests/distributed_case.py --replicas 2 --dim 64 --out /tmp/r2.npz
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH = 16
STEPS = 3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--replicas", type=int, required=True)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--method", default="auto")
    p.add_argument("--jit", action="store_true")
    p.add_argument("--no-sync-bn", action="store_true", help="negative control: per-replica BN statistics")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.replicas)

    import keras

    import bt_keras
    from bt_keras.distribute import distribute, make_strategy

    strategy = make_strategy("mirrored") if args.replicas > 1 else make_strategy("cpu")
    assert strategy.num_replicas_in_sync == args.replicas

    rng = np.random.RandomState(0)
    images = rng.rand(GLOBAL_BATCH * STEPS, 8, 8, 3).astype("float32")
    views = (images, (images * 0.8 + 0.1 * rng.rand(*images.shape)).astype("float32"))

    def dataset_fn(ctx):
        b = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
        return tf.data.Dataset.from_tensor_slices(views).batch(b, drop_remainder=True)

    with strategy.scope():
        sync = not args.no_sync_bn
        encoder = bt_keras.small_cnn(widths=(4, 8), input_shape=(8, 8, 3), sync_batchnorm=sync)
        model = bt_keras.BarlowTwins(encoder, projector_dims=(32, 32, args.dim), loss_method=args.method,
                                     sync_batchnorm=sync)
        model.build((None, 8, 8, 3))
        init = np.random.RandomState(1)
        initial = [
            init.normal(0, np.sqrt(2.0 / np.prod(w.shape[:-1])), w.shape).astype("float32")
            if len(w.shape) > 1 else w.numpy()
            for w in model.weights
        ]
        model.set_weights(initial)
        schedule = bt_keras.WarmupCosine(1.0, warmup_steps=1, total_steps=STEPS)
        model.compile(optimizer=bt_keras.LARS(schedule, weight_decay=1e-4, eta=0.02),
                      jit_compile=args.jit)

    losses = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(float(logs["loss"]))

    model.fit(distribute(strategy, dataset_fn), epochs=1, verbose=0, callbacks=[Record()])
    np.savez(args.out, losses=np.array(losses),
             **{f"w{i}": w.numpy() for i, w in enumerate(model.weights)},
             **{f"init{i}": w for i, w in enumerate(initial)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
