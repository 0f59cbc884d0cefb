"""Training-time monitors: is the encoder learning, or collapsing?

All of them write to TensorBoard (``RUN/logs/monitor``), only on the chief,
and run in inference mode (BN statistics are read, never updated), so they
do not change training:

- :class:`KnnMonitor`: kNN top-1/top-5 (k=200, T=0.1) of the encoder's
  features on a labelled validation set every N epochs (``knn/top1``,
  ``knn/top5``), also appended to ``RUN/knn.csv``.
- :class:`RepresentationHealth`: on a fixed batch, the per-dimension std of
  the L2-normalised embeddings × √D (≈ 1 healthy, → 0 at collapse; mean, min
  and a histogram), the effective rank of the encoder features and the
  fraction of near-dead dimensions. Collapse shows here before the loss
  says so.
- :class:`CorrelationImage`: a heatmap of the cross-correlation matrix C of
  the fixed batch's two views (every s-th row and column, so diagonal
  entries stay diagonal), as a TensorBoard image every epoch.
- :class:`TrainingReport`: ``RUN/report.png`` at the end (loss terms and kNN
  accuracy against epochs); :func:`write_run_report` redraws it after the
  final evaluation, with the trained encoder's kNN next to random init.
- :class:`HistoryCSV`: ``RUN/history.csv``, Keras' ``CSVLogger`` without its
  always-``NA`` ``val_*`` columns.
- :class:`TimeBudget`: stops training after a wall-clock budget of training
  steps and can drive the learning rate by the elapsed fraction of it.

Modules: :mod:`~bt_keras.callbacks.health` (the indicators, pure NumPy),
:mod:`~bt_keras.callbacks.monitors`, :mod:`~bt_keras.callbacks.report`, :mod:`~bt_keras.callbacks.history`,
:mod:`~bt_keras.callbacks.budget` and :mod:`~bt_keras.callbacks.wiring`
(:func:`monitor_callbacks`: a config's ``monitor:`` section for ``bt-train``).

Examples:

>>> import tempfile
>>> import numpy as np, tensorflow as tf, bt_keras
>>> from bt_keras import callbacks
>>> enc = bt_keras.small_cnn(widths=(8, 16), input_shape=(16, 16, 3))
>>> model = bt_keras.BarlowTwins(enc, projector_dims=(32, 32))
>>> model.compile(optimizer="adam")
>>> x = np.random.rand(32, 16, 16, 3).astype("float32")
>>> pairs = tf.data.Dataset.from_tensor_slices((x, x[::-1])).batch(16, drop_remainder=True)
>>> health = callbacks.RepresentationHealth((x, x[::-1]), log_dir=tempfile.mkdtemp())
>>> _ = model.fit(pairs, epochs=1, verbose=0, callbacks=[health])
>>> sorted(health.last)[:2]
['dead_fraction', 'effective_rank']
"""

from __future__ import annotations

from bt_keras.callbacks.budget import TimeBudget
from bt_keras.callbacks.health import correlation_heatmap, effective_rank, representation_health
from bt_keras.callbacks.history import HistoryCSV
from bt_keras.callbacks.monitors import CorrelationImage, KnnMonitor, RepresentationHealth
from bt_keras.callbacks.report import TrainingReport, plot_report, read_history, write_run_report
from bt_keras.callbacks.wiring import MONITOR_SUBDIR, monitor_callbacks, probe_views
from bt_keras.data.labelled import sample_labelled

__all__ = [
    "MONITOR_SUBDIR",
    "CorrelationImage",
    "HistoryCSV",
    "KnnMonitor",
    "RepresentationHealth",
    "TimeBudget",
    "TrainingReport",
    "correlation_heatmap",
    "effective_rank",
    "monitor_callbacks",
    "plot_report",
    "probe_views",
    "read_history",
    "representation_health",
    "sample_labelled",
    "write_run_report",
]
