"""Planning a run before it trains: strategy, precision, thread pools, the data's size, the batch per
replica, and the run directory (created and locked only once every check has passed).

:func:`plan_run` is the first step of :func:`bt_keras.training.train`; :class:`RunPlan` carries what it
decided to every later step, and the start-of-run summary (:meth:`RunPlan.describe`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from bt_keras.errors import UserError, one_line
from bt_keras.io import remove_orphaned_temporaries


@dataclasses.dataclass
class RunPlan:
    """What a run will do, decided once before any training.

    Attributes:
        cfg: the resolved config (``train.run_dir`` set).
        strategy: the ``tf.distribute`` strategy.
        chief: whether this process writes the run's files.
        num_examples: usable training images.
        num_skipped: unusable files left out of the source.
        steps_per_epoch: full global batches per epoch.
        per_replica_batch: the global batch divided over the replicas (checked).
        checkpoint: the checkpoint file.
        lock: the run directory's lock (chief, local run directory), released by :meth:`release`.
        created_run_dir: this run created the directory (it did not exist): :meth:`release`
            removes it again if nothing was written into it (a start that failed).
    """

    cfg: object
    strategy: object
    chief: bool
    num_examples: int
    num_skipped: int
    steps_per_epoch: int
    per_replica_batch: int
    checkpoint: str
    lock: object = None
    created_run_dir: bool = False
    precision: tuple = ("float32", "train.mixed_precision")  # (policy, why): train.mixed_precision resolved
    threads: str = "TensorFlow's default thread pools"  # train.cpu_threads, as applied
    compilation_cache: str | None = None  # train.jax_compilation_cache's directory, as applied (JAX only)

    def release(self) -> None:
        """Releases the run directory's lock (a no-op without one); removes a directory this run
        created and left empty, so a start that failed (a model that cannot be built, say) leaves
        nothing behind."""
        if self.lock is not None:
            self.lock.release()
        if self.created_run_dir:
            with contextlib.suppress(OSError):  # not empty: the run wrote something, which stays
                os.rmdir(self.run_dir)

    def state_settings(self) -> dict:
        """The config values that shape the checkpointed state (recorded in its fingerprint)."""
        m = self.cfg.model
        return {
            "model.encoder": m.encoder,
            "model.width": m.width,
            "model.projector_dims": list(m.projector_dims),
            "optim.name": self.cfg.optim.name,
        }

    @property
    def run_dir(self) -> str:
        return self.cfg.train.run_dir

    @property
    def total_steps(self) -> int:
        return self.cfg.train.epochs * self.steps_per_epoch

    def describe(self, start_step: int) -> list:
        """The start-of-run summary, one line per fact."""
        t, d = self.cfg.train, self.cfg.data
        import keras

        from bt_keras.distribute import describe

        skipped = f", {self.num_skipped} skipped" if self.num_skipped else ""
        if start_step >= self.total_steps:
            start = f"already complete at step {start_step}"
        elif start_step:
            epoch = start_step // self.steps_per_epoch + 1
            start = f"resuming from step {start_step} (epoch {epoch}) of {self.checkpoint}"
        else:
            start = "starts from scratch"
        cache = ""
        if keras.backend.backend() == "jax":
            cache = f"; compilation cache {self.compilation_cache or 'off'}"
        lines = [
            f"backend {keras.backend.backend()}, {describe(self.strategy)}{cache}",
            f"data {d.source}: {self.num_examples} usable images{skipped}; {d.image_size} px views"
            + (
                f"; computed by the tf.data service at {d.service.address} ({d.service.mode})"
                if d.service.enabled
                else ""
            ),
            f"batch {t.batch_size} global, {self.per_replica_batch} per replica; {self.steps_per_epoch} steps/epoch "
            f"x {t.epochs} epochs = {self.total_steps} steps",
            f"run directory {self.run_dir}; {start}",
            f"encoder {self.cfg.model.encoder}; initial weights: {_init_line(self.cfg.model)}",
            f"precision {self.precision[0]} ({self.precision[1]}); CPU threads: {self.threads}",
        ]
        warmup = self.cfg.optim.warmup_epochs
        if warmup >= t.epochs:
            lines.append(
                f"note: optim.warmup_epochs ({warmup:g}) is not shorter than train.epochs ({t.epochs}): the learning "
                "rate never reaches its peak; lower optim.warmup_epochs for a run this short"
            )
        return lines


def _init_line(model_cfg) -> str:
    from bt_keras.backbones import describe_init

    init = describe_init(model_cfg)
    return init["source"] if "file" not in init else f"{init['file']} (sha256 {init['file_sha256'][:12]})"


def plan_run(cfg, run_dir: str | None = None) -> RunPlan:
    """Strategy, precision, seeds and the data's size; then creates and locks the run directory (chief).

    The strategy comes first: ``MultiWorkerMirroredStrategy`` needs a runtime
    no other TensorFlow call has initialised. The run directory is created
    only once every check has passed, so a run that fails before training
    leaves nothing behind. The chief holds the directory's lock from here
    (release it with :meth:`RunPlan.release`) and removes the temporaries a
    killed writer left there.
    """
    import keras

    from bt_keras.checkpointing import checkpoint_path
    from bt_keras.config import check_sources
    from bt_keras.cpu_threads import apply_cpu_threads
    from bt_keras.distribute import (
        device_kind,
        is_chief,
        make_strategy,
        per_replica_batch_size,
        use_jax_compilation_cache,
    )
    from bt_keras.precision import resolve_precision

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_dir=run_dir or cfg.train.run_dir))
    t = cfg.train
    if t.backend and t.backend != keras.backend.backend():
        raise UserError(
            f"train.backend is {t.backend!r} but Keras runs on {keras.backend.backend()}: set "
            f"KERAS_BACKEND={t.backend} before Keras is imported (bt-train does this for you)"
        )
    threads = apply_cpu_threads(t.cpu_threads, t.strategy)  # before the runtime starts (make_strategy starts it)
    cache = use_jax_compilation_cache(t.jax_compilation_cache) if keras.backend.backend() == "jax" else None
    strategy = make_strategy(t.strategy, t.tpu, t.zone, t.project)
    check_sources(cfg)  # every source the run will open, errors naming its key, before anything is written
    keras.utils.set_random_seed(t.seed)
    precision = resolve_precision(t.mixed_precision, *device_kind(strategy))
    keras.mixed_precision.set_dtype_policy(precision[0])
    per_replica = per_replica_batch_size(t.batch_size, strategy)
    chief = is_chief(strategy)
    info = cfg.data.info()
    steps_per_epoch = info.num_examples // t.batch_size
    if steps_per_epoch < 1:
        raise UserError(
            f"data.source {cfg.data.source!r} has {info.num_examples} usable images, "
            f"fewer than one global batch ({t.batch_size})"
        )
    lock, created = _open_run_directory(t.run_dir, chief)
    return RunPlan(
        cfg,
        strategy,
        chief,
        info.num_examples,
        len(info.skipped),
        steps_per_epoch,
        per_replica,
        checkpoint_path(t.run_dir),
        lock,
        created,
        precision,
        threads,
        cache,
    )


def _open_run_directory(run_dir: str, chief: bool):
    """``(lock, created)``: the chief locks a local run directory (creating it) and removes the
    temporaries a killed writer left there; a remote one, or another worker's, is only created."""
    import tensorflow as tf

    from bt_keras.checkpointing import checkpoint_path
    from bt_keras.io import is_remote
    from bt_keras.run_lock import RunDirectoryLock

    if chief and not is_remote(run_dir):
        created = not os.path.exists(run_dir)
        lock = RunDirectoryLock(run_dir).acquire()  # creates the directory; one line if it cannot
        for directory in (run_dir, os.path.dirname(checkpoint_path(run_dir))):
            remove_orphaned_temporaries(directory)
        return lock, created
    try:
        tf.io.gfile.makedirs(run_dir)
    except (OSError, tf.errors.OpError) as e:
        raise UserError(f"cannot create the run directory {run_dir}: {one_line(e)}") from None
    return None, False
