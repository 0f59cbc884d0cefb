"""Strategy selection and distributed input, on TensorFlow and on JAX.

On TensorFlow, ``make_strategy("auto")`` gives a ``MirroredStrategy`` over the
visible GPUs when there are several, else the default (one device) strategy.
On JAX it gives a :class:`JaxDataParallel`: ``keras.distribution.DataParallel``
over every device of every process, behind the few members of a
``tf.distribute.Strategy`` that a run uses (replica count, scope, chief), so
the trainer has one code path.

Examples:

>>> from bt_keras.distribute import make_strategy
>>> make_strategy("cpu").num_replicas_in_sync
1
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import tensorflow as tf

from bt_keras.errors import UserError
from bt_keras.tf_config import check_tf_config

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi_worker", "tpu")
JAX_STRATEGIES = ("auto", "cpu", "gpu")  # the rest are tf.distribute strategies
_JAX_CLUSTER_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "JAX_COORDINATOR_ADDRESS")


def make_strategy(
    name: str = "auto", tpu: str | None = None, zone: str | None = None, project: str | None = None
) -> tf.distribute.Strategy:
    """Builds the ``tf.distribute`` strategy named in the config.

    ``auto``: several GPUs → mirrored, else one device. ``cpu``/``gpu``: one
    device. ``mirrored``: all local GPUs (or CPU logical devices when there
    is no GPU). ``multi_worker``: ``MultiWorkerMirroredStrategy`` from
    ``TF_CONFIG``. ``tpu``: ``TPUStrategy`` through ``TPUClusterResolver``
    (``tpu="local"`` on a TPU VM).
    """
    if name not in STRATEGIES:
        raise UserError(f"strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    import keras

    if keras.backend.backend() == "jax":
        return JaxDataParallel.create(name)
    if name == "multi_worker":
        # Before anything touches the TF runtime: collectives are configured at startup.
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu, zone, project)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "gpu":
        if not gpus:
            raise UserError("strategy 'gpu' but TensorFlow sees no GPU")
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)


def _tpu_strategy(tpu, zone, project):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu, zone=zone, project=project)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot reach TPU {tpu or '(default)'}: {first}") from None
    return tf.distribute.TPUStrategy(resolver)


class JaxDataParallel:
    """Data parallelism on the JAX backend: one ``keras.distribution.DataParallel`` over all devices.

    Under SPMD the batch axis is global: BatchNorm statistics, the per-view
    standardisation and C are over the global batch with no explicit
    collective, so the loss is exact by construction. Several processes (TPU
    pod slices, multi-node GPU) join through ``keras.distribution.initialize()``
    when its environment variables are set; each process then reads its own
    share of the data (one input pipeline per process).

    Attributes:
        num_replicas_in_sync: devices over all processes.
        num_processes: processes in the cluster.
        process_index: this process's index (0 is the chief).
    """

    def __init__(self, devices, num_processes: int = 1, process_index: int = 0):
        import keras

        self.devices = list(devices)
        self.num_replicas_in_sync = len(self.devices)
        self.num_processes = num_processes
        self.process_index = process_index
        self.distribution = keras.distribution.DataParallel(devices=self.devices, auto_shard_dataset=False)
        keras.distribution.set_distribution(self.distribution)

    @classmethod
    def create(cls, name: str = "auto") -> JaxDataParallel:
        """``auto``: every device (and every process of a cluster); ``cpu``/``gpu``: the first such device."""
        import jax
        import keras

        if name not in JAX_STRATEGIES:
            raise UserError(
                f"train.strategy: {name!r} is a TensorFlow strategy; on the JAX backend use "
                f"{', '.join(JAX_STRATEGIES)} (auto is data parallel over every device and host)"
            )
        # The tf.data pipeline runs on TensorFlow: keep it off the accelerators JAX uses.
        with contextlib.suppress(RuntimeError):  # already initialised: nothing to hide any more
            tf.config.set_visible_devices([], "GPU")
        if any(os.environ.get(k) for k in _JAX_CLUSTER_ENV):
            # CPU processes need gloo for cross-process collectives (GPUs and TPUs have their own).
            jax.config.update(
                "jax_cpu_collectives_implementation", os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION", "gloo")
            )
            keras.distribution.initialize()
        if name == "auto":
            devices = jax.devices()
        else:
            try:
                devices = jax.devices(name)[:1]
            except RuntimeError:
                raise UserError(f"train.strategy: {name!r} but JAX sees no {name.upper()}") from None
        return cls(devices, jax.process_count(), jax.process_index())

    def scope(self):
        return contextlib.nullcontext()

    def input_context(self) -> tf.distribute.InputContext:
        """One input pipeline per process; its batch is the process's share of the global batch."""
        return tf.distribute.InputContext(
            num_input_pipelines=self.num_processes,
            input_pipeline_id=self.process_index,
            num_replicas_in_sync=self.num_processes,
        )


AUTO_CACHE_MAX_BYTES = 2 << 30  # the default cache's cap; JAX evicts the least recently used entries
# JAX's default (1 s) leaves out most of a CPU run's compiles (step, evaluation, monitors: 0.2-1 s
# each); with them a resumed demo run took 0.64x the CPU of compiling again (docs/scaling.md).
MIN_COMPILE_SECONDS = 0.2


