"""The ``data.service`` section: computing the training views on tf.data service workers.

With ``data.service.dispatcher`` set, :func:`~bt_keras.data.two_view_dataset`
builds the same dataset as without it and hands it to a tf.data service
dispatcher (``tf.data.experimental.service.distribute``): the decode, crop
and pixel stages run on the service's CPU workers, and the trainer only
receives finished view pairs. Every view stays a function of (seed, example,
epoch) (:mod:`bt_keras.augment.rng`), so where a pair is computed does not
change it. Start the servers with ``bt-data-service`` (see docs/scaling.md).

Modes (``data.service.mode``):

* ``off``: every worker produces the whole stream, batched exactly as the
  local pipeline batches it (with one worker: the local pipeline's pairs).
  With N workers every pair arrives N times: use it with one worker.
* ``distributed_epoch``: the dispatcher hands out the source's files (or
  examples) one at a time, so each example is processed by one worker, once
  per epoch; workers send single pairs and the trainer batches them.

This module imports no TensorFlow until a dataset is distributed, so a bad
value is reported before TensorFlow loads.

Examples:

>>> from bt_keras.data.service import ServiceConfig
>>> ServiceConfig().enabled, ServiceConfig(dispatcher="10.0.0.2:5050").enabled
(False, True)
>>> ServiceConfig(dispatcher="grpc://10.0.0.2:5050").address
'10.0.0.2:5050'
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from dataclasses import dataclass

from bt_keras.errors import DataError, UserError

__all__ = ["COMPRESSIONS", "MODES", "ServiceConfig", "check_reachable", "parse_address"]

MODES = ("off", "distributed_epoch")
COMPRESSIONS = ("auto", "none")
# One tag per trainer process and a count per dataset: a restarted trainer must
# never join the job of the process it replaces (that job would go on from where
# it stopped), and two datasets of one process never share a job by accident.
_PROCESS_TAG = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
_DATASETS = itertools.count()


def parse_address(text, key: str = "data.service.dispatcher") -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (optionally ``grpc://HOST:PORT``); a ``DataError`` naming ``key`` else.

    Args:
        text: the address.
        key: the config key or flag named in the error.

    Examples:

    >>> parse_address("grpc://localhost:5050")
    ('localhost', 5050)
    >>> parse_address("localhost")
    Traceback (most recent call last):
    ...
    bt_keras.errors.DataError: data.service.dispatcher: expected HOST:PORT, got 'localhost'
    """
    if not isinstance(text, str):
        raise DataError(f"{key}: expected HOST:PORT, got {text!r}")
    bare = text[len("grpc://") :] if text.startswith("grpc://") else text
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DataError(f"{key}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def check_reachable(address: str, key: str = "data.service.dispatcher", timeout: float = 10.0) -> None:
    """A ``UserError`` naming ``key`` unless something accepts TCP connections at ``address``.

    A plain socket, no TensorFlow: the check costs milliseconds, so a wrong
    address is reported before any expensive start-up (a tf.data client or
    worker would otherwise retry silently for minutes).

    Args:
        address: ``HOST:PORT``.
        key: the config key or flag named in the error.
        timeout: seconds to wait for the connection.

    Examples:

    >>> import socket
    >>> with socket.socket() as s:
    ...     s.bind(("127.0.0.1", 0))
    ...     port = s.getsockname()[1]
    >>> check_reachable(f"127.0.0.1:{port}")  # bound, never listening: refused
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: data.service.dispatcher: cannot reach a tf.data service dispatcher at 127.0.0.1:...
    """
    host, port = parse_address(address, key)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UserError(
            f"{key}: cannot reach a tf.data service dispatcher at {host}:{port} ({reason}); "
            "start one with: bt-data-service dispatcher --port PORT"
        ) from None


@dataclass(frozen=True)
class ServiceConfig:
    """The ``data.service`` section (frozen: validated once, when built).

    Args:
        dispatcher: ``HOST:PORT`` of the tf.data service dispatcher; None
            (the default) computes the views in the training process.
        mode: ``distributed_epoch`` (workers split each epoch's files) or
            ``off`` (each worker produces the whole stream); see the module.
        job_name: prefix of the service job names of this run; each dataset
            (one per input pipeline) gets its own job, named from it, the
            pipeline, the seed, the trainer process and a count.
        compression: ``auto`` (the service compresses elements when useful)
            or ``none`` (fast networks: saves the workers' and trainer's CPU).

    Examples:

    >>> ServiceConfig(dispatcher="d:5050", mode="parallel")
    Traceback (most recent call last):
    ...
    bt_keras.errors.DataError: data.service.mode: must be one of off, distributed_epoch, got 'parallel'
    """

    dispatcher: str | None = None
    mode: str = "distributed_epoch"
    job_name: str = "bt-keras"
    compression: str = "auto"

    def __post_init__(self):
        if self.dispatcher is not None:
            parse_address(self.dispatcher)
        if self.mode not in MODES:
            raise DataError(f"data.service.mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.compression not in COMPRESSIONS:
            raise DataError(
                f"data.service.compression: must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}"
            )
        if not isinstance(self.job_name, str) or not self.job_name or not self.job_name.isprintable():
            raise DataError(f"data.service.job_name: expected a non-empty name, got {self.job_name!r}")

    @property
    def enabled(self) -> bool:
        """Whether the views are computed on the service."""
        return self.dispatcher is not None

    @property
    def address(self) -> str:
        """``HOST:PORT`` of the dispatcher."""
        host, port = parse_address(self.dispatcher)
        return f"{host}:{port}"

    def check_reachable(self) -> None:
        """:func:`check_reachable` of the dispatcher (nothing when unset)."""
        if self.enabled:
            check_reachable(self.dispatcher)

    def distribute(self, ds, tag: str):
        """``ds`` read from the service: its graph runs on the workers.

        Args:
            ds: the dataset to run on the workers.
            tag: what tells this dataset's job apart from the run's other jobs.
        """
        import tensorflow as tf

        svc = tf.data.experimental.service
        mode = svc.ShardingPolicy.DYNAMIC if self.mode == "distributed_epoch" else svc.ShardingPolicy.OFF
        return ds.apply(
            svc.distribute(
                mode,
                f"grpc://{self.address}",
                job_name=f"{self.job_name}-{tag}-{_PROCESS_TAG}-{next(_DATASETS)}",
                compression="AUTO" if self.compression == "auto" else None,
            )
        )
