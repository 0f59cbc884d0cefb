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
  accuracy against epochs).
- :class:`TimeBudget`: stops training after a wall-clock budget of training
  steps and can drive the learning rate by the elapsed fraction of it.

Example:

>>> import numpy as np, tensorflow as tf, bt_keras
>>> from bt_keras import callbacks
>>> enc = bt_keras.small_cnn(widths=(8, 16), input_shape=(16, 16, 3))
>>> model = bt_keras.BarlowTwins(enc, projector_dims=(32, 32))
>>> model.compile(optimizer="adam")
>>> x = np.random.rand(32, 16, 16, 3).astype("float32")
>>> pairs = tf.data.Dataset.from_tensor_slices((x, x[::-1])).batch(16, drop_remainder=True)
>>> health = callbacks.RepresentationHealth((x, x[::-1]), log_dir="/tmp/bt_doc_logs")
>>> _ = model.fit(pairs, epochs=1, verbose=0, callbacks=[health])
>>> sorted(health.last)[:2]
['dead_fraction', 'effective_rank']
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from bt_keras.evaluation import extract_features, knn_accuracy
from bt_keras.losses import cross_correlation

MONITOR_SUBDIR = "monitor"
_WRITERS: dict = {}


# --------------------------------------------------------------------------- pure functions