def use_jax_compilation_cache(setting: str | None) -> str | None:
    """Points JAX's persistent compilation cache at ``setting``; returns the directory in use (None: off).

    A resumed run (after a preemption, say) then loads its compiled train step
    instead of compiling it again, which on a TPU or a large model takes
    minutes. JAX keys each entry by the program, the devices, the flags and
    its own version, so a changed setting compiles afresh. Compiles that took
    over 0.2 s are cached (JAX's default: 1 s;
    ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` overrides both). Call it
    before the first compile.

    Args:
        setting: ``"auto"``: ``JAX_COMPILATION_CACHE_DIR`` where set, else
            ``bt_keras/jax`` under ``XDG_CACHE_HOME`` (default ``~/.cache``), at
            most 2 GiB where the ``filelock`` package is installed (JAX needs it
            to evict), and no cache where that cannot be created; a directory
            (``~`` expanded; a local one that cannot be created is a
            :class:`UserError`; ``gs://`` works where JAX can write it); None:
            no cache, even where ``JAX_COMPILATION_CACHE_DIR`` is set.

    Example:

    >>> from bt_keras.distribute import use_jax_compilation_cache
    >>> use_jax_compilation_cache(None) is None  # this process compiles without a cache
    True
    """
    import jax

    if setting is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if setting == "auto":
        if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # JAX reads it itself, with the user's other settings
            return os.environ["JAX_COMPILATION_CACHE_DIR"]
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "bt_keras", "jax")
        if importlib.util.find_spec("filelock") is not None:  # JAX evicts under filelock's lock, or warns per compile
            jax.config.update("jax_compilation_cache_max_size", AUTO_CACHE_MAX_BYTES)
    else:
        path = os.path.expanduser(setting)
    if "://" not in path:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            if setting == "auto":  # a read-only home, say: the run goes on without a cache
                jax.config.update("jax_enable_compilation_cache", False)
                return None
            raise UserError(
                f"train.jax_compilation_cache: cannot create {path}: {e.strerror}; name a writable directory "
                "or null (no cache)"
            ) from None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path


def describe(strategy) -> str:
    """``"MirroredStrategy: 2 replica(s) on CPU:0, CPU:1"``, for the start-of-run summary."""
    if isinstance(strategy, JaxDataParallel):
        kinds = sorted({d.platform.upper() for d in strategy.devices})
        hosts = f" in {strategy.num_processes} processes" if strategy.num_processes > 1 else ""
        return f"DataParallel: {strategy.num_replicas_in_sync} {'/'.join(kinds)} device(s){hosts}"
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: one replica on the first device
        gpus = tf.config.list_logical_devices("GPU")
        devices = [(gpus or tf.config.list_logical_devices("CPU"))[0].name]
    names = sorted({d.split("/device:")[-1] for d in devices})
    name = type(strategy).__name__
    name = "no strategy" if name == "_DefaultDistributionStrategy" else name
    return f"{name}: {strategy.num_replicas_in_sync} replica(s) on {', '.join(names)}"


def device_kind(strategy) -> tuple[str, tuple | None]:
    """``("tpu" | "gpu" | "cpu", first GPU's compute capability or None)``: what ``strategy`` trains on."""
    if isinstance(strategy, JaxDataParallel):
        from bt_keras.precision import jax_gpu_capability

        kind = strategy.devices[0].platform
        if kind == "gpu":
            return "gpu", jax_gpu_capability(strategy.devices[0])
        return (kind if kind == "tpu" else "cpu"), None
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu", None
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: the first GPU if any
        devices = [d.name for d in tf.config.list_logical_devices("GPU")[:1]] or ["CPU:0"]
    if not any("GPU" in d for d in devices):
        return "cpu", None
    gpus = tf.config.list_physical_devices("GPU")
    details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
    return "gpu", details.get("compute_capability")


def is_chief(strategy) -> bool:
    """Whether this process writes the run's files: the chief, or worker 0 of a chief-less cluster."""
    if isinstance(strategy, JaxDataParallel):
        return strategy.process_index == 0
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )


def per_replica_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The per-replica batch; a clear error when it is not well defined."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UserError(f"global batch {global_batch_size} is not divisible by the {replicas} replicas")
    per_replica = global_batch_size // replicas
    if per_replica < 2:
        raise UserError(f"per-replica batch is {per_replica}: batch statistics need at least 2 examples per replica")
    return per_replica


def distribute(strategy, dataset_fn):
    """``dataset_fn(input_context)`` → a distributed dataset (each replica its own batch).

    With one replica the plain dataset is returned (no distribution overhead).
    On JAX, this process's pipeline: Keras assembles the global batch from the
    processes' shares.
    """
    if isinstance(strategy, JaxDataParallel):
        return dataset_fn(strategy.input_context())
    if strategy.num_replicas_in_sync == 1 and not isinstance(
        strategy, (tf.distribute.TPUStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    ):
        return dataset_fn(tf.distribute.InputContext())
    return strategy.distribute_datasets_from_function(dataset_fn)
