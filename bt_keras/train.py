"""``bt-train``: pretrain a Barlow Twins encoder from a YAML config.

    bt-train --config configs/demo.yaml [--set train.epochs=5 ...] [--run-dir DIR]

A run directory holds the resolved ``config.yaml``, ``checkpoints/`` (resumed
automatically when the same run directory is used again), TensorBoard
``logs/``, ``history.csv``, and at the end ``encoder.keras`` with its
``preprocessing.json`` contract (what ``bt-eval`` and ``bt-export`` read).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from bt_keras.cli import ArgumentParser, UserError, run_command


class TrainingStopped(RuntimeError):
    """Training could not go on (non-finite loss, a lost worker); the last checkpoint is intact."""


_CLUSTER_ERRORS = ("UnavailableError", "AbortedError", "DeadlineExceededError", "CancelledError")


def _cluster_failure(e: Exception) -> str:
    """One line out of a collective-op failure: which tasks were lost."""
    lines = [ln.strip().rstrip(":") for ln in str(e).splitlines() if "/job:" in ln and "device" not in ln]
    return " ".join(lines[:2]) or str(e).strip().splitlines()[0][:200]


def make_optimizer(cfg, global_batch: int, steps_per_epoch: int, epochs: int):
    """The recipe's optimiser: lr × batch/256, warmup then cosine, per step."""
    import keras

    from bt_keras.optimizers import LARS, WarmupCosine

    scale = global_batch / 256
    schedule = WarmupCosine(
        base_learning_rate=cfg.lr_weights * scale,
        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
        total_steps=max(epochs * steps_per_epoch, 1),
        end_factor=cfg.end_factor,
    )
    if cfg.name == "lars":
        return LARS(schedule, weight_decay=cfg.weight_decay, momentum=cfg.momentum, eta=cfg.eta,
                    rank1_lr_multiplier=cfg.lr_biases / cfg.lr_weights)
    return keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)


def build_model(cfg, image_size: int):
    """Encoder + BarlowTwins from the model config (call inside the strategy scope)."""
    from bt_keras.encoders import build_encoder
    from bt_keras.model import BarlowTwins

    kwargs = {"sync_batchnorm": cfg.model.sync_batchnorm, "fused_batchnorm": cfg.model.fused_batchnorm}
    if cfg.model.encoder == "small_cnn":
        kwargs["widths"] = tuple(cfg.model.width * m for m in (1, 2, 4, 8))
    else:
        kwargs.update(width=cfg.model.width, zero_init_residual=cfg.model.zero_init_residual)
    encoder = build_encoder(cfg.model.encoder, input_shape=(image_size, image_size, 3), **kwargs)
    model = BarlowTwins(encoder, projector_dims=cfg.model.projector_dims, lambd=cfg.model.lambd,
                        loss_method=cfg.model.loss_method, sync_batchnorm=cfg.model.sync_batchnorm,
                        fused_batchnorm=cfg.model.fused_batchnorm)
    model.build((None, image_size, image_size, 3))
    return model


def _jit_for(strategy, requested):
    import tensorflow as tf

    if requested is not None:
        return requested
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    # CPU: XLA convolutions measured 0.6× oneDNN's; GPU: let Keras decide.
    return "auto" if tf.config.list_logical_devices("GPU") else False


def contract_for(cfg):
    from bt_keras.preprocess import PreprocessingContract

    aug = cfg.data.augment.resolve()
    return PreprocessingContract(image_size=cfg.data.image_size, mean=tuple(aug.mean), std=tuple(aug.std),
                                 crop_fraction=cfg.data.crop_fraction)


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def _atomic_write_text(path: str, text: str) -> None:
    import tensorflow as tf

    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def save_encoder(encoder, run_dir: str, contract) -> str:
    """Writes ``encoder.keras`` (atomically) and ``preprocessing.json``."""
    import tempfile

    import tensorflow as tf

    path = os.path.join(run_dir, "encoder.keras")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "encoder.keras")
        encoder.save(local)
        tf.io.gfile.copy(local, path + ".tmp", overwrite=True)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    _atomic_write_text(os.path.join(run_dir, "preprocessing.json"), contract.to_json())
    return path


