"""The weighted kNN classifier of lightly / solo-learn (and InstDisc).

Features are L2-normalised, similarity is cosine, and the k nearest training
examples vote with weight exp(sim / T); k=200, T=0.1 by default.

Examples:

>>> import numpy as np
>>> from bt_keras.evaluation.knn import knn_accuracy
>>> rng = np.random.default_rng(0)
>>> centers = rng.normal(size=(3, 16)) * 10
>>> y = np.repeat(np.arange(3), 50); x = centers[y] + rng.normal(size=(150, 16))
>>> knn_accuracy(x, y, x, y, k=10)["top1"]
1.0
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


@tf.function(reduce_retracing=True)
def _knn_scores(batch, train, train_labels, k, temperature, num_classes):
    sim = tf.matmul(tf.math.l2_normalize(batch, axis=1), train, transpose_b=True)
    top_sim, top_idx = tf.math.top_k(sim, k=k)
    weights = tf.exp(top_sim / temperature)
    votes = tf.one_hot(tf.gather(train_labels, top_idx), num_classes)
    return tf.reduce_sum(votes * weights[..., None], axis=1)


def knn_predict(
    train_features, train_labels, test_features, num_classes=None, k=200, temperature=0.1, batch_size=1024
) -> np.ndarray:
    """Class scores ``[n_test, num_classes]`` of the weighted kNN vote.

    Test features are processed ``batch_size`` at a time, so memory is
    O(batch_size × n_train) whatever the test set size.

    Args:
        train_features, train_labels: the labelled bank.
        test_features: the examples to score.
        num_classes: default: the largest training label + 1.
        k, temperature: neighbours that vote, and the temperature of their weights.
        batch_size: test examples per similarity matrix.

    Examples:

    >>> import numpy as np
    >>> knn_predict(np.eye(2), [0, 1], np.array([[1.0, 0.1]]), k=1).argmax(axis=1)
    array([0])
    """
    train = tf.math.l2_normalize(tf.constant(train_features, tf.float32), axis=1)
    labels = tf.constant(np.asarray(train_labels), tf.int64)
    num_classes = int(num_classes or int(np.max(train_labels)) + 1)
    k = tf.constant(min(int(k), int(train.shape[0])), tf.int32)
    temperature = tf.constant(temperature, tf.float32)
    depth = tf.constant(num_classes, tf.int32)
    test = np.asarray(test_features, np.float32)
    out = [
        _knn_scores(tf.constant(test[i : i + batch_size]), train, labels, k, temperature, depth).numpy()
        for i in range(0, len(test), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)


def topk(scores, labels) -> dict:
    """Top-1 and top-5 accuracy of class ``scores`` ``[n, classes]`` against ``labels``.

    Args:
        scores: higher is more likely; ties keep the lower class first.
        labels: the true classes.

    Examples:

    >>> import numpy as np
    >>> topk(np.array([[0.1, 0.9], [0.8, 0.2]]), [1, 1])
    {'top1': 0.5, 'top5': 1.0}
    """
    labels = np.asarray(labels)
    ranked = np.argsort(-scores, axis=1, kind="stable")
    return {
        "top1": float(np.mean(ranked[:, 0] == labels)),
        "top5": float(np.mean(np.any(ranked[:, :5] == labels[:, None], axis=1))),
    }


def knn_accuracy(
    train_features, train_labels, test_features, test_labels, k=200, temperature=0.1, batch_size=1024
) -> dict:
    """Top-1 and top-5 accuracy of the weighted kNN classifier.

    Args:
        train_features, train_labels: the labelled bank.
        test_features, test_labels: the labelled examples scored against it.
        k, temperature, batch_size: as for :func:`knn_predict`.

    Examples:

    >>> import numpy as np
    >>> knn_accuracy(np.eye(3), [0, 1, 2], np.eye(3), [0, 1, 2], k=1)
    {'top1': 1.0, 'top5': 1.0}
    """
    test_labels = np.asarray(test_labels)
    num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, batch_size)
    return topk(scores, test_labels)
