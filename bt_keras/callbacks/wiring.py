"""The ``monitor:`` section of a config as callbacks, for ``bt-train``.

Examples:

>>> import numpy as np, tensorflow as tf
>>> from bt_keras.callbacks.wiring import probe_views
>>> x = np.zeros([8, 4, 4, 3], np.float32)
>>> a, b = probe_views(tf.data.Dataset.from_tensor_slices((x, x)).batch(8), None, 3)
>>> a.shape
(3, 4, 4, 3)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from bt_keras.callbacks.monitors import CorrelationImage, KnnMonitor, RepresentationHealth
from bt_keras.callbacks.report import TrainingReport
from bt_keras.data.labelled import sample_labelled
from bt_keras.errors import UserError

MONITOR_SUBDIR = "monitor"
log = logging.getLogger("bt_keras")


def probe_views(dataset, strategy, size: int, source_fn: Callable | None = None):
    """A fixed ``(view_a, view_b)`` batch of at most ``size`` pairs.

    With one replica it is the first batch of the training ``dataset`` (a
    second iterator: training's own stream is untouched). A distributed
    dataset is never iterated here: on several workers its iterator takes
    part in collectives that the other workers would not join, so
    ``source_fn()`` builds a local two-view dataset instead.

    Args:
        dataset: the training dataset (``tf.data.Dataset`` or distributed).
        strategy: the distribution strategy (unused; kept for callers).
        size: most pairs kept.
        source_fn: builds a local two-view ``tf.data.Dataset``.
    """
    plain = isinstance(dataset, tf.data.Dataset)
    ds = dataset if plain else (source_fn() if source_fn is not None else None)
    if ds is None:
        raise ValueError("a distributed dataset needs source_fn to build the probe batch")
    view_a, view_b = next(iter(ds))
    return np.asarray(view_a)[:size], np.asarray(view_b)[:size]


def monitor_callbacks(cfg, run_dir: str, *, dataset, strategy, chief: bool, contract) -> list:
    """The ``monitor:`` section of a config as callbacks (empty on non-chief workers).

    Health and the correlation picture need a fixed batch, the kNN monitor a
    labelled bank (``monitor.knn_train_source``, default ``eval.train_source``)
    and validation set (``monitor.knn_val_source``, default ``data.val_source``
    then ``eval.test_source``), subsampled to ``knn_max_train`` / ``knn_max_val``
    once at the start.

    Args:
        cfg: the run's config.
        run_dir: the run directory (``logs/monitor``, ``knn.csv``, ``report.png`` go there).
        dataset: the training dataset (the probe batch is its first).
        strategy: the distribution strategy; TPUs get no model-calling monitors.
        chief: whether this worker writes.
        contract: the encoder's preprocessing contract (for the kNN sets).
    """
    m = cfg.monitor
    if not chief:
        return []
    log_dir = os.path.join(run_dir, "logs", MONITOR_SUBDIR)
    out = []
    if isinstance(strategy, tf.distribute.TPUStrategy) and (m.health or m.correlation_image or m.knn_every_epochs):
        # They call the model outside the replicated TPU step, which TPUStrategy does not support.
        log.warning(
            "monitor.health, monitor.correlation_image and the kNN monitor are skipped on TPU; "
            "run bt-eval on saved encoders instead"
        )
        m = dataclasses.replace(m, health=False, correlation_image=False, knn_every_epochs=0)
    if m.health or m.correlation_image:
        batch = min(m.probe_batch, cfg.train.batch_size)
        views = probe_views(dataset, strategy, m.probe_batch, lambda: cfg.data.train_dataset(batch, seed_offset=1))
        if m.health:
            out.append(RepresentationHealth(views, log_dir))
        if m.correlation_image:
            out.append(CorrelationImage(views, log_dir))
    if m.knn_every_epochs > 0:
        out.append(_knn_monitor(cfg, m, run_dir, log_dir, contract))
    if m.report:
        out.append(
            TrainingReport(
                os.path.join(run_dir, "report.png"),
                os.path.join(run_dir, "history.csv"),
                os.path.join(run_dir, "knn.csv"),
                lambd=cfg.model.lambd,
                title=os.path.basename(run_dir.rstrip("/")),
            )
        )
    return out


def _knn_monitor(cfg, m, run_dir: str, log_dir: str, contract) -> KnnMonitor:
    bank_src = m.knn_train_source or cfg.eval.train_source
    val_src = m.knn_val_source or cfg.data.val_source or cfg.eval.test_source
    if not bank_src or not val_src:
        raise UserError(
            "monitor.knn_every_epochs needs labelled sources: set monitor.knn_train_source and "
            "monitor.knn_val_source (or eval.train_source / eval.test_source)"
        )
    data_dir, batch_size = cfg.data.data_dir, cfg.eval.batch_size
    bank = sample_labelled(bank_src, m.knn_max_train, contract, data_dir=data_dir, batch_size=batch_size, seed=1)
    val = sample_labelled(val_src, m.knn_max_val, contract, data_dir=data_dir, batch_size=batch_size, seed=2)
    return KnnMonitor(
        bank,
        val,
        every_epochs=m.knn_every_epochs,
        k=cfg.eval.k,
        temperature=cfg.eval.temperature,
        log_dir=log_dir,
        csv_path=os.path.join(run_dir, "knn.csv"),
        batch_size=batch_size,
    )
