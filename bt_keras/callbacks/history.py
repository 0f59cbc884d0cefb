"""``history.csv`` without phantom columns: a ``CSVLogger`` whose columns are the logged keys.

Keras' ``CSVLogger`` adds a ``val_<key>`` column for every key when the first
epoch logs no validation metrics (in case ``validation_freq`` produces them
later), so a run without validation data gets one always-``NA`` column per
metric. :class:`HistoryCSV` writes the keys the first epoch logs; appending to
an existing file (a resumed run), it keeps that file's columns.

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

import keras
import tensorflow as tf


class HistoryCSV(keras.callbacks.CSVLogger):
    """``keras.callbacks.CSVLogger`` (same arguments) without the always-``NA`` ``val_*`` columns.

    Args:
        filename: the CSV file (local or ``gs://``).
        separator: the column separator.
        append: append to an existing file, keeping its columns.
    """

    def on_train_begin(self, logs=None):
        header = self._existing_header() if self.append else None
        super().on_train_begin(logs)
        self._header = header

    def _existing_header(self):
        if not tf.io.gfile.exists(self.filename):
            return None
        with tf.io.gfile.GFile(self.filename) as f:
            first = f.readline().strip()
        columns = next(csv.reader([first], delimiter=self.sep)) if first else []
        return [c for c in columns if c != "epoch"] or None

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None:
            self.keys = self._header or sorted((logs or {}).keys())
        super().on_epoch_end(epoch, logs)
