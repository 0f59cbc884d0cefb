"""Atomic training checkpoints, resume, SIGTERM/SIGINT (preemption, Ctrl-C) and NaN handling.

A checkpoint is one file, ``checkpoints/latest.weights.h5``, holding the model
*and* optimizer state (including ``optimizer.iterations``, hence the schedule
step and the position in the data). It is written to a temporary name and
renamed over the previous one, so a kill at any moment leaves either the old
or the new checkpoint, never a torn one.

The file also carries a small fingerprint of what wrote it (an HDF5 attribute
written before the rename, so it is atomic with the weights): the settings
that shape the state (``model.encoder``, ``model.width``,
``model.projector_dims``, ``optim.name``) and the shapes of every model and
optimizer variable. A run resumed with other settings is refused in one line
naming what differs, instead of Keras skipping the optimizer state with a
warning and training on from step 0 over the old checkpoint.

Examples:

>>> fingerprint_difference({"optim.name": "lars"}, {"optim.name": "adamw"})
"optim.name is 'lars' in the checkpoint, 'adamw' now"
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import signal
import sys
import tempfile
import threading
import warnings

import keras
import numpy as np
import tensorflow as tf

from bt_keras.errors import CheckpointUnreadable, TrainingStopped, UserError, one_line, short_repr
from bt_keras.io import atomic_path, atomic_write, is_remote

CHECKPOINT_NAME = "latest.weights.h5"
FINGERPRINT_ATTR = "bt_keras_fingerprint"
_VARIABLES_KEY = "variables"
_BACKEND_KEY = "keras backend"


def checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints", CHECKPOINT_NAME)


def state_fingerprint(model: keras.Model, settings: dict | None = None) -> dict:
    """What a checkpoint of ``model`` must match to be resumed: ``settings`` plus a hash of the variable shapes.

    Args:
        model: a compiled model whose optimizer is built.
        settings: the config values that shape the state (``{"optim.name": "lars", ...}``).
    """
    # Shapes and dtypes in order, not names: Keras numbers layer names per process ("dense_3").
    shapes = [(tuple(v.shape), str(v.dtype)) for v in [*model.weights, *model.optimizer.variables]]
    digest = hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]
    # The backend first: a JAX checkpoint resumed on TensorFlow differs in its optimizer variables too,
    # and "the variables differ" would not say why.
    return {
        _BACKEND_KEY: keras.backend.backend(),
        **(settings or {}),
        _VARIABLES_KEY: f"{len(shapes)} variables, shapes {digest}",
    }


def fingerprint_difference(recorded: dict, current: dict) -> str | None:
    """What differs between a checkpoint's fingerprint and the current one, in words; None if nothing.

    Args:
        recorded: the checkpoint's fingerprint.
        current: this run's.
    """
    for key in [k for k in current if k != _VARIABLES_KEY] + [_VARIABLES_KEY]:
        if key in recorded and key in current and recorded[key] != current[key]:
            before, now = short_repr(recorded[key]), short_repr(current[key])
            if key == _VARIABLES_KEY:
                return f"the model and optimizer variables differ ({before} in the checkpoint, {now} now)"
            if key == _BACKEND_KEY:
                return f"it was written on the {before} backend, this run is on {now} (train.backend / KERAS_BACKEND)"
            return f"{key} is {before} in the checkpoint, {now} now"
    return None


def _read_fingerprint(local_path: str) -> dict | None:
    import h5py

    with h5py.File(local_path, "r") as f:
        text = f.attrs.get(FINGERPRINT_ATTR)
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    recorded = json.loads(text) if isinstance(text, str) else None
    if not isinstance(recorded, dict):
        raise ValueError(f"its {FINGERPRINT_ATTR!r} attribute is not a JSON object: {short_repr(str(text), 60)}")
    return recorded


def save_checkpoint(model: keras.Model, path: str, fingerprint: dict | None = None) -> None:
    """Writes model + optimizer state to ``path`` atomically (local or gs://), with its fingerprint.

    Args:
        model: the compiled model.
        path: the checkpoint file.
        fingerprint: :func:`state_fingerprint` of the run (None: none recorded).
    """
    payload = _weights_in_memory(model, fingerprint)
    if payload is not None:
        atomic_write(path, payload)
        return
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp, overwrite=True)
        if fingerprint is not None:
            import h5py

            with h5py.File(tmp, "a") as f:
                f.attrs[FINGERPRINT_ATTR] = json.dumps(fingerprint, sort_keys=True)


def _weights_in_memory(model: keras.Model, fingerprint: dict | None) -> bytes | None:
    """The ``.weights.h5`` bytes ``model.save_weights`` would write, built in memory; None if Keras cannot.

    HDF5 writing straight to a file that hits a full disk keeps retrying its
    writes when the file is collected and can crash the process; built in
    memory, the bytes go to disk through a plain write, whose failure is one
    ``OSError``. Uses the same Keras routine as ``save_weights``
    (``saving_lib._save_state`` into an ``H5IOStore``), so the file is the same.
    """
    try:
        from keras.src.saving import saving_lib

        buffer = io.BytesIO()
        store = saving_lib.H5IOStore(buffer, mode="w")
    except (ImportError, AttributeError, TypeError, ValueError):  # another Keras: write through save_weights
        return None
    try:
        saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
        if fingerprint is not None:
            store.h5_file.attrs[FINGERPRINT_ATTR] = json.dumps(fingerprint, sort_keys=True)
    finally:
        store.close()
    return buffer.getvalue()


def restore_checkpoint(model: keras.Model, path: str, settings: dict | None = None) -> int:
    """Loads ``path`` into a compiled model; returns the restored step (0 if none).

    Args:
        model: the compiled model.
        path: the checkpoint file (local or gs://).
        settings: the config values recorded in the fingerprint (:func:`state_fingerprint`).

    Raises:
        UserError: the checkpoint was written by a different model or optimizer
            (the message says what differs and how to start fresh).
        CheckpointUnreadable: the file is damaged (truncated, not HDF5); it is left as it is.
    """
    # Optimizer slots are created here, so under a strategy they must be the strategy's variables;
    # built even without a checkpoint, so that the fingerprint of a new run lists them.
    strategy = getattr(model, "distribute_strategy", None)  # TensorFlow only; JAX has none
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model.optimizer.build(model.trainable_variables)
        if not tf.io.gfile.exists(path):
            return 0
        with contextlib.ExitStack() as stack:
            local = path
            if is_remote(path):
                local = os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), CHECKPOINT_NAME)
                tf.io.gfile.copy(path, local)
            from bt_keras.saving import check_h5_sizes

            try:
                check_h5_sizes(local, "the file", os.path.getsize(local))
            except UserError as e:  # a damaged (or hostile) file, as a truncated one: exit 1, left as it is
                raise CheckpointUnreadable(_unreadable(path, e)) from None
            _check_fingerprint(model, local, path, settings)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    model.load_weights(local)
            except Exception as e:  # noqa: BLE001 - Keras and h5py raise ValueError, OSError, KeyError...
                raise CheckpointUnreadable(_unreadable(path, e)) from None
    # A checkpoint without a fingerprint (older bt_keras) of another optimizer: Keras only warns and
    # keeps the fresh optimizer state, which would restart the schedule at step 0 over the checkpoint.
    skipped = [str(w.message) for w in caught if "Skipping variable loading for optimizer" in str(w.message)]
    if skipped:
        raise UserError(
            f"cannot resume from {path}: it holds another optimizer's state ({one_line(Exception(skipped[0]), 160)}); "
            "use the checkpoint's optim.name to resume it, or start fresh with another --run-dir"
        )
    return int(model.optimizer.iterations.numpy())


def _unreadable(path: str, e: BaseException) -> str:
    return (
        f"checkpoint {path} cannot be read ({one_line(e, 120)}); it was left as it is: move it away "
        "to start the run from scratch, or use another --run-dir"
    )


def _check_fingerprint(model, local: str, path: str, settings: dict | None) -> None:
    try:
        recorded = _read_fingerprint(local)
    except Exception as e:  # noqa: BLE001 - h5py: OSError for a truncated or non-HDF5 file
        raise CheckpointUnreadable(_unreadable(path, e)) from None
    if recorded is None:  # written before fingerprints were recorded
        return
    difference = fingerprint_difference(recorded, state_fingerprint(model, settings))
    if difference:
        run_dir = os.path.dirname(os.path.dirname(path))
        raise UserError(
            f"cannot resume from {path}: {difference}; use the checkpoint's settings to resume it, "
            f"or start fresh with another --run-dir (or remove {run_dir}/checkpoints)"
        )


SECOND_INTERRUPT_MESSAGE = "second Ctrl-C: stopped at once, without a checkpoint; the previous one is intact"


class InterruptWatcher:
    """Sees each SIGINT the moment it arrives, even while a training step runs in TensorFlow's C++.

    Python runs a signal handler only between bytecodes of the main thread, so during a step (which
    can take minutes for a large model on a CPU) neither Ctrl-C reaches Python. The C-level handler
    does write the signal's number to the wakeup file descriptor (:func:`signal.set_wakeup_fd`) at
    once; a thread reading it announces the first Ctrl-C and, on the second, gives the Python
    handler ``grace_seconds`` to take it (``handled_second`` set: the main thread was free, as
    between steps) before ending the process as ``kill -9`` would: checkpoints are written to a
    temporary name and renamed, so the previous one is intact. Install it from the main thread,
    while a Python handler for SIGINT is in place.
    """

    def __init__(self, first_message: str, stream=None, grace_seconds: float = 1.0):
        self.first_message = first_message
        self.stream = stream or sys.stderr
        self.grace_seconds = grace_seconds
        self.handled_second = threading.Event()
        self.count = 0
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="bt-keras-interrupts", daemon=True)
        self._thread.start()

    def _watch(self):
        while True:
            try:
                received = os.read(self._read, 64)
            except OSError:
                return
            if not received:
                return
            for signum in received:
                if signum != signal.SIGINT:
                    continue
                self.count += 1
                if self.count == 1:
                    self.stream.write(self.first_message + "\n")
                    self.stream.flush()
                elif not self.handled_second.wait(self.grace_seconds):  # the main thread is inside a step
                    self.stream.write(SECOND_INTERRUPT_MESSAGE + "\n")
                    self.stream.flush()
                    os._exit(130)

    def close(self):
        """Restores the previous wakeup descriptor; the thread ends."""
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write)  # the reader sees end of file
        self._thread.join(timeout=5)
        os.close(self._read)


class TrainingGuard(keras.callbacks.Callback):
    """Checkpoints every N steps and each epoch; on SIGTERM or SIGINT (Ctrl-C) saves and stops;
    stops on a non-finite loss *without* saving, so the last checkpoint stays good.

    A second SIGINT while the first is being handled stops at once, without a
    checkpoint (``KeyboardInterrupt``): the previous checkpoint is intact. With
    ``exit_inside_step`` (``bt-train``), it also stops a process whose main
    thread is inside a long step, where Python cannot run a handler
    (:class:`InterruptWatcher`); a notebook keeps the default, which never
    ends its kernel.
    A checkpoint that cannot be written (full disk) stops training with
    :class:`~bt_keras.errors.TrainingStopped`; the previous checkpoint is intact.

    After ``fit`` returns, ``nan_step`` is the first step whose loss was not
    finite, or after which the weights were not (None if neither; ``nan_in``
    says which: ``"loss"`` or ``"weights"``), ``preempted`` tells whether a
    signal arrived and ``signal_name`` which (``"SIGTERM"`` or ``"SIGINT"``).
    The weights are checked before each checkpoint: a step whose loss and
    gradients were finite can still overflow them (a learning rate far too
    high), and a checkpoint written then would not be a good one. Weights can
    also be finite but enormous, which only the next step's loss shows: so
    the periodic and epoch-end checkpoints are held in memory and written
    when the next step's loss is finite, or when training ends without a
    non-finite loss; a signal's checkpoint is written at once.

    Args:
        path: the checkpoint file.
        every_steps: also checkpoint every N optimizer steps (0: at epoch ends only).
        write: whether this process writes (the chief).
        fingerprint: :func:`state_fingerprint` recorded in each checkpoint.
        exit_inside_step: a second SIGINT also ends a process stuck inside a step (see above).
    """

    def __init__(
        self,
        path: str,
        every_steps: int = 0,
        write: bool = True,
        fingerprint: dict | None = None,
        exit_inside_step: bool = False,
    ):
        super().__init__()
        self.exit_inside_step = exit_inside_step
        self.path = path
        self.every_steps = every_steps
        self.write = write
        self.fingerprint = fingerprint
        self.nan_step = None
        self.nan_in = None
        self.preempted = False
        self.signal_name = None
        self._previous_handlers = {}
        self._watcher = None
        self._held = None  # checkpoint bytes waiting for the next step's finite loss

    def _on_signal(self, signum, frame):
        if self.preempted and signum == signal.SIGINT:
            if self._watcher is not None:
                self._watcher.handled_second.set()
            self._held = None  # stopping at once: no checkpoint, the previous one stays
            self.on_train_end()  # the handlers go back: fit will not call on_train_end after this
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.preempted = True
        self.signal_name = signal.Signals(signum).name

    def on_train_begin(self, logs=None):
        if os.name == "posix" and sys.platform != "win32":
            for signum in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
                except ValueError:  # Not the main thread: leave signals alone.
                    break
            if self._previous_handlers and self.exit_inside_step:
                self._watcher = InterruptWatcher(
                    "Ctrl-C: stopping after this step with a checkpoint; Ctrl-C again stops at once without one"
                )

    def on_train_end(self, logs=None):
        if self.nan_step is None:
            self._write_held()  # no later step to confirm it: the run ended with finite losses
        self._held = None
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _weights_finite(self) -> bool:
        """False (and training stops, with ``nan_step`` set) if any weight is not finite. Every worker
        checks: they hold the same weights, so all stop."""
        if all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in self.model.weights):
            return True
        self.nan_step, self.nan_in = int(self.model.optimizer.iterations.numpy()), "weights"
        self.model.stop_training = True
        return False

    def _save(self):
        """Writes the checkpoint now (chief), unless the weights are not finite."""
        self._held = None  # superseded
        if self._weights_finite() and self.write:
            self._write(lambda: save_checkpoint(self.model, self.path, self.fingerprint))

    def _hold(self):
        """Keeps the checkpoint's bytes (chief) for :meth:`_write_held`, unless the weights are not
        finite. Where Keras cannot build them in memory, writes at once."""
        if not self._weights_finite() or not self.write:
            return
        self._held = _weights_in_memory(self.model, self.fingerprint)
        if self._held is None:
            self._save()

    def _write_held(self):
        held, self._held = self._held, None
        if held is not None:
            self._write(lambda: atomic_write(self.path, held))

    def _write(self, write):
        try:
            write()
        except (OSError, RuntimeError) as e:  # h5py: OSError; a full disk can also surface as RuntimeError
            raise TrainingStopped(
                f"cannot write the checkpoint {self.path} ({one_line(e, 120)}); the previous checkpoint "
                "is intact: free some space and rerun to resume"
            ) from None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_step, self.nan_in = int(self.model.optimizer.iterations.numpy()), "loss"
            self._held = None  # the weights this loss came from: never written
            self.model.stop_training = True
            return
        self._write_held()  # this step's finite loss came from the held weights
        if self.preempted:
            self._save()  # not saved if the weights are not finite: then the run stops as diverged
            self.model.stop_training = True
            return
        step = int(self.model.optimizer.iterations.numpy())
        if self.every_steps and step % self.every_steps == 0:
            self._hold()

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_step is None and not self.preempted:
            self._hold()
