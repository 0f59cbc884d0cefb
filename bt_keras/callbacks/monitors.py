"""TensorBoard monitors of a training model, on the chief, in inference mode.

They read BN statistics and never update them, so they do not change training:
:class:`KnnMonitor` (kNN accuracy of the encoder's features),
:class:`RepresentationHealth` (collapse indicators of a fixed batch) and
:class:`CorrelationImage` (the fixed batch's cross-correlation matrix as an
image).

Examples:

>>> import numpy as np
>>> from bt_keras.callbacks.monitors import KnnMonitor
>>> x = np.random.rand(4, 8, 8, 3).astype("float32")
>>> KnnMonitor((x, np.arange(4)), (x, np.arange(4))).k
200
"""

from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np
import tensorflow as tf

from bt_keras.callbacks.health import correlation_heatmap, representation_health
from bt_keras.evaluation.features import extract_features, inference_fn
from bt_keras.evaluation.knn import knn_accuracy
from bt_keras.io import atomic_write
from bt_keras.losses import cross_correlation

log = logging.getLogger("bt_keras")
_WRITERS: dict = {}


class _MonitorCallback(keras.callbacks.Callback):
    """Shared: lazy TensorBoard writer, every-N-epochs gating, last epoch always."""

    def __init__(self, log_dir: str | None, every_epochs: int = 1):
        super().__init__()
        if every_epochs < 1:
            raise ValueError(f"every_epochs must be >= 1, got {every_epochs}")
        self.log_dir = log_dir
        self.every_epochs = int(every_epochs)
        self._writer = None

    @property
    def writer(self):
        if self._writer is None and self.log_dir:
            # One writer per directory: the monitors then share one event file.
            self._writer = _WRITERS.get(self.log_dir)
            if self._writer is None:
                self._writer = _WRITERS[self.log_dir] = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def _due(self, epoch) -> bool:
        last = self.params and self.params.get("epochs") == epoch + 1
        return (epoch + 1) % self.every_epochs == 0 or bool(last) or bool(self.model.stop_training)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()


def _batched(data, batch_size):
    if isinstance(data, tf.data.Dataset):
        return data
    x, y = data
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def append_csv(path: str, header: list, row: list) -> None:
    """Appends ``row`` to a small CSV file (with ``header`` if it is new), rewriting it atomically.

    Rewritten whole, since ``gs://`` has no appends.

    Args:
        path: local or ``gs://`` file.
        header: column names, written when the file is new or empty.
        row: the values.

    Examples:

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "knn.csv")
    >>> append_csv(p, ["epoch", "top1"], [0, 0.5]); append_csv(p, ["epoch", "top1"], [1, 0.6])
    >>> open(p).read()
    'epoch,top1\\n0,0.5\\n1,0.6\\n'
    """
    text = ""
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
    if not text:
        text = ",".join(header) + "\n"
    atomic_write(path, text + ",".join(str(v) for v in row) + "\n")


class KnnMonitor(_MonitorCallback):
    """kNN accuracy of ``model.encoder`` (inference mode) every ``every_epochs``.

    Results go to TensorBoard (``knn/top1``, ``knn/top5`` at step = epoch), to
    ``csv_path`` (epoch, top1, top5, seconds) and into the epoch logs as
    ``knn_top1``/``knn_top5``.

    Args:
        train_data: the labelled bank: a dataset of ``(images, labels)``
            batches or a tuple of preprocessed arrays.
        val_data: the labelled set scored against it, likewise.
        every_epochs: how often; the last epoch always runs.
        k, temperature: the kNN vote.
        log_dir: TensorBoard directory, or ``None``.
        csv_path: CSV file, or ``None``.
        batch_size: batch size for arrays.
        verbose: also log each result (logger ``bt_keras``, INFO).

    Examples:

    >>> import numpy as np
    >>> x = np.random.rand(20, 8, 8, 3).astype("float32"); y = np.arange(20) % 2
    >>> KnnMonitor((x, y), (x, y), every_epochs=5).every_epochs
    5
    """

    def __init__(
        self,
        train_data,
        val_data,
        every_epochs: int = 1,
        k: int = 200,
        temperature: float = 0.1,
        log_dir: str | None = None,
        csv_path: str | None = None,
        batch_size: int = 256,
        verbose: bool = False,
    ):
        super().__init__(log_dir, every_epochs)
        self.train_data = _batched(train_data, batch_size)
        self.val_data = _batched(val_data, batch_size)
        self.k, self.temperature = int(k), float(temperature)
        self.csv_path = csv_path
        self.verbose = verbose
        self.history = []  # (epoch, top1, top5)

    def evaluate(self) -> dict:
        encoder = self.model.encoder
        x_tr, y_tr = extract_features(encoder, self.train_data)
        x_va, y_va = extract_features(encoder, self.val_data)
        return knn_accuracy(x_tr, y_tr, x_va, y_va, k=self.k, temperature=self.temperature)

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        started = time.time()
        acc = self.evaluate()
        seconds = time.time() - started
        self.history.append((epoch, acc["top1"], acc["top5"]))
        if logs is not None:
            logs["knn_top1"], logs["knn_top5"] = acc["top1"], acc["top5"]
        if self.writer is not None:
            with self.writer.as_default(step=epoch):
                tf.summary.scalar("knn/top1", acc["top1"])
                tf.summary.scalar("knn/top5", acc["top5"])
            self.writer.flush()
        if self.csv_path:
            append_csv(
                self.csv_path,
                ["epoch", "top1", "top5", "seconds"],
                [epoch, f"{acc['top1']:.5f}", f"{acc['top5']:.5f}", f"{seconds:.1f}"],
            )
        if self.verbose:
            log.info(
                "kNN monitor, epoch %d: top-1 %.4f, top-5 %.4f (%.1f s)", epoch + 1, acc["top1"], acc["top5"], seconds
            )


