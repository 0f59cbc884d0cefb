"""Strategy selection and distributed input.

``make_strategy("auto")`` gives a ``MirroredStrategy`` over the visible GPUs
when there are several, else the default (one device) strategy.

Examples:

>>> from bt_keras.distribute import make_strategy
>>> make_strategy("cpu").num_replicas_in_sync
1
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from bt_keras.errors import UserError

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi_worker", "tpu")


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UserError("strategy 'multi_worker' needs the TF_CONFIG environment variable (see README: Multi-worker)")
    try:
        cfg = json.loads(raw)
        workers = cfg["cluster"]["worker"]
        task = cfg["task"]
        int(task["index"])
        task["type"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"TF_CONFIG is malformed ({type(e).__name__}: {e}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    if not isinstance(workers, list) or not workers:
        raise UserError("TF_CONFIG cluster.worker must be a non-empty list of host:port")


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
    if name == "multi_worker":
        # Before anything touches the TF runtime: collectives are configured at startup.
        _check_tf_config()
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


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: the chief, or worker 0 of a chief-less cluster."""
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


def distribute(strategy: tf.distribute.Strategy, dataset_fn):
    """``dataset_fn(input_context)`` → a distributed dataset (each replica its own batch).

    With one replica the plain dataset is returned (no distribution overhead).
    """
    if strategy.num_replicas_in_sync == 1 and not isinstance(
        strategy, (tf.distribute.TPUStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    ):
        return dataset_fn(tf.distribute.InputContext())
    return strategy.distribute_datasets_from_function(dataset_fn)
