"""The training report picture (``RUN/report.png``): loss terms against epochs, and the kNN accuracy.

:class:`TrainingReport` draws it when training ends; :func:`write_run_report`
redraws it after the final evaluation, with the trained encoder's kNN next to
random initialisation.

Examples:

>>> import os, tempfile
>>> from bt_keras.callbacks.report import plot_report
>>> path = plot_report({"epoch": [0, 1], "loss": [900.0, 700.0]}, {}, os.path.join(tempfile.mkdtemp(), "r.png"))
>>> os.path.basename(path)
'r.png'
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
    from matplotlib.ticker import MaxNLocator

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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5 tick
    ax.set_title("Barlow Twins loss terms (training)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


_FINAL_KEYS = (("trained", "knn_trained"), ("random init", "knn_random_init"))


def _plot_knn(ax, knn: dict, final: dict, last_epoch: int) -> None:
    """kNN top-1/top-5 against epochs, the final evaluation marked on it; or, without a monitor, the final bars."""
    from matplotlib.ticker import MaxNLocator

    if knn.get("top1"):
        ke = [e + 1 for e in knn["epoch"]]
        ax.plot(ke, knn["top1"], marker="o", label="kNN top-1 (monitor)")
        if knn.get("top5"):
            ax.plot(ke, knn["top5"], marker="s", ms=3, alpha=0.6, label="kNN top-5 (monitor)")
        if "trained" in final:
            ax.plot([last_epoch], [final["trained"]["top1"]], "k*", ms=12, label="top-1 after training")
        if "random init" in final:
            ax.axhline(final["random init"]["top1"], color="gray", ls="--", label="top-1 at random init")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("kNN accuracy (validation)")
    else:
        names = list(final)
        x = np.arange(len(names))
        for offset, key, alpha in ((-0.2, "top1", 1.0), (0.2, "top5", 0.5)):
            values = [final[n][key] for n in names]
            bars = ax.bar(x + offset, values, width=0.38, alpha=alpha, label=key.replace("top", "top-"))
            ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_xticks(x, [f"{n} encoder" if n == "trained" else n for n in names])
        ax.set_title("kNN accuracy after training (test set)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)


def plot_report(
    history: dict, knn: dict, path: str, lambd: float | None = None, title: str = "", final_knn: dict | None = None
) -> str:
    """Writes the training report picture: loss terms against epochs, and the kNN accuracy.

    The right panel shows the kNN monitor's curve (``knn``) with the final
    evaluation marked on it, or, without a monitor, the final kNN of the
    trained encoder next to random initialisation as bars; with neither, the
    picture has only the loss panel.

    Args:
        history: as from :func:`read_history` of ``history.csv``.
        knn: as from :func:`read_history` of ``knn.csv`` (may be empty).
        path: the PNG file, written atomically (local or ``gs://``).
        lambd: the off-diagonal weight λ; the off-diagonal term is drawn × λ.
        title: the picture's title.
        final_knn: ``{"trained": {"top1", "top5"}, "random init": {...}}``, either optional.

    Examples:

    >>> import os, tempfile
    >>> path = plot_report({"epoch": [0, 1], "loss": [900.0, 700.0]}, {}, os.path.join(tempfile.mkdtemp(), "r.png"))
    >>> os.path.isfile(path)
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = {name: r for name, r in (final_knn or {}).items() if r}
    panels = 2 if knn.get("top1") or final else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    _plot_losses(axes[0][0], history, lambd)
    if panels == 2:
        epochs = history.get("epoch") or knn.get("epoch") or [0]
        _plot_knn(axes[0][1], knn, final, int(max(epochs)) + 1)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


def write_run_report(run_dir: str, summary: dict, lambd: float | None = None) -> str:
    """Redraws ``RUN/report.png`` from the run's logs with the final kNN of ``summary`` (after training).

    The :class:`TrainingReport` callback draws the picture when ``fit`` ends;
    the trainer calls this once the final evaluation is known, so the
    picture also shows the trained encoder's kNN next to random initialisation.

    Args:
        run_dir: the run directory (``history.csv``, ``knn.csv``; ``report.png`` is written there).
        summary: the run's summary (``knn_trained``, ``knn_random_init``, either optional).
        lambd: the off-diagonal weight λ.

    Examples:

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> final = {"knn_trained": {"top1": 0.9, "top5": 1.0}, "knn_random_init": {"top1": 0.8, "top5": 0.99}}
    >>> write_run_report(d, final).endswith("report.png")
    True
    """
    final = {name: summary[key] for name, key in _FINAL_KEYS if summary.get(key)}
    return plot_report(
        read_history(f"{run_dir}/history.csv"),
        read_history(f"{run_dir}/knn.csv"),
        f"{run_dir.rstrip('/')}/report.png",
        lambd=lambd,
        title=run_dir.rstrip("/").rsplit("/", 1)[-1],
        final_knn=final,
    )


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