def effective_rank(features) -> float:
    """exp(entropy) of the normalised singular values of the centred features
    (Roy & Vetterli 2007; RankMe): between 1 (all on one line) and min(N, D).

    >>> import numpy as np
    >>> round(effective_rank(np.random.default_rng(0).normal(size=(1000, 4))), 1)
    4.0
    """
    x = np.asarray(features, np.float64)
    x = x - x.mean(axis=0)
    s = np.linalg.svd(x, compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def representation_health(features, embeddings, dead_threshold: float = 0.01) -> dict:
    """Collapse indicators of one batch of encoder ``features`` [N, F] and
    projector ``embeddings`` [N, D].

    - ``embedding_std``/``embedding_std_min``: mean/min over dimensions of the
      batch std of the L2-normalised embeddings × √D (≈ 1 when spread over
      all directions, → 0 at collapse), with ``embedding_dim_std`` the
      per-dimension values;
    - ``effective_rank`` of the features and ``effective_rank_ratio`` =
      rank / min(N, F);
    - ``dead_fraction`` / ``embedding_dead_fraction``: share of dimensions
      whose std is below ``dead_threshold`` × the mean std (scale-free).

    >>> import numpy as np
    >>> f = np.random.default_rng(0).normal(size=(256, 8)); f[:, 0] = 1.0
    >>> representation_health(f, f)["dead_fraction"]
    0.125
    """
    f = np.asarray(features, np.float64)
    z = np.asarray(embeddings, np.float64)
    zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    dim_std = zn.std(axis=0) * math.sqrt(z.shape[1])

    def dead(x):
        std = x.std(axis=0)
        return float(np.mean(std < dead_threshold * max(std.mean(), 1e-30)))

    rank = effective_rank(f)
    return {
        "embedding_std": float(dim_std.mean()),
        "embedding_std_min": float(dim_std.min()),
        "embedding_dim_std": dim_std.astype(np.float32),
        "effective_rank": rank,
        "effective_rank_ratio": rank / min(f.shape),
        "dead_fraction": dead(f),
        "embedding_dead_fraction": dead(z),
    }


def correlation_heatmap(c, max_side: int = 128, cell: Optional[int] = None) -> np.ndarray:
    """A D×D cross-correlation matrix as an RGB uint8 heatmap.

    Every s-th row and column is kept (s = ⌈D / max_side⌉): a strided
    subsample keeps diagonal entries on the diagonal, where block averages
    would dilute them. Colours: blue −1, white 0, red +1 (``RdBu_r``); each
    entry becomes a ``cell``×``cell`` square (default: ≥ 256 px per side).

    >>> import numpy as np
    >>> correlation_heatmap(np.eye(1024)).shape
    (256, 256, 3)
    """
    from matplotlib import colormaps

    c = np.asarray(c, np.float32)
    stride = max(1, math.ceil(c.shape[0] / max_side))
    sub = np.clip(c[::stride, ::stride], -1.0, 1.0)
    rgb = (colormaps["RdBu_r"]((sub + 1.0) / 2.0)[..., :3] * 255).round().astype(np.uint8)
    cell = cell or max(1, math.ceil(256 / sub.shape[0]))
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


def read_history(path: str) -> dict:
    """A CSV log (``history.csv``, ``knn.csv``) as ``{column: [float, ...]}``."""
    if not path or not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        for key, value in row.items():
            try:
                out.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                out.setdefault(key, []).append(float("nan"))
    return out


def plot_report(history: dict, knn: dict, path: str, lambd: Optional[float] = None, title: str = "") -> str:
    """Writes the training report picture: loss terms (left) and kNN top-1
    (right) against epochs. ``history``/``knn`` as from :func:`read_history`.

    >>> plot_report({"epoch": [0, 1], "loss": [900.0, 700.0]}, {}, "/tmp/bt_doc_report.png")
    '/tmp/bt_doc_report.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [e + 1 for e in history.get("epoch", range(len(history.get("loss", []))))]
    for key, label in (("loss", "loss"), ("on_diag", "on-diagonal Σ(1−C_ii)²"),
                       ("off_diag", "off-diagonal Σ C_ij²" + (f" × λ={lambd:g}" if lambd else ""))):
        values = history.get(key)
        if values:
            values = np.asarray(values) * (lambd if key == "off_diag" and lambd else 1.0)
            ax1.plot(epochs[: len(values)], values, marker="o", ms=3, label=label)
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_title("Barlow Twins loss terms (training)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    if knn.get("top1"):
        ke = [e + 1 for e in knn["epoch"]]
        ax2.plot(ke, knn["top1"], marker="o", label="kNN top-1")
        if knn.get("top5"):
            ax2.plot(ke, knn["top5"], marker="s", ms=3, alpha=0.6, label="kNN top-5")
        ax2.set_ylim(0, 1)
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "kNN monitor off\n(monitor.knn_every_epochs)", ha="center", va="center")
    ax2.set_xlabel("epoch")
    ax2.set_title("kNN accuracy (validation)")
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(buf.getvalue())
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


# --------------------------------------------------------------------------- callbacks


class _MonitorCallback(keras.callbacks.Callback):
    """Shared: lazy TensorBoard writer, every-N-epochs gating, last epoch always."""

    def __init__(self, log_dir: Optional[str], every_epochs: int = 1):
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


class KnnMonitor(_MonitorCallback):
    """kNN accuracy of ``model.encoder`` (inference mode) every ``every_epochs``.

    ``train_data`` is the labelled bank, ``val_data`` the labelled set
    scored against it: each a dataset of ``(images, labels)`` batches or a
    tuple of preprocessed arrays. Results go to TensorBoard (``knn/top1``,
    ``knn/top5`` at step = epoch), to ``csv_path`` (epoch, top1, top5,
    seconds) and into the epoch logs as ``knn_top1``/``knn_top5``.

    >>> import numpy as np
    >>> x = np.random.rand(20, 8, 8, 3).astype("float32"); y = np.arange(20) % 2
    >>> KnnMonitor((x, y), (x, y), every_epochs=5).every_epochs
    5
    """

    def __init__(self, train_data, val_data, every_epochs: int = 1, k: int = 200, temperature: float = 0.1,
                 log_dir: Optional[str] = None, csv_path: Optional[str] = None, batch_size: int = 256,
                 verbose: bool = False):
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
            _append_csv(self.csv_path, ["epoch", "top1", "top5", "seconds"],
                        [epoch, f"{acc['top1']:.5f}", f"{acc['top5']:.5f}", f"{seconds:.1f}"])
        if self.verbose:
            print(f"kNN monitor, epoch {epoch + 1}: top-1 {acc['top1']:.4f}, top-5 {acc['top5']:.4f} "
                  f"({seconds:.1f} s)", flush=True)


def _append_csv(path, header, row):
    exists = tf.io.gfile.exists(path)
    text = ""
    if exists:
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
    if not text:
        text = ",".join(header) + "\n"
    text += ",".join(str(v) for v in row) + "\n"
    # Rewritten whole (small file), atomically: works on gs:// where appends do not.
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(text)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


class _ProbeCallback(_MonitorCallback):
    """Holds a fixed batch of two views and runs the model on it in inference mode."""

    def __init__(self, views, log_dir, every_epochs=1):
        super().__init__(log_dir, every_epochs)
        view_a, view_b = views
        self.view_a = tf.constant(np.asarray(view_a, np.float32))
        self.view_b = tf.constant(np.asarray(view_b, np.float32))
        self._fn = None

    def _outputs(self):
        if self._fn is None:
            model = self.model

            @tf.function
            def run(a, b):
                h_a = model.encoder(a, training=False)
                z_a = model.projector(h_a, training=False)
                z_b = model.projector(model.encoder(b, training=False), training=False)
                return tf.cast(h_a, tf.float32), tf.cast(z_a, tf.float32), tf.cast(z_b, tf.float32)

            self._fn = run
        return self._fn(self.view_a, self.view_b)


class RepresentationHealth(_ProbeCallback):
    """Collapse indicators on a fixed batch every ``every_epochs`` (see
    :func:`representation_health`), under ``health/`` in TensorBoard; the last
    values are in ``self.last``.

    ``views``: a fixed ``(view_a, view_b)`` pair of preprocessed batches
    (only view A is used here).
    """

    def __init__(self, views, log_dir: Optional[str] = None, every_epochs: int = 1, dead_threshold: float = 0.01):
        super().__init__(views, log_dir, every_epochs)
        self.dead_threshold = dead_threshold
        self.last = {}

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        h, z, _ = self._outputs()
        stats = representation_health(h.numpy(), z.numpy(), self.dead_threshold)
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
    """The fixed batch's cross-correlation matrix C as a TensorBoard image
    (``correlation/C``) every ``every_epochs``, with ``correlation/diag_mean``
    and ``correlation/off_diag_rms`` scalars. A healthy run turns the picture
    from noise into a red diagonal on white."""

    def __init__(self, views, log_dir: Optional[str] = None, every_epochs: int = 1, max_side: int = 128):
        super().__init__(views, log_dir, every_epochs)
        self.max_side = max_side
        self.last_image = None

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        _, z_a, z_b = self._outputs()
        c = cross_correlation(z_a, z_b).numpy()
        d = c.shape[0]
        diag = np.diag(c)
        off_rms = math.sqrt(max((np.square(c).sum() - np.square(diag).sum()) / max(d * d - d, 1), 0.0))
        image = correlation_heatmap(c, self.max_side)
        self.last_image = image
        stride = max(1, math.ceil(d / self.max_side))
        if self.writer is not None:
            with self.writer.as_default(step=epoch):
                tf.summary.image("correlation/C", image[None], step=epoch,
                                 description=f"C[::{stride}, ::{stride}] of a fixed batch (D={d}); "
                                             "blue -1, white 0, red +1")
                tf.summary.scalar("correlation/diag_mean", float(diag.mean()))
                tf.summary.scalar("correlation/off_diag_rms", off_rms)
            self.writer.flush()


class TrainingReport(keras.callbacks.Callback):
    """Writes ``report.png`` at the end of training from ``history_path``
    (the run's ``history.csv``, so resumed runs show every epoch) and
    ``knn_path``; falls back to the epochs seen by this callback when there
    is no history file.
    """

    def __init__(self, path: str, history_path: Optional[str] = None, knn_path: Optional[str] = None,
                 lambd: Optional[float] = None, title: str = ""):
        super().__init__()
        self.path, self.history_path, self.knn_path = path, history_path, knn_path
        self.lambd, self.title = lambd, title
        self._seen = {}

    def on_epoch_end(self, epoch, logs=None):
        self._seen.setdefault("epoch", []).append(epoch)
        for key in ("loss", "on_diag", "off_diag", "knn_top1", "knn_top5"):
            self._seen.setdefault(key, []).append(float((logs or {}).get(key, float("nan"))))

    def on_train_end(self, logs=None):
        history = read_history(self.history_path) or self._seen
        knn = read_history(self.knn_path)
        if not knn and any(np.isfinite(self._seen.get("knn_top1", []))):
            pts = [(e, t1, t5) for e, t1, t5 in zip(self._seen["epoch"], self._seen["knn_top1"],
                                                    self._seen["knn_top5"]) if np.isfinite(t1)]
            knn = {"epoch": [p[0] for p in pts], "top1": [p[1] for p in pts], "top5": [p[2] for p in pts]}
        plot_report(history, knn, self.path, lambd=self.lambd, title=self.title)


class TimeBudget(keras.callbacks.Callback):
    """Stops training once ``seconds`` of training steps have run.

    Only the time inside training steps counts (from batch begin to batch
    end, input waiting included); epoch-end work such as the kNN monitor
    does not, nor does the first step, which traces and compiles the graph
    (``first_step_seconds``). ``learning_rate``: optional ``f(fraction) -> lr`` of the
    elapsed fraction of the budget, set before every step (the optimizer
    needs a float learning rate). On a shared machine throughput drifts, so
    a schedule tied to elapsed time ends its decay when the budget ends,
    where a step-count schedule sized in advance would be cut short or
    finish early.

    >>> cb = TimeBudget(60, learning_rate=lambda f: 0.1 * (1 - f))
    >>> cb.fraction
    0.0
    """

    def __init__(self, seconds: float, learning_rate: Optional[Callable[[float], float]] = None):
        super().__init__()
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        self.seconds = float(seconds)
        self.learning_rate = learning_rate
        self.elapsed = 0.0
        self.steps = 0
        self.first_step_seconds = 0.0
        self._t0 = None

    @property
    def fraction(self) -> float:
        return min(self.elapsed / self.seconds, 1.0)

    def on_train_batch_begin(self, batch, logs=None):
        if self.learning_rate is not None:
            self.model.optimizer.learning_rate = float(self.learning_rate(self.fraction))
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._t0 is not None and self.steps > 0:
            self.elapsed += time.perf_counter() - self._t0
        else:
            self.first_step_seconds = time.perf_counter() - self._t0
        self.steps += 1
        if self.elapsed >= self.seconds:
            self.model.stop_training = True


# --------------------------------------------------------------------------- wiring for bt-train


def sample_labelled(source, max_examples: int, contract, *, data_dir=None, seed: int = 0, batch_size: int = 256,
                    max_mb: int = 512):
    """A fixed random subset of a labelled source, preprocessed as for
    evaluation: ``(images float32, labels int)`` arrays, at most
    ``max_examples`` and at most ``max_mb`` of images (one pass over the
    source). ``max_examples`` 0 keeps every image.

    >>> from bt_keras.preprocess import PreprocessingContract
    >>> x, y = sample_labelled("demo:test", 50, PreprocessingContract(32, crop_fraction=1.0))
    >>> x.shape
    (50, 32, 32, 3)
    """
    from bt_keras.data import count_examples, eval_dataset

    per_image = contract.image_size ** 2 * 3 * 4
    n = count_examples(source, data_dir=data_dir)
    cap = min(max_examples or n, n, max(1, max_mb * 2**20 // per_image))
    keep = np.zeros(n + 1, bool)
    keep[np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))] = True
    ds = eval_dataset(source, batch_size=batch_size, image_size=contract.image_size, mean=contract.mean,
                      std=contract.std, crop_fraction=contract.crop_fraction, data_dir=data_dir)
    xs, ys, seen = [], [], 0
    for images, labels in ds:
        b = int(labels.shape[0])
        mask = keep[seen: seen + b]
        if len(mask) < b:
            mask = np.pad(mask, (0, b - len(mask)))
        if mask.any():
            xs.append(images.numpy()[mask])
            ys.append(labels.numpy()[mask])
        seen += b
        if seen > np.flatnonzero(keep).max():
            break
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def probe_views(dataset, strategy, size: int, source_fn: Optional[Callable] = None):
    """A fixed ``(view_a, view_b)`` batch of at most ``size`` pairs.

    With one replica it is the first batch of the training ``dataset`` (a
    second iterator: training's own stream is untouched). A distributed
    dataset is never iterated here: on several workers its iterator takes
    part in collectives that the other workers would not join, so
    ``source_fn()`` builds a local two-view dataset instead.
    """
    plain = isinstance(dataset, tf.data.Dataset)
    ds = dataset if plain else (source_fn() if source_fn is not None else None)
    if ds is None:
        raise ValueError("a distributed dataset needs source_fn to build the probe batch")
    view_a, view_b = next(iter(ds))
    return np.asarray(view_a)[:size], np.asarray(view_b)[:size]


def monitor_callbacks(cfg, run_dir: str, *, dataset, strategy, chief: bool, contract) -> list:
    """The ``monitor:`` section of a config as callbacks (empty on non-chief
    workers). Health and the correlation picture need a fixed batch, the kNN
    monitor a labelled bank (``monitor.knn_train_source``, default
    ``eval.train_source``) and validation set (``monitor.knn_val_source``,
    default ``data.val_source`` then ``eval.test_source``), subsampled to
    ``knn_max_train`` / ``knn_max_val`` once at the start.
    """
    from bt_keras.cli import UserError

    m = cfg.monitor
    if not chief:
        return []
    log_dir = os.path.join(run_dir, "logs", MONITOR_SUBDIR)
    out = []
    if isinstance(strategy, tf.distribute.TPUStrategy) and (m.health or m.correlation_image or m.knn_every_epochs):
        # They call the model outside the replicated TPU step, which TPUStrategy does not support.
        print("bt-train: monitor.health, monitor.correlation_image and the kNN monitor are skipped on TPU; "
              "run bt-eval on saved encoders instead", flush=True)
        m = dataclasses.replace(m, health=False, correlation_image=False, knn_every_epochs=0)
    if m.health or m.correlation_image:
        d = cfg.data

        def local_pairs():
            from bt_keras.data import two_view_dataset

            return two_view_dataset(d.source, batch_size=min(m.probe_batch, cfg.train.batch_size),
                                    image_size=d.image_size, augment=d.augment, seed=d.seed + 1,
                                    data_dir=d.data_dir, cache=d.cache)

        views = probe_views(dataset, strategy, m.probe_batch, local_pairs)
        if m.health:
            out.append(RepresentationHealth(views, log_dir))
        if m.correlation_image:
            out.append(CorrelationImage(views, log_dir))
    if m.knn_every_epochs > 0:
        bank_src = m.knn_train_source or cfg.eval.train_source
        val_src = m.knn_val_source or cfg.data.val_source or cfg.eval.test_source
        if not bank_src or not val_src:
            raise UserError("monitor.knn_every_epochs needs labelled sources: set monitor.knn_train_source and "
                            "monitor.knn_val_source (or eval.train_source / eval.test_source)")
        bank = sample_labelled(bank_src, m.knn_max_train, contract, data_dir=cfg.data.data_dir,
                               batch_size=cfg.eval.batch_size, seed=1)
        val = sample_labelled(val_src, m.knn_max_val, contract, data_dir=cfg.data.data_dir,
                              batch_size=cfg.eval.batch_size, seed=2)
        out.append(KnnMonitor(bank, val, every_epochs=m.knn_every_epochs, k=cfg.eval.k,
                              temperature=cfg.eval.temperature, log_dir=log_dir,
                              csv_path=os.path.join(run_dir, "knn.csv"), batch_size=cfg.eval.batch_size))
    if m.report:
        out.append(TrainingReport(os.path.join(run_dir, "report.png"), os.path.join(run_dir, "history.csv"),
                                  os.path.join(run_dir, "knn.csv"), lambd=cfg.model.lambd,
                                  title=os.path.basename(run_dir.rstrip("/"))))
    return out
