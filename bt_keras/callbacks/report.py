"""The training report picture: loss terms and kNN accuracy against epochs (``RUN/report.png``).

Examples:

>>> from bt_keras.callbacks.report import plot_report
>>> plot_report({"epoch": [0, 1], "loss": [900.0, 700.0]}, {}, "/tmp/bt_doc_report2.png")
'/tmp/bt_doc_report2.png'
"""

from __future__ import annotations

import csv
import io

import keras
import numpy as np

from bt_keras.io import atomic_write


def read_history(path: str) -> dict:
    """A CSV log (``history.csv``, ``knn.csv``) as ``{column: [float, ...]}``; ``{}`` if there is none.

    Args:
        path: local or ``gs://`` CSV file, or ``None``.

    Examples:

    >>> read_history("/nonexistent/history.csv")
    {}
    """
    import tensorflow as tf

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


def _plot_losses(ax, history: dict, lambd: float | None) -> None:
    epochs = [e + 1 for e in history.get("epoch", range(len(history.get("loss", []))))]
    for key, label in (
        ("loss", "loss"),
        ("on_diag", "on-diagonal Σ(1−C_ii)²"),
        ("off_diag", "off-diagonal Σ C_ij²" + (f" × λ={lambd:g}" if lambd else "")),
    ):
        values = history.get(key)
        if values:
            values = np.asarray(values) * (lambd if key == "off_diag" and lambd else 1.0)
            ax.plot(epochs[: len(values)], values, marker="o", ms=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_title("Barlow Twins loss terms (training)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _plot_knn(ax, knn: dict) -> None:
    if knn.get("top1"):
        ke = [e + 1 for e in knn["epoch"]]
        ax.plot(ke, knn["top1"], marker="o", label="kNN top-1")
        if knn.get("top5"):
            ax.plot(ke, knn["top5"], marker="s", ms=3, alpha=0.6, label="kNN top-5")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "kNN monitor off\n(monitor.knn_every_epochs)", ha="center", va="center")
    ax.set_xlabel("epoch")
    ax.set_title("kNN accuracy (validation)")
    ax.grid(alpha=0.3)


def plot_report(history: dict, knn: dict, path: str, lambd: float | None = None, title: str = "") -> str:
    """Writes the training report picture: loss terms (left) and kNN top-1 (right) against epochs.

    Args:
        history: as from :func:`read_history` of ``history.csv``.
        knn: as from :func:`read_history` of ``knn.csv`` (may be empty).
        path: the PNG file, written atomically (local or ``gs://``).
        lambd: the off-diagonal weight λ; the off-diagonal term is drawn × λ.
        title: the picture's title.

    Examples:

    >>> plot_report({"epoch": [0, 1], "loss": [900.0, 700.0]}, {}, "/tmp/bt_doc_report.png")
    '/tmp/bt_doc_report.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    _plot_losses(ax1, history, lambd)
    _plot_knn(ax2, knn)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


class TrainingReport(keras.callbacks.Callback):
    """Writes ``report.png`` at the end of training.

    The curves come from ``history_path`` (the run's ``history.csv``, so
    resumed runs show every epoch) and ``knn_path``; without a history file,
    from the epochs seen by this callback.

    Args:
        path: the PNG file.
        history_path, knn_path: the run's CSV logs, or ``None``.
        lambd: the off-diagonal weight λ.
        title: the picture's title.

    Examples:

    >>> TrainingReport("/tmp/report.png").path
    '/tmp/report.png'
    """

    def __init__(
        self,
        path: str,
        history_path: str | None = None,
        knn_path: str | None = None,
        lambd: float | None = None,
        title: str = "",
    ):
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
            pts = [
                (e, t1, t5)
                for e, t1, t5 in zip(self._seen["epoch"], self._seen["knn_top1"], self._seen["knn_top5"])
                if np.isfinite(t1)
            ]
            knn = {"epoch": [p[0] for p in pts], "top1": [p[1] for p in pts], "top5": [p[2] for p in pts]}
        plot_report(history, knn, self.path, lambd=self.lambd, title=self.title)
