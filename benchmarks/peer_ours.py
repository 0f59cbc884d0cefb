"""The bt_keras side of ``benchmarks/peer.py`` (one JSON line on stdout per run).

    step   train-step throughput on a synthetic batch (``BarlowTwins.train_function``)
    e2e    the same steps fed by bt_keras's two-view pipeline from a JPEG folder
    knn    ``benchmarks/quality.py``'s budgeted pretraining with a CPU-second clock, then
           the encoder's features of DIR/train and DIR/test in ``features.npz``

The model, batch and optimizer are those of ``configs/cifar10_cpu.yaml`` (``small``) or
``configs/cifar10_resnet18.yaml`` (``large``), in float32 unless ``--precision`` says
otherwise. The CPU thread layout is what ``bt-train`` applies (``train.cpu_threads``),
or TensorFlow's defaults with ``--tf-threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from cpu_clock import tree_cpu_seconds  # noqa: E402

CONFIG_FILES = {"small": "cifar10_cpu.yaml", "large": "cifar10_resnet18.yaml"}


def load(args, overrides=()):
    """The config and the thread layout, applied before anything starts TensorFlow's runtime
    (``auto`` precision may time a convolution), as ``bt-train`` does."""
    from bt_keras.config import load_config
    from bt_keras.cpu_threads import apply_cpu_threads
    from bt_keras.precision import with_resolved_precision

    path = os.path.join(os.path.dirname(HERE), "configs", CONFIG_FILES[args.config])
    sets = [f"train.mixed_precision={args.precision}", f"train.seed={args.seed}"]
    if args.tf_threads:
        sets.append("train.cpu_threads=tf")
    cfg = load_config(path, sets + list(overrides))
    layout = apply_cpu_threads(cfg.train.cpu_threads, cfg.train.strategy)
    return with_resolved_precision(cfg), layout


def compiled(cfg, steps_per_epoch=390):
    import keras

    from bt_keras.training import build_model, make_optimizer

    keras.utils.set_random_seed(cfg.train.seed)
    keras.mixed_precision.set_dtype_policy(cfg.train.mixed_precision)
    try:
        model = build_model(cfg, cfg.data.image_size)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    model.compile(
        optimizer=make_optimizer(cfg.optim, cfg.train.batch_size, steps_per_epoch, cfg.train.epochs),
        jit_compile=False,
        steps_per_execution=1,
    )
    return model


def timed(model, iterator, steps, warmup, batch):
    for _ in range(warmup):
        float(model.train_function(iterator)["loss"])
    c0, w0 = tree_cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        logs = model.train_function(iterator)
    float(logs["loss"])
    return {"pairs": steps * batch, "cpu_s": tree_cpu_seconds() - c0, "wall_s": time.perf_counter() - w0}


def run_step(args):
    import numpy as np
    import tensorflow as tf

    cfg, layout = load(args)
    model = compiled(cfg)
    b, s = cfg.train.batch_size, cfg.data.image_size
    rng = np.random.default_rng(args.seed)
    views = tuple(tf.constant(rng.normal(size=(b, s, s, 3)).astype("float32")) for _ in range(2))
    model.make_train_function()
    out = timed(model, iter(tf.data.Dataset.from_tensors(views).repeat()), args.steps, args.warmup, b)
    return {**out, "threads": layout, "precision": cfg.train.mixed_precision}


def run_e2e(args):
    cfg, layout = load(args, [f"data.source=folder:{os.path.join(args.data, 'train')}", "data.cache=false"])
    model = compiled(cfg)
    model.make_train_function()
    pairs = iter(cfg.data.train_dataset(cfg.train.batch_size).repeat())
    return {**timed(model, pairs, args.steps, args.warmup, cfg.train.batch_size), "threads": layout}


def run_knn(args):
    """quality.py's pretraining under a CPU-second budget; features of train/ and test/ to ``--out``."""
    import numpy as np
    import quality

    from bt_keras import evaluation as ev

    d = args.data
    argv = ["--data", f"folder:{d}", "--skip-baselines", "--no-linear", "--supervised-minutes", "0"]
    argv += ["--curve-bank", "0", "--clock", "process", "--minutes", str(args.budget_cpu_s / 60)]
    argv += ["--set", f"train.seed={args.seed}", "--out", os.path.dirname(os.path.abspath(args.out))]
    qargs = quality.parse_args(argv)
    quality.apply_threads(qargs)
    cfg, sources = quality.load_run_config(qargs)
    import keras

    keras.utils.set_random_seed(cfg.train.seed)
    keras.mixed_precision.set_dtype_policy(cfg.train.mixed_precision)
    bench = quality.Bench(qargs, cfg, sources)
    model = quality.build_model(cfg, cfg.data.image_size)
    model.compile(optimizer=quality.make_optimizer(cfg, bench.peak), jit_compile=False)
    info = bench.pretrain(model, bench.pairs, qargs.minutes, "Barlow Twins")
    x_tr, y_tr = ev.extract_features(model.encoder, bench.bank_ds)
    x_te, y_te = ev.extract_features(model.encoder, bench.test_ds)
    np.savez(args.out, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return {
        "steps": info["steps"],
        "pairs": info["examples"],
        "cpu_s": info["train_seconds"],
        "wall_s": info["wall_seconds"],
        "precision": cfg.train.mixed_precision,
        "features": args.out,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["step", "e2e", "knn"])
    p.add_argument("--config", choices=sorted(CONFIG_FILES), default="small")
    p.add_argument("--precision", default="float32", help="train.mixed_precision (float32, auto, mixed_bfloat16)")
    p.add_argument("--tf-threads", action="store_true", help="TensorFlow's default thread pools")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data")
    p.add_argument("--budget-cpu-s", type=float, default=600.0)
    p.add_argument("--out")
    args = p.parse_args(argv)
    result = {"step": run_step, "e2e": run_e2e, "knn": run_knn}[args.mode](args)
    import tensorflow as tf

    result.update(side="bt_keras", tensorflow=tf.__version__)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
