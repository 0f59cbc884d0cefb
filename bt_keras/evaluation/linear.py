"""Two linear-probe protocols on a frozen encoder.

- ``fast`` (:func:`linear_probe`): features extracted once, multinomial
  logistic regression (L-BFGS) on standardised features, trained to
  convergence.
- ``paper`` (:func:`linear_probe_sgd`): the Barlow Twins protocol: a linear
  layer on the frozen encoder in inference mode (BN statistics frozen), SGD
  momentum 0.9, weight decay 1e-6, batch 256, lr 0.3 with per-epoch cosine
  annealing, 100 epochs, random-resized crop + flip on the training images.
  The accuracy of the final epoch is reported (never the best on the test set).

Examples:

>>> import numpy as np
>>> from bt_keras.evaluation.linear import linear_probe
>>> y = np.arange(60) % 3; x = np.eye(3)[y] * 5
>>> linear_probe(x, y, x, y)["top1"]
1.0
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from bt_keras.data.labelled import LabelledImages, crop_flip_config
from bt_keras.errors import UserError
from bt_keras.evaluation.features import eval_batches
from bt_keras.evaluation.knn import topk


def linear_probe(
    train_features, train_labels, test_features, test_labels, *, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4
) -> dict:
    """Fast linear probe: multinomial logistic regression on frozen features.

    Features are standardised with the training set's mean/std, then
    L-BFGS runs to convergence (``converged`` in the result says whether it
    stopped on ``tol``, scikit-learn's gradient criterion, rather than
    ``max_iter``).

    Args:
        train_features, train_labels: the probe's training set.
        test_features, test_labels: the set it is scored on.
        C: scikit-learn's inverse L2 strength.
        max_iter, tol: L-BFGS stopping rules.

    Examples:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 300); x = np.eye(3)[y] * 5 + rng.normal(size=(300, 3))
    >>> linear_probe(x, y, x, y)["top1"] > 0.95
    True
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x_tr = np.asarray(train_features, np.float64)
    x_te = np.asarray(test_features, np.float64)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std[std < 1e-12] = 1.0  # constant (dead) dimensions carry no information
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    clf = LogisticRegression(C=C, max_iter=max_iter, tol=tol)
    started = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_tr, np.asarray(train_labels))
    n_iter = int(np.max(clf.n_iter_))
    num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
    scores = np.full((len(x_te), num_classes), -np.inf)
    scores[:, clf.classes_] = clf.predict_log_proba(x_te)
    out = topk(scores, test_labels)
    out.update(
        {
            "mode": "fast",
            "method": "multinomial logistic regression (L-BFGS) on standardised features",
            "C": C,
            "iterations": n_iter,
            "converged": n_iter < max_iter,
            "train_top1": float(clf.score(x_tr, np.asarray(train_labels))),
            "seconds": round(time.time() - started, 1),
        }
    )
    return out


def linear_probe_sgd(
    encoder,
    train_data,
    test_data,
    contract,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 0.3,
    momentum: float = 0.9,
    weight_decay: float = 1e-6,
    eval_batch_size: int = 256,
    data_dir=None,
    seed: int = 0,
    log: Callable | None = None,
    max_image_pixels=None,
) -> dict:
    """The paper's linear probe on a frozen encoder; reports the final epoch.

    A ``Dense(num_classes)`` (weights N(0, 0.01), bias 0) on the encoder's
    features in inference mode (BN moving statistics are used, never
    updated; no gradient reaches the encoder). SGD with momentum, L2 weight
    decay added to the gradient (PyTorch semantics, on weight and bias),
    lr ``learning_rate × ½(1 + cos(π·epoch/epochs))`` per epoch, random-resized
    crop + flip on the training images
    (:func:`~bt_keras.data.labelled.augmented_labelled_dataset`), centre crops
    for the test images.

    Args:
        encoder: a Keras model or a :class:`~bt_keras.frozen.FrozenEncoder`.
        train_data, test_data: labelled sources (see :mod:`bt_keras.data`).
        contract: the encoder's preprocessing contract.
        epochs, batch_size, learning_rate, momentum, weight_decay: the SGD protocol.
        eval_batch_size: test batch size.
        data_dir: TFDS ``data_dir``.
        seed: seeds the head's initialisation and the crops.
        log: ``log(message)`` once per epoch.
        max_image_pixels: larger images are skipped (None: the default limit).

    Examples:

    >>> import numpy as np, keras
    >>> from bt_keras.contract import PreprocessingContract
    >>> enc = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()])
    >>> c = PreprocessingContract(image_size=32, crop_fraction=1.0)
    >>> r = linear_probe_sgd(enc, "demo:test", "demo:test", c, epochs=1)
    >>> r["epochs"], r["num_train"], r["num_test"], r["feature_dim"]
    (1, 359, 359, 3)
    """
    if epochs < 1:
        raise UserError(f"epochs must be >= 1, got {epochs}")
    test_ds = eval_batches(test_data, contract, eval_batch_size, data_dir, max_image_pixels)
    raw = LabelledImages(train_data, contract, data_dir, cache_max_mb=1024, max_image_pixels=max_image_pixels)
    cfg = crop_flip_config(contract)
    features = tf.function(
        lambda x: tf.stop_gradient(tf.cast(encoder(x, training=False), tf.float32)), reduce_retracing=True
    )
    feature_dim = int(features(next(iter(test_ds))[0][:1]).shape[-1])
    head, train_step, opt = _head_and_step(
        raw.num_classes(), feature_dim, features, learning_rate, momentum, weight_decay, seed
    )
    started = time.time()
    history = []
    for epoch in range(epochs):
        opt.learning_rate = learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        losses, num_train = [], 0
        for x, y in raw.epoch(cfg, batch_size, epoch, seed):
            losses.append(float(train_step(x, y)))
            num_train += int(y.shape[0])
        history.append(float(np.mean(losses)))
        if log:
            log(f"linear probe epoch {epoch + 1}/{epochs}: train loss {history[-1]:.4f}")
    predict = tf.function(lambda x: head(features(x)), reduce_retracing=True)
    scores, ys = [], []
    for x, y in test_ds:
        scores.append(predict(x).numpy())
        ys.append(y.numpy())
    out = topk(np.concatenate(scores), np.concatenate(ys))
    out.update(
        {
            "num_train": num_train,
            "num_test": int(sum(len(y) for y in ys)),
            "feature_dim": feature_dim,
            "mode": "paper",
            "reported": "final epoch (not the best on the test set)",
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "schedule": "cosine per epoch",
            "momentum": momentum,
            "weight_decay": weight_decay,
            "augmentation": "random-resized crop (0.08-1) + horizontal flip",
            "train_loss_per_epoch": [round(v, 5) for v in history],
            "seconds": round(time.time() - started, 1),
        }
    )
    return out


def _head_and_step(num_classes, feature_dim, features, learning_rate, momentum, weight_decay, seed):
    """The linear head, its SGD step on frozen ``features`` and the optimizer (lr set per epoch)."""
    import keras

    keras.utils.set_random_seed(seed)
    head = keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
        bias_initializer="zeros",
        dtype="float32",
    )
    head.build((None, feature_dim))
    opt = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    opt.build(head.trainable_variables)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        f = features(x)
        with tf.GradientTape() as tape:
            loss = ce(y, head(f))
            decay = 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in head.trainable_variables])
            total = loss + decay
        grads = tape.gradient(total, head.trainable_variables)
        opt.apply_gradients(zip(grads, head.trainable_variables))
        return loss

    return head, train_step, opt
