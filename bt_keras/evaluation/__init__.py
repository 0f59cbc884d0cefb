"""Evaluating frozen encoders: the kNN monitor and two linear-probe protocols.

- kNN (:mod:`~bt_keras.evaluation.knn`) as in lightly / solo-learn (and
  InstDisc): features L2-normalised, cosine similarity, the k nearest
  training examples vote with weight exp(sim / T); k=200, T=0.1 by default.
- Linear probe, ``fast`` (:mod:`~bt_keras.evaluation.linear`): features
  extracted once, multinomial logistic regression (L-BFGS) on standardised
  features, trained to convergence.
- Linear probe, ``paper``: the Barlow Twins protocol: a linear layer on the
  frozen encoder in inference mode (BN statistics frozen), SGD momentum 0.9,
  weight decay 1e-6, batch 256, lr 0.3 with per-epoch cosine annealing, 100
  epochs, random-resized crop + flip on the training images. The accuracy of
  the final epoch is reported (never the best on the test set).

:func:`evaluate` (:mod:`~bt_keras.evaluation.protocol`) runs them on a
:class:`~bt_keras.frozen.FrozenEncoder` (a run directory, a ``.keras``
encoder or an exported SavedModel, loaded by :mod:`bt_keras.saving`);
``bt-eval`` (:mod:`bt_keras.cli.eval`) writes a JSON report.

Examples:

>>> import numpy as np
>>> from bt_keras.evaluation import knn_accuracy
>>> rng = np.random.default_rng(0)
>>> centers = rng.normal(size=(3, 16)) * 10
>>> y = np.repeat(np.arange(3), 50); x = centers[y] + rng.normal(size=(150, 16))
>>> knn_accuracy(x, y, x, y, k=10)["top1"]
1.0

Command line::

    bt-eval --run runs/cifar --train-data folder:cifar10/train --test-data folder:cifar10/test --protocol both
"""

from __future__ import annotations

from bt_keras._lazy import lazy_namespace

PROTOCOLS = ("knn", "linear", "both")
LINEAR_MODES = ("fast", "paper")

# Name -> the module that defines it (imported on first use: bt-eval checks its flags first).
_EXPORTS = {
    **{name: "bt_keras.data.labelled" for name in ("LabelledImages", "augmented_labelled_dataset", "crop_flip_config")},
    **{name: "bt_keras.evaluation.features" for name in ("eval_batches", "extract_features")},
    **{name: "bt_keras.evaluation.knn" for name in ("knn_accuracy", "knn_predict")},
    **{name: "bt_keras.evaluation.linear" for name in ("linear_probe", "linear_probe_sgd")},
    **{name: "bt_keras.evaluation.protocol" for name in ("evaluate", "format_table")},
    **{name: "bt_keras.frozen" for name in ("FrozenEncoder", "find_saved_model", "load_frozen_encoder")},
    # The command line moved to bt_keras.cli.eval; its entry point stays reachable here.
    "main": "bt_keras.cli.eval",
}
_SUBMODULES = ("features", "knn", "linear", "protocol")

__all__ = sorted(["LINEAR_MODES", "PROTOCOLS", *(n for n in _EXPORTS if n != "main")])
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS, submodules=_SUBMODULES)