class _ProbeCallback(_MonitorCallback):
    """Holds a fixed batch of two views and runs the model on it in inference mode."""

    def __init__(self, views, log_dir, every_epochs=1):
        super().__init__(log_dir, every_epochs)
        view_a, view_b = views
        self.view_a = tf.constant(np.asarray(view_a, np.float32))
        self.view_b = tf.constant(np.asarray(view_b, np.float32))
        self._fn = None

    def _outputs(self):
        """``(h_a, z_a, z_b)`` of the fixed batch, float32 NumPy arrays."""
        if self._fn is None and keras.backend.backend() == "jax":
            encoder, projector = inference_fn(self.model.encoder), inference_fn(self.model.projector)

            def run_jax(a, b):
                h_a = encoder(a)
                return h_a, projector(h_a), projector(encoder(b))

            self._fn = run_jax
        if self._fn is None:
            model = self.model

            @tf.function
            def run(a, b):
                h_a = model.encoder(a, training=False)
                z_a = model.projector(h_a, training=False)
                z_b = model.projector(model.encoder(b, training=False), training=False)
                return tf.cast(h_a, tf.float32), tf.cast(z_a, tf.float32), tf.cast(z_b, tf.float32)

            self._fn = run
        return tuple(np.asarray(t) for t in self._fn(self.view_a, self.view_b))


class RepresentationHealth(_ProbeCallback):
    """Collapse indicators on a fixed batch every ``every_epochs``, under ``health/`` in TensorBoard.

    See :func:`~bt_keras.callbacks.health.representation_health`; the last
    values are in ``self.last``.

    Args:
        views: a fixed ``(view_a, view_b)`` pair of preprocessed batches (only view A is used).
        log_dir: TensorBoard directory, or ``None``.
        every_epochs: how often; the last epoch always runs.
        dead_threshold: as for :func:`~bt_keras.callbacks.health.representation_health`.

    Examples:

    >>> import numpy as np
    >>> x = np.zeros([4, 8, 8, 3], np.float32)
    >>> RepresentationHealth((x, x)).view_a.shape
    TensorShape([4, 8, 8, 3])
    """

    def __init__(self, views, log_dir: str | None = None, every_epochs: int = 1, dead_threshold: float = 0.01):
        super().__init__(views, log_dir, every_epochs)
        self.dead_threshold = dead_threshold
        self.last = {}

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        h, z, _ = self._outputs()
        stats = representation_health(h, z, self.dead_threshold)
        self.last = stats
        if self.writer is not None:
            with self.writer.as_default(step=epoch):
                for key, value in stats.items():
                    if key == "embedding_dim_std":
                        tf.summary.histogram("health/embedding_dim_std", value)
                    else:
                        tf.summary.scalar(f"health/{key}", value)
            self.writer.flush()


class CorrelationImage(_ProbeCallback):
    """The fixed batch's cross-correlation matrix C as a TensorBoard image every ``every_epochs``.

    Written as ``correlation/C`` with ``correlation/diag_mean`` and
    ``correlation/off_diag_rms`` scalars. A healthy run turns the picture from
    noise into a red diagonal on white.

    Args:
        views: a fixed ``(view_a, view_b)`` pair of preprocessed batches.
        log_dir: TensorBoard directory, or ``None``.
        every_epochs: how often; the last epoch always runs.
        max_side: most rows/columns drawn (:func:`~bt_keras.callbacks.health.correlation_heatmap`).

    Examples:

    >>> import numpy as np
    >>> x = np.zeros([4, 8, 8, 3], np.float32)
    >>> CorrelationImage((x, x), max_side=64).max_side
    64
    """

    def __init__(self, views, log_dir: str | None = None, every_epochs: int = 1, max_side: int = 128):
        super().__init__(views, log_dir, every_epochs)
        self.max_side = max_side
        self.last_image = None

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        _, z_a, z_b = self._outputs()
        c = keras.ops.convert_to_numpy(cross_correlation(z_a, z_b))
        d = c.shape[0]
        diag = np.diag(c)
        off_rms = math.sqrt(max((np.square(c).sum() - np.square(diag).sum()) / max(d * d - d, 1), 0.0))
        image = correlation_heatmap(c, self.max_side)
        self.last_image = image
        stride = max(1, math.ceil(d / self.max_side))
        if self.writer is not None:
            with self.writer.as_default(step=epoch):
                tf.summary.image(
                    "correlation/C",
                    image[None],
                    step=epoch,
                    description=f"C[::{stride}, ::{stride}] of a fixed batch (D={d}); blue -1, white 0, red +1",
                )
                tf.summary.scalar("correlation/diag_mean", float(diag.mean()))
                tf.summary.scalar("correlation/off_diag_rms", off_rms)
            self.writer.flush()
