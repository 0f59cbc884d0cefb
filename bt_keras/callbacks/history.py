"""``history.csv`` without phantom columns: a ``CSVLogger`` whose columns are the logged keys.

Keras' ``CSVLogger`` adds a ``val_<key>`` column for every key when the first
epoch logs no validation metrics (in case ``validation_freq`` produces them
later), so a run without validation data gets one always-``NA`` column per
metric. :class:`HistoryCSV` writes the keys the first epoch logs; appending to
an existing file (a resumed run), it keeps that file's columns, and first drops
the rows of the epoch it starts at and later ones: an epoch cut short by
SIGTERM, Ctrl-C or a non-finite loss logged a row, and the resumed run logs
that epoch again, so each epoch has one row, the last one run.

Examples:

>>> import numpy as np, keras, tempfile
>>> from bt_keras.callbacks.history import HistoryCSV
>>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
>>> model.compile(optimizer="sgd", loss="mse")
>>> path = tempfile.mkdtemp() + "/history.csv"
>>> _ = model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=1, verbose=0, callbacks=[HistoryCSV(path)])
>>> open(path).readline().strip()
'epoch,loss'
"""

from __future__ import annotations

import csv
import io

import keras
import tensorflow as tf

from bt_keras.io import atomic_write


class HistoryCSV(keras.callbacks.CSVLogger):
    """``keras.callbacks.CSVLogger`` (same arguments) without the always-``NA`` ``val_*`` columns.

    Args:
        filename: the CSV file (local or ``gs://``).
        separator: the column separator.
        append: append to an existing file, keeping its columns.
    """

    _header = None
    _opened = False

    def on_train_begin(self, logs=None):
        self._header = self._existing_header() if self.append else None
        self._opened = False  # opened at the first epoch, once its number is known

    def on_epoch_begin(self, epoch, logs=None):
        if not self._opened:
            if self.append:
                self._drop_rows_from(epoch)
            super().on_train_begin(logs)
            self._opened = True

    def _drop_rows_from(self, epoch: int) -> None:
        """Rewrites the file (atomically) without the rows of ``epoch`` and later, if it has any."""
        if not tf.io.gfile.exists(self.filename):
            return
        with tf.io.gfile.GFile(self.filename) as f:
            lines = f.read().splitlines(keepends=True)
        keep = lines[:1]
        for line in lines[1:]:
            first = next(csv.reader(io.StringIO(line), delimiter=self.sep), [""])
            try:
                if int(first[0]) >= epoch:
                    continue
            except (ValueError, IndexError):
                pass  # not a row of ours: keep it
            keep.append(line)
        if len(keep) < len(lines):
            atomic_write(self.filename, "".join(keep))

    def _existing_header(self):
        if not tf.io.gfile.exists(self.filename):
            return None
        with tf.io.gfile.GFile(self.filename) as f:
            first = f.readline().strip()
        columns = next(csv.reader([first], delimiter=self.sep)) if first else []
        return [c for c in columns if c != "epoch"] or None

    def on_epoch_end(self, epoch, logs=None):
        if not self._opened:  # fit called on_epoch_end without on_epoch_begin
            self.on_epoch_begin(epoch)
        if self.keys is None:
            self.keys = self._header or sorted((logs or {}).keys())
        super().on_epoch_end(epoch, logs)
