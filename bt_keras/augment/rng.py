"""Counter-based random keys: every example's own stream from (seed, epoch, example id).

:func:`example_keys` hashes (seed, epoch key, example id) into an int64 key
and :func:`uniforms` turns a key into independent U[0, 1) draws (splitmix64,
plain integer ops, so a whole batch draws its parameters at once). The same
seed therefore gives the same views whatever the batch composition or the
order in which parallel workers deliver examples. The layout of one view's
draws (which uniform feeds which parameter) is fixed here too, so the
streams never change by accident.

Examples:

>>> import tensorflow as tf
>>> from bt_keras.augment.rng import example_keys, uniforms
>>> keys = example_keys(0, 0, tf.range(3, dtype=tf.int64))
>>> u = uniforms(keys, 5)
>>> u.shape, bool(tf.reduce_all((u >= 0) & (u < 1)))
(TensorShape([3, 5]), True)
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["NUM_UNIFORMS", "example_keys", "fold_key", "uniforms", "view_key"]

ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before falling back
# Layout of the uniform draws of one view.
U_AREA, U_RATIO, U_TOP, U_LEFT = (i * ATTEMPTS for i in range(4))
U_FLIP = 4 * ATTEMPTS
U_JITTER, U_FACTORS, U_ORDER = U_FLIP + 1, U_FLIP + 2, U_FLIP + 6
U_GRAY, U_BLUR, U_SIGMA, U_SOLAR = U_FLIP + 10, U_FLIP + 11, U_FLIP + 12, U_FLIP + 13
NUM_UNIFORMS = U_FLIP + 14

# splitmix64 constants. A counter-based hash gives every example its own random
# stream from (seed, epoch, example id) with plain vectorised integer ops, so a
# whole batch draws its parameters in a handful of ops, and the draws do not
# depend on batch composition or arrival order.
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _mix64(x):
    u64 = lambda v: tf.constant(v, tf.uint64)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(30))) * u64(_MIX1)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(27))) * u64(_MIX2)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(31)))


def _to_u64(x):
    x = tf.convert_to_tensor(x)
    if x.dtype == tf.uint64:
        return x
    return tf.bitcast(tf.cast(x, tf.int64), tf.uint64)


def fold_key(key, data):
    """A new int64 key from ``key`` and integer ``data`` (both any broadcastable shape).

    Args:
        key: int64 key(s).
        data: integer(s) to mix in.

    Examples:

    >>> int(fold_key(1, 2)) == int(fold_key(1, 2)) != int(fold_key(1, 3))
    True
    """
    k = _to_u64(key) + _to_u64(data) * tf.constant(_GOLDEN, tf.uint64)
    return tf.bitcast(_mix64(k + tf.constant(_GOLDEN, tf.uint64)), tf.int64)


def example_keys(seed, epoch_key, uid):
    """Int64 key of each example: a hash of (seed, epoch key, example id).

    Args:
        seed: the run's seed.
        epoch_key: one int64 per pass over the data.
        uid: the examples' stable ids, any shape.

    Examples:

    >>> example_keys(0, 0, tf.range(4, dtype=tf.int64)).shape
    TensorShape([4])
    """
    return fold_key(fold_key(fold_key(tf.constant(0x5EED, tf.int64), seed), epoch_key), uid)


def view_key(key, view: int):
    """Each view's own key derived from the example's key (``view`` 0 or 1)."""
    return fold_key(key, 1 + view)


def uniforms(key, n: int):
    """``n`` independent U[0, 1) float32 draws per key: shape ``key.shape + [n]``.

    Args:
        key: int64 key(s).
        n: draws per key.

    Examples:

    >>> uniforms(example_keys(0, 0, 1), 3).shape
    TensorShape([3])
    """
    k = _to_u64(key)[..., None]
    ctr = tf.range(1, n + 1, dtype=tf.int64)
    x = _mix64(k + _to_u64(ctr) * tf.constant(_GOLDEN, tf.uint64))
    return tf.cast(tf.bitwise.right_shift(x, tf.constant(40, tf.uint64)), tf.float32) * (1.0 / (1 << 24))
