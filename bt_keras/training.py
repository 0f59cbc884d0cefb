"""Training from a config: the model, the optimiser, and a resumable ``fit`` loop.

:func:`train` is what ``bt-train`` runs; it reads as its steps: plan the run
(strategy, data size, batch per replica, checkpoint), build and compile the
model, restore the checkpoint, fit the remaining epochs, then write the
encoder with its preprocessing contract and evaluate it.

A run directory holds the resolved ``config.yaml``, ``checkpoints/`` (resumed
automatically when the same run directory is used again), TensorBoard
``logs/``, ``history.csv``, and at the end ``encoder.keras`` with its
``preprocessing.json`` contract (what ``bt-eval`` and ``bt-export`` read).
While a run is going, ``.lock`` names its host and PID
(:class:`~bt_keras.run_lock.RunDirectoryLock`): a second run on the same
directory is refused. ``config.yaml`` is rewritten only when training really
starts, so a rerun that fails (a bad setting, a checkpoint of another model)
leaves a finished run's record as it was.

Examples:

>>> from bt_keras.config import config_from_dict
>>> from bt_keras.training import build_model  # defined in bt_keras.recipe
>>> cfg = config_from_dict({"model": {"encoder": "small_cnn", "width": 4, "projector_dims": [16, 16]}})
>>> build_model(cfg, image_size=16).encoder.output.shape
(None, 32)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from bt_keras.errors import TrainingStopped, UserError
from bt_keras.io import atomic_write
from bt_keras.recipe import build_model, freeze_layers, jit_for, make_optimizer  # noqa: F401 (public here too)
from bt_keras.run_plan import RunPlan, plan_run

logger = logging.getLogger("bt_keras")

_CLUSTER_ERRORS = ("UnavailableError", "AbortedError", "DeadlineExceededError", "CancelledError")


def save_encoder(encoder, run_dir: str, contract) -> str:
    """Writes ``encoder.keras`` (float32, plain Keras layers) and ``preprocessing.json`` into ``run_dir``, atomically.

    The encoder is saved as :func:`bt_keras.saving.portable_encoder`: loadable by
    ``keras.saving.load_model`` without ``bt_keras``, float32 whatever the training precision.
    """
    from bt_keras.saving import save_portable_encoder

    path = save_portable_encoder(encoder, os.path.join(run_dir, "encoder.keras"))
    atomic_write(os.path.join(run_dir, "preprocessing.json"), contract.to_json())
    return path


def evaluate_knn(encoder, cfg) -> dict:
    """kNN top-1/top-5 of a frozen encoder on ``eval.train_source`` → ``eval.test_source``."""
    from bt_keras.evaluation import extract_features, knn_accuracy

    def features(source):
        return extract_features(encoder, cfg.data.eval_dataset(cfg.eval.batch_size, source=source))

    x_train, y_train = features(cfg.eval.train_source)
    x_test, y_test = features(cfg.eval.test_source)
    return knn_accuracy(x_train, y_train, x_test, y_test, k=cfg.eval.k, temperature=cfg.eval.temperature)


def _view_pairs(plan: RunPlan, start_epoch: int, skip_steps: int = 0):
    """Endless distributed view pairs from epoch ``start_epoch``, step ``skip_steps`` on.

    Seeded by (seed, start_epoch), so a resumed run is reproducible; it is not
    bit-identical to an uninterrupted one. ``fit``'s ``steps_per_epoch`` marks
    the epochs.
    """
    from bt_keras.distribute import distribute

    first = start_epoch == 0 and not skip_steps
    skipped = os.path.join(plan.run_dir, "skipped_files.tsv") if plan.chief and first else None

    def dataset_fn(ctx):
        ds = plan.cfg.data.train_dataset(
            plan.cfg.train.batch_size,
            input_context=ctx,
            skipped_path=skipped,
            seed_offset=1_000_033 * start_epoch,
            repeat=True,
        )
        local_replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines  # batches per step here
        return ds.skip(skip_steps * local_replicas) if skip_steps else ds

    return distribute(plan.strategy, dataset_fn)


def _phases(plan: RunPlan, start_step: int) -> list:
    """``(dataset, first epoch, end epoch, steps per epoch)`` for each ``fit`` call.

    First the rest of an interrupted epoch, so epochs, the schedule and the
    checkpoints keep their step numbers; then the remaining whole epochs.
    """
    epochs, steps = plan.cfg.train.epochs, plan.steps_per_epoch
    epoch, step_in_epoch = divmod(start_step, steps)
    phases = []
    if step_in_epoch and epoch < epochs:
        phases.append((_view_pairs(plan, epoch, step_in_epoch), epoch, epoch + 1, steps - step_in_epoch))
        epoch += 1
    if epoch < epochs:
        phases.append((_view_pairs(plan, epoch), epoch, epochs, steps))
    return phases


def _callbacks(plan: RunPlan, guard, first_dataset) -> list:
    import keras

    from bt_keras.callbacks import HistoryCSV, monitor_callbacks

    run_dir = plan.run_dir
    log_dir = (
        os.path.join(run_dir, "logs") if plan.chief else os.path.join(run_dir, "logs", f"worker-tmp-{os.getpid()}")
    )
    history = os.path.join(run_dir, "history.csv") if plan.chief else os.devnull
    callbacks = [
        guard,
        keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"),
        HistoryCSV(history, append=True),
    ]
    # After HistoryCSV, so the kNN values stay out of history.csv's fixed columns (they go to knn.csv).
    if first_dataset is not None:
        callbacks += monitor_callbacks(
            plan.cfg,
            run_dir,
            dataset=first_dataset,
            strategy=plan.strategy,
            chief=plan.chief,
            contract=plan.cfg.data.contract(),
        )
    return callbacks


def _fit(plan: RunPlan, model, phases: list, callbacks: list, guard) -> None:
    """Runs ``fit`` per phase; a lost worker or a non-finite loss becomes ``TrainingStopped``."""
    import keras
    import tensorflow as tf

    class EndOfPhase(keras.callbacks.Callback):
        """Ends a ``fit`` at ``end_epoch`` while Keras counts epochs out of the run's total (so a
        resumed run's progress reads "Epoch 2/3", then "Epoch 3/3")."""

        def __init__(self, end_epoch):
            super().__init__()
            self.end_epoch, self.ended = end_epoch, False

        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 >= self.end_epoch and not self.model.stop_training:
                self.model.stop_training = self.ended = True

    try:
        for data, first_epoch, end_epoch, steps in phases:
            end_of_phase = EndOfPhase(end_epoch)
            model.fit(
                data,
                epochs=plan.cfg.train.epochs,
                initial_epoch=first_epoch,
                steps_per_epoch=steps,
                callbacks=[*callbacks, end_of_phase],
                verbose=_fit_verbosity(plan.cfg.train.verbose),
                shuffle=False,  # the pipeline shuffles; Keras would warn that it ignores True
            )
            if end_of_phase.ended:
                model.stop_training = False
            elif model.stop_training or guard.preempted or guard.nan_step is not None:
                break
    except tf.errors.OpError as e:
        if type(e).__name__ not in _CLUSTER_ERRORS or plan.strategy.num_replicas_in_sync == 1:
            raise
        raise TrainingStopped(
            f"lost contact with another worker ({_cluster_failure(e)}); restart all workers "
            f"with the same run directory to resume from the last checkpoint {plan.checkpoint}"
        ) from None
    if guard.nan_step is not None:
        what = "loss is not finite at" if guard.nan_in == "loss" else "weights are not finite after"
        raise TrainingStopped(
            f"{what} step {guard.nan_step}; stopped. The last good checkpoint "
            f"is {plan.checkpoint}: lower the learning rate (optim.lr_weights) and rerun to resume"
        )