def evaluate_knn(encoder, cfg, contract) -> dict:
    """kNN top-1/top-5 of a frozen encoder on ``eval.train_source`` → ``eval.test_source``."""
    from bt_keras.data import eval_dataset
    from bt_keras.evaluation import extract_features, knn_accuracy

    def features(source):
        ds = eval_dataset(source, batch_size=cfg.eval.batch_size, image_size=contract.image_size,
                          mean=contract.mean, std=contract.std, crop_fraction=contract.crop_fraction,
                          data_dir=cfg.data.data_dir)
        return extract_features(encoder, ds)

    x_train, y_train = features(cfg.eval.train_source)
    x_test, y_test = features(cfg.eval.test_source)
    return knn_accuracy(x_train, y_train, x_test, y_test, k=cfg.eval.k, temperature=cfg.eval.temperature)


def train(cfg, run_dir: str | None = None) -> dict:
    """Trains per ``cfg``; returns a summary dict (also written to ``summary.json``).

    Resumes from ``RUN/checkpoints`` when present. Raises ``UserError`` for bad
    input and ``TrainingStopped`` when the loss stops being finite or a worker
    is lost.
    """
    import keras
    import tensorflow as tf

    from bt_keras.callbacks import monitor_callbacks
    from bt_keras.checkpointing import TrainingGuard, checkpoint_path, restore_checkpoint
    from bt_keras.config import config_to_yaml
    from bt_keras.data import count_examples, two_view_dataset
    from bt_keras.distribute import distribute, make_strategy, per_replica_batch_size

    run_dir = run_dir or cfg.train.run_dir
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_dir=run_dir))
    t = cfg.train
    strategy = make_strategy(t.strategy, t.tpu, t.zone, t.project)  # First: MWMS needs a fresh runtime.
    keras.utils.set_random_seed(t.seed)
    keras.mixed_precision.set_dtype_policy(t.mixed_precision)
    per_replica_batch_size(t.batch_size, strategy)
    chief = _is_chief(strategy)

    tf.io.gfile.makedirs(run_dir)
    if chief:
        _atomic_write_text(os.path.join(run_dir, "config.yaml"), config_to_yaml(cfg))
    num_examples = count_examples(cfg.data.source, data_dir=cfg.data.data_dir, cache=cfg.data.cache,
                                  validate=cfg.data.validate)
    steps_per_epoch = num_examples // t.batch_size
    if steps_per_epoch < 1:
        raise UserError(f"data.source {cfg.data.source!r} has {num_examples} usable images, "
                        f"fewer than one global batch ({t.batch_size})")

    d = cfg.data
    skipped = os.path.join(run_dir, "skipped_files.tsv") if chief else None

    def stream(start_epoch: int, skip_steps: int = 0):
        """Endless view pairs from epoch ``start_epoch``, step ``skip_steps`` on (fit's
        steps_per_epoch marks the epochs). Seeded by (seed, start_epoch), so a resumed
        run is reproducible; it is not bit-identical to an uninterrupted one."""
        def dataset_fn(ctx):
            local_replicas = strategy.num_replicas_in_sync // ctx.num_input_pipelines
            ds = two_view_dataset(
                d.source, batch_size=t.batch_size, image_size=d.image_size, augment=d.augment,
                seed=d.seed + 1_000_033 * start_epoch, data_dir=d.data_dir, input_context=ctx,
                skipped_path=skipped if start_epoch == 0 and not skip_steps else None,
                shuffle_buffer=d.shuffle_buffer, cache=d.cache, cache_max_mb=d.cache_max_mb,
                validate=d.validate, deterministic=d.deterministic).repeat()
            return ds.skip(skip_steps * local_replicas) if skip_steps else ds

        return distribute(strategy, dataset_fn)

    with strategy.scope():
        model = build_model(cfg, d.image_size)
        model.compile(optimizer=make_optimizer(cfg.optim, t.batch_size, steps_per_epoch, t.epochs),
                      jit_compile=_jit_for(strategy, t.jit_compile), steps_per_execution=t.steps_per_execution)
    ckpt = checkpoint_path(run_dir)
    start_step = restore_checkpoint(model, ckpt)
    initial_epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
    if start_step:
        print(f"bt-train: resuming from step {start_step} (epoch {initial_epoch + 1}) of {ckpt}", flush=True)
    # (dataset, first epoch, steps per epoch) for each fit call: first the rest of an
    # interrupted epoch, so epochs, schedule and checkpoints keep their step numbers.
    phases = []
    if step_in_epoch and initial_epoch < t.epochs:
        phases.append((stream(initial_epoch, step_in_epoch), initial_epoch, initial_epoch + 1,
                       steps_per_epoch - step_in_epoch))
        initial_epoch += 1
    if initial_epoch < t.epochs:
        phases.append((stream(initial_epoch), initial_epoch, t.epochs, steps_per_epoch))

    guard = TrainingGuard(ckpt, every_steps=t.checkpoint_every_steps, write=chief)
    log_dir = os.path.join(run_dir, "logs") if chief else os.path.join(run_dir, "logs", f"worker-tmp-{os.getpid()}")
    callbacks = [
        guard,
        keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv") if chief else os.devnull,
                                  append=True),
    ]
    # After CSVLogger, so the kNN values stay out of history.csv's fixed columns (they go to knn.csv).
    if phases:
        callbacks += monitor_callbacks(cfg, run_dir, dataset=phases[0][0], strategy=strategy, chief=chief,
                                       contract=contract_for(cfg))
    started = time.time()
    try:
        for phase_data, first_epoch, end_epoch, steps in phases:
            model.fit(phase_data, epochs=end_epoch, initial_epoch=first_epoch, steps_per_epoch=steps,
                      callbacks=callbacks, verbose=t.verbose)
            if model.stop_training or guard.preempted or guard.nan_step is not None:
                break
    except tf.errors.OpError as e:
        if type(e).__name__ not in _CLUSTER_ERRORS or strategy.num_replicas_in_sync == 1:
            raise
        raise TrainingStopped(f"lost contact with another worker ({_cluster_failure(e)}); restart all workers "
                              f"with the same run directory to resume from the last checkpoint {ckpt}") from None
    if guard.nan_step is not None:
        raise TrainingStopped(f"loss is not finite at step {guard.nan_step}; stopped. The last good checkpoint "
                              f"is {ckpt}: lower the learning rate (optim.lr_weights) and rerun to resume")
    step = int(model.optimizer.iterations.numpy())
    summary = {"steps": step, "epochs_done": step // steps_per_epoch, "seconds": round(time.time() - started, 1),
               "preempted": guard.preempted, "run_dir": run_dir}
    if guard.preempted:
        print(f"bt-train: SIGTERM received: checkpoint written at step {step}; rerun to resume", flush=True)
        return summary

    contract = contract_for(cfg)
    encoder_path = save_encoder(model.encoder, run_dir, contract) if chief else None
    summary["encoder"] = encoder_path
    if cfg.eval.train_source and cfg.eval.test_source:
        summary["knn_trained"] = evaluate_knn(model.encoder, cfg, contract)
        if cfg.eval.compare_random_init:
            keras.utils.set_random_seed(t.seed)
            with strategy.scope():
                random_model = build_model(cfg, d.image_size)
            summary["knn_random_init"] = evaluate_knn(random_model.encoder, cfg, contract)
    if chief:
        _atomic_write_text(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _print_summary(summary: dict) -> None:
    print(f"bt-train: {summary['steps']} steps in {summary['seconds']} s; encoder: {summary.get('encoder')}")
    if "knn_trained" in summary:
        rows = [("trained encoder", summary["knn_trained"])]
        if "knn_random_init" in summary:
            rows.append(("random init (same arch)", summary["knn_random_init"]))
        print(f"{'kNN (held-out split)':<26}{'top-1':>8}{'top-5':>8}")
        for name, acc in rows:
            print(f"{name:<26}{acc['top1']:>8.3f}{acc['top5']:>8.3f}")


def _main(argv):
    parser = ArgumentParser(prog="bt-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--run-dir", help="run directory (default: train.run_dir from the config)")
    args = parser.parse_args(argv)

    from bt_keras.config import load_config

    cfg = load_config(args.config, args.set)
    try:
        summary = train(cfg, args.run_dir)
    except TrainingStopped as e:
        sys.stderr.write(f"bt-train: error: {e}\n")
        return 1
    _print_summary(summary)
    return 0


def main(argv=None):
    sys.exit(run_command("bt-train", _main, argv))


if __name__ == "__main__":
    main()
