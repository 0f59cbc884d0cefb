"""The demo set: scikit-learn's bundled digits as small RGB images, with a fixed split; no network.

Examples:

>>> from bt_keras.data.demo import load_demo
>>> load_demo("train")[0].shape
(1438, 32, 32, 3)
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import tensorflow as tf

from bt_keras.errors import DataError

__all__ = ["DEMO_TRAIN_FRACTION", "load_demo"]

DEMO_TRAIN_FRACTION = 0.8


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images float ``[1797, 8, 8]`` (0..16) and labels ``[1797]``.

    Read from the CSV scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the
    label per row, what ``load_digits`` parses) without importing scikit-learn, which costs every
    ``bt-train`` on the demo about a CPU-second; ``load_digits`` where the file is not there.
    """
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


@functools.cache
def _demo_arrays():
    images, target = _digits()
    x = images.astype(np.float32) * (255.0 / 16.0)  # [1797, 8, 8] in 0..255
    x = tf.image.resize(x[..., None], [32, 32], method="bicubic").numpy()
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    x = np.repeat(x, 3, axis=-1)
    y = target.astype(np.int32)
    order = np.random.default_rng(20240611).permutation(len(x))
    x, y = x[order], y[order]
    n_train = int(round(DEMO_TRAIN_FRACTION * len(x)))
    for a in (x, y):
        a.setflags(write=False)
    return x, y, n_train


def load_demo(split: str = "train"):
    """The demo set: (images uint8 [N, 32, 32, 3], labels int32 [N]).

    scikit-learn's digits (8×8, values 0..16) scaled to 0..255, upsampled
    bicubically to 32×32 and replicated to RGB. ``train`` is the first 80% of
    a fixed permutation (1,438 images), ``test`` the other 359.

    >>> x, y = load_demo("test")
    >>> x.shape, x.dtype, int(y.max())
    ((359, 32, 32, 3), dtype('uint8'), 9)
    """
    x, y, n_train = _demo_arrays()
    if split == "train":
        return x[:n_train], y[:n_train]
    if split == "test":
        return x[n_train:], y[n_train:]
    raise DataError(f"demo: unknown split {split!r} (use demo:train or demo:test)")