def _fit_verbosity(configured):
    """``train.verbose``, or by default a progress bar on a terminal and one line per epoch elsewhere."""
    if configured is not None:
        return configured
    return 1 if sys.stdout.isatty() else 2


def _cluster_failure(e: Exception) -> str:
    """One line out of a collective-op failure: which tasks were lost."""
    lines = [ln.strip().rstrip(":") for ln in str(e).splitlines() if "/job:" in ln and "device" not in ln]
    return " ".join(lines[:2]) or str(e).strip().splitlines()[0][:200]


def _finish(plan: RunPlan, model, summary: dict) -> dict:
    """Writes the encoder and its contract (chief), evaluates it, writes ``summary.json``."""
    import keras

    cfg = plan.cfg
    if plan.chief:
        summary["encoder"] = save_encoder(model.encoder, plan.run_dir, cfg.data.contract())
    else:
        summary["encoder"] = None
    summary["chief"] = plan.chief
    if plan.chief and cfg.eval.train_source and cfg.eval.test_source:
        summary["knn_trained"] = evaluate_knn(model.encoder, cfg)
        if cfg.eval.compare_random_init:
            keras.utils.set_random_seed(cfg.train.seed)
            with plan.strategy.scope():
                random_model = build_model(cfg, cfg.data.image_size, init_weights="none")
            summary["knn_random_init"] = evaluate_knn(random_model.encoder, cfg)
    if plan.chief:
        if cfg.monitor.report and "knn_trained" in summary:
            # Redrawn with the final kNN (trained vs random init) beside the loss; without a final
            # kNN, the picture the report callback drew when fit ended is already this one.
            from bt_keras.callbacks.report import write_run_report

            write_run_report(plan.run_dir, summary, lambd=cfg.model.lambd)
        atomic_write(os.path.join(plan.run_dir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _completed_summary(plan: RunPlan, start_step: int) -> dict | None:
    """The earlier summary when the run has nothing left to do; None otherwise.

    A run whose checkpoint is at the last step but that never wrote its
    summary (stopped while evaluating) is finished again instead. A finished
    run asked for with another ``data.source`` is an error, not the old
    run's summary reported as if it were the new one's.
    """
    import tensorflow as tf
    import yaml

    path = os.path.join(plan.run_dir, "summary.json")
    if start_step < plan.total_steps or not tf.io.gfile.exists(path):
        return None
    recorded = os.path.join(plan.run_dir, "config.yaml")
    if tf.io.gfile.exists(recorded):
        with tf.io.gfile.GFile(recorded) as f:
            trained_on = ((yaml.safe_load(f) or {}).get("data") or {}).get("source")
        if trained_on is not None and trained_on != plan.cfg.data.source:
            raise UserError(
                f"{plan.run_dir} is a finished run trained on data.source {trained_on!r}, not "
                f"{plan.cfg.data.source!r}: pass another --run-dir to train on it"
            )
    with tf.io.gfile.GFile(path) as f:
        summary = json.load(f)
    summary["already_complete"] = True
    return summary


def train(cfg, run_dir: str | None = None, callbacks=(), learning_rate: float | None = None) -> dict:
    """Trains per ``cfg``; returns a summary dict (also written to ``summary.json``).

    Resumes from ``RUN/checkpoints`` when present.

    Args:
        cfg: a ``Config`` (``bt_keras.config.load_config``).
        run_dir: the run directory; default ``train.run_dir``.
        callbacks: extra Keras callbacks, after the run's own (e.g. a
            :class:`~bt_keras.callbacks.TimeBudget` that stops the run early;
            the encoder and evaluation are written as at the last epoch).
        learning_rate: a constant rate instead of the config's schedule (set by a ``TimeBudget``).

    Raises:
        UserError: bad input (data, config, strategy), as one line.
        TrainingStopped: the loss stopped being finite, or a worker was lost;
            the last checkpoint is intact.
    """
    plan = plan_run(cfg, run_dir)
    try:
        return _train(plan, callbacks, learning_rate)
    finally:
        plan.release()


def _train(plan: RunPlan, callbacks=(), learning_rate=None) -> dict:
    from bt_keras.backbones import describe_init
    from bt_keras.checkpointing import TrainingGuard, restore_checkpoint, state_fingerprint
    from bt_keras.config import config_to_yaml

    t = plan.cfg.train
    with plan.strategy.scope():
        model = build_model(plan.cfg, plan.cfg.data.image_size)
        model.compile(
            optimizer=make_optimizer(plan.cfg.optim, t.batch_size, plan.steps_per_epoch, t.epochs, learning_rate),
            jit_compile=jit_for(plan.strategy, t.jit_compile),
            steps_per_execution=t.steps_per_execution,
        )
    start_step = restore_checkpoint(model, plan.checkpoint, plan.state_settings())
    for line in plan.describe(start_step):
        logger.info(line)
    done = _completed_summary(plan, start_step)
    if done is not None:
        return done
    phases = _phases(plan, start_step)
    fingerprint = state_fingerprint(model, plan.state_settings())
    guard = TrainingGuard(
        plan.checkpoint, t.checkpoint_every_steps, write=plan.chief, fingerprint=fingerprint, exit_inside_step=True
    )
    run_callbacks = _callbacks(plan, guard, phases[0][0] if phases else None) + list(callbacks)
    if plan.chief:  # the run really starts now: a rerun that failed above left the old record alone
        atomic_write(os.path.join(plan.run_dir, "config.yaml"), config_to_yaml(plan.cfg))
    started = time.time()
    _fit(plan, model, phases, run_callbacks, guard)
    step = int(model.optimizer.iterations.numpy())
    summary = {
        "steps": step,
        "epochs_done": step // plan.steps_per_epoch,
        "seconds": round(time.time() - started, 1),
        "preempted": guard.preempted,
        "signal": guard.signal_name,
        "run_dir": plan.run_dir,
        "init_weights": describe_init(plan.cfg.model),
        "mixed_precision": plan.precision[0],
    }
    if guard.preempted:
        written = "checkpoint written" if plan.chief else "the chief wrote the checkpoint"
        logger.info(f"{guard.signal_name} received: {written} at step {step}; rerun to resume")
        return summary
    return _finish(plan, model, summary)
