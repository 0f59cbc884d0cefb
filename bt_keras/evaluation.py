"""Evaluating frozen encoders: feature extraction and the weighted kNN monitor.

kNN as in lightly / solo-learn (and InstDisc): features L2-normalised, cosine
similarity, the k nearest training examples vote with weight exp(sim / T).

Example:

>>> import numpy as np
>>> from bt_keras.evaluation import knn_accuracy
>>> rng = np.random.default_rng(0)
>>> centers = rng.normal(size=(3, 16)) * 10
>>> y = np.repeat(np.arange(3), 50); x = centers[y] + rng.normal(size=(150, 16))
>>> knn_accuracy(x, y, x, y, k=10)["top1"]
1.0
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def extract_features(encoder, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Runs a frozen encoder (inference mode: BN uses its moving statistics)
    over a labelled ``(images, labels)`` dataset; returns float32 features and
    int labels as NumPy arrays."""
    infer = tf.function(lambda x: tf.cast(encoder(x, training=False), tf.float32), reduce_retracing=True)
    features, labels = [], []
    for images, y in dataset:
        features.append(infer(images).numpy())
        labels.append(np.asarray(y))
    if not features:
        raise ValueError("the evaluation dataset is empty")
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)


@tf.function(reduce_retracing=True)
def _knn_scores(batch, train, train_labels, k, temperature, num_classes):
    sim = tf.matmul(tf.math.l2_normalize(batch, axis=1), train, transpose_b=True)
    top_sim, top_idx = tf.math.top_k(sim, k=k)
    weights = tf.exp(top_sim / temperature)
    votes = tf.one_hot(tf.gather(train_labels, top_idx), num_classes)
    return tf.reduce_sum(votes * weights[..., None], axis=1)


def knn_predict(train_features, train_labels, test_features, num_classes=None, k=200,
                temperature=0.1, batch_size=1024) -> np.ndarray:
    """Class scores ``[n_test, num_classes]`` of the weighted kNN vote.

    Test features are processed ``batch_size`` at a time, so memory is
    O(batch_size × n_train) whatever the test set size.
    """
    train = tf.math.l2_normalize(tf.constant(train_features, tf.float32), axis=1)
    labels = tf.constant(np.asarray(train_labels), tf.int64)
    num_classes = int(num_classes or int(np.max(train_labels)) + 1)
    k = tf.constant(min(int(k), int(train.shape[0])), tf.int32)
    temperature = tf.constant(temperature, tf.float32)
    depth = tf.constant(num_classes, tf.int32)
    test = np.asarray(test_features, np.float32)
    out = [_knn_scores(tf.constant(test[i : i + batch_size]), train, labels, k, temperature, depth).numpy()
           for i in range(0, len(test), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)


def knn_accuracy(train_features, train_labels, test_features, test_labels, k=200,
                 temperature=0.1, batch_size=1024) -> dict:
    """Top-1 and top-5 accuracy of the weighted kNN classifier."""
    test_labels = np.asarray(test_labels)
    num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, batch_size)
    ranked = np.argsort(-scores, axis=1, kind="stable")
    top1 = float(np.mean(ranked[:, 0] == test_labels))
    top5 = float(np.mean(np.any(ranked[:, :5] == test_labels[:, None], axis=1)))
    return {"top1": top1, "top5": top5}
