"""Atomic training checkpoints, resume, SIGTERM (preemption) and NaN handling.

A checkpoint is one file, ``checkpoints/latest.weights.h5``, holding the model
*and* optimizer state (including ``optimizer.iterations``, hence the schedule
step and the position in the data). It is written to a temporary name and
renamed over the previous one, so a kill at any moment leaves either the old
or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import tempfile

import keras
import tensorflow as tf

from bt_keras.io import atomic_path, is_remote

CHECKPOINT_NAME = "latest.weights.h5"


def checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints", CHECKPOINT_NAME)


def save_checkpoint(model: keras.Model, path: str) -> None:
    """Writes model + optimizer state to ``path`` atomically (local or gs://)."""
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp, overwrite=True)


def restore_checkpoint(model: keras.Model, path: str) -> int:
    """Loads ``path`` into a compiled model; returns the restored step (0 if none)."""
    if not tf.io.gfile.exists(path):
        return 0
    # Optimizer slots are created here, so under a strategy they must be the strategy's variables.
    strategy = getattr(model, "distribute_strategy", None)  # TensorFlow only; JAX has none
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model.optimizer.build(model.trainable_variables)
        if is_remote(path):
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, CHECKPOINT_NAME)
                tf.io.gfile.copy(path, local)
                model.load_weights(local)
        else:
            model.load_weights(path)
    return int(model.optimizer.iterations.numpy())


class TrainingGuard(keras.callbacks.Callback):
    """Checkpoints every N steps and each epoch; saves and stops on SIGTERM;
    stops on a non-finite loss *without* saving, so the last checkpoint stays good.

    After ``fit`` returns, ``nan_step`` is the first step whose loss was not
    finite (None if none) and ``preempted`` tells whether SIGTERM arrived.
    """

    def __init__(self, path: str, every_steps: int = 0, write: bool = True):
        super().__init__()
        self.path = path
        self.every_steps = every_steps
        self.write = write
        self.nan_step = None
        self.preempted = False
        self._previous_handler = None

    def _on_sigterm(self, signum, frame):
        self.preempted = True

    def on_train_begin(self, logs=None):
        if os.name == "posix" and sys.platform != "win32":
            try:
                self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            except ValueError:  # Not the main thread: leave signals alone.
                self._previous_handler = None

    def on_train_end(self, logs=None):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _save(self):
        if self.write:
            save_checkpoint(self.model, self.path)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True
            return
        if self.preempted:
            self._save()
            self.model.stop_training = True
            return
        step = int(self.model.optimizer.iterations.numpy())
        if self.every_steps and step % self.every_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_step is None and not self.preempted:
            self._save()
