"""The Barlow Twins objective, exact over the global batch across replicas.

    z_a, z_b = standardise(z_a), standardise(z_b)     # per view, over the batch
    C = z_aᵀ z_b / N                                    # D × D cross-correlation
    loss = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²

Called inside a ``tf.distribute`` replica context (``strategy.run``, or a
Keras ``train_step`` under a strategy), N is the *global* batch: statistics and
C are taken over every replica's examples, so the value and the gradients equal
single-device training on the global batch. The caller divides by
``num_replicas_in_sync`` before differentiating, because Keras' TF optimizer
sums the replicas' gradients.

Examples:

>>> import tensorflow as tf
>>> from bt_keras.losses import barlow_twins_loss
>>> z = tf.random.normal([64, 128], seed=1)
>>> float(barlow_twins_loss(z, z)) < 128 * 128 * 0.0051  # only off-diagonal terms remain
True
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

METHODS = ("auto", "dense", "gram")


class BarlowTwinsTerms(NamedTuple):
    """The loss and its two parts: ``loss = on_diag + lambd * off_diag``."""

    loss: tf.Tensor
    on_diag: tf.Tensor
    off_diag: tf.Tensor


def _standardize(z, axis_size, reduce_sum, eps):
    # Biased variance, as BatchNorm1d(affine=False): each view on its own.
    mean = reduce_sum(tf.reduce_sum(z, axis=0)) / axis_size
    centered = z - mean
    var = reduce_sum(tf.reduce_sum(tf.square(centered), axis=0)) / axis_size
    return centered * tf.math.rsqrt(var + eps)


def _terms_from_c(c, lambd):
    on = tf.reduce_sum(tf.square(tf.linalg.diag_part(c) - 1.0))
    off = tf.reduce_sum(tf.square(c)) - tf.reduce_sum(tf.square(tf.linalg.diag_part(c)))
    return BarlowTwinsTerms(on + lambd * off, on, off)


def _terms_dense(a, b, n, lambd):
    return _terms_from_c(tf.matmul(a, b, transpose_a=True) / n, lambd)


def _terms_gram(a, b, n, lambd):
    # Σ_ij C_ij² = ‖aᵀb‖²_F / n² = ⟨a aᵀ, b bᵀ⟩_F / n²: O(n²D) time, O(n²) memory.
    total = tf.reduce_sum(tf.matmul(a, a, transpose_b=True) * tf.matmul(b, b, transpose_b=True)) / (n * n)
    diag = tf.reduce_sum(a * b, axis=0) / n
    on = tf.reduce_sum(tf.square(diag - 1.0))
    off = total - tf.reduce_sum(tf.square(diag))
    return BarlowTwinsTerms(on + lambd * off, on, off)


def resolve_method(method: str, batch_size: int, dim: int) -> str:
    """``"auto"`` → ``"gram"`` when 2N < D (N·D² > 2·N²·D multiply-adds), else ``"dense"``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    return "gram" if 2 * batch_size < dim else "dense"


def cross_correlation(z_a, z_b, eps: float = 1e-5):
    """The D×D matrix C of the loss for one (local) batch, in float32.

    Same standardisation as the loss (each view on its own, biased variance);
    for monitoring and pictures, not for training (use ``barlow_twins_terms``).

    >>> import tensorflow as tf
    >>> z = tf.random.normal([512, 8], seed=0)
    >>> c = cross_correlation(z, 3.0 * z + 1.0)
    >>> bool(tf.reduce_all(tf.abs(tf.linalg.diag_part(c) - 1.0) < 1e-3))
    True
    """
    z_a = tf.cast(z_a, tf.float32)
    z_b = tf.cast(z_b, tf.float32)
    n = tf.cast(tf.shape(z_a)[0], tf.float32)
    a = _standardize(z_a, n, lambda x: x, eps)
    b = _standardize(z_b, n, lambda x: x, eps)
    return tf.matmul(a, b, transpose_a=True) / n


def barlow_twins_terms(z_a, z_b, lambd: float = 0.0051, method: str = "auto", eps: float = 1e-5):
    """Barlow Twins loss with its on- and off-diagonal parts, in float32.

    Args:
      z_a, z_b: ``[N_local, D]`` embeddings of the two views (any float dtype).
      lambd: weight of the off-diagonal (redundancy-reduction) term.
      method: ``"dense"`` forms the D×D matrix C; ``"gram"`` never does;
        ``"auto"`` picks the cheaper for the (global) batch size and D.
      eps: added to the variance when standardising.

    Returns:
      ``BarlowTwinsTerms(loss, on_diag, off_diag)``, float32 scalars of the
      global batch (identical on every replica).
    """
    z_a = tf.cast(z_a, tf.float32)
    z_b = tf.cast(z_b, tf.float32)
    dim = z_a.shape[-1]
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    local_n = z_a.shape[0]
    if local_n is None:  # Unknown static batch: decide with the dynamic one only for "auto".
        local_n = 256
    global_n_static = local_n * replicas

    if replicas == 1:
        n = tf.cast(tf.shape(z_a)[0], tf.float32)
        a = _standardize(z_a, n, lambda x: x, eps)
        b = _standardize(z_b, n, lambda x: x, eps)
        fn = _terms_gram if resolve_method(method, global_n_static, dim) == "gram" else _terms_dense
        return fn(a, b, n, lambd)

    # Across replicas: move whichever is smaller, both views' rows (2·N·D floats,
    # then any method) or the D×D local products (D² floats, dense only).
    # Both collectives are differentiable, so gradients are exact.
    gather = method == "gram" or 2 * global_n_static * dim <= dim * dim
    if gather:
        z_a = ctx.all_gather(z_a, axis=0)
        z_b = ctx.all_gather(z_b, axis=0)
        n = tf.cast(tf.shape(z_a)[0], tf.float32)
        a = _standardize(z_a, n, lambda x: x, eps)
        b = _standardize(z_b, n, lambda x: x, eps)
        fn = _terms_gram if resolve_method(method, global_n_static, dim) == "gram" else _terms_dense
        return fn(a, b, n, lambd)

    def all_sum(x):
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)

    n = all_sum(tf.cast(tf.shape(z_a)[0], tf.float32))
    a = _standardize(z_a, n, all_sum, eps)
    b = _standardize(z_b, n, all_sum, eps)
    return _terms_from_c(all_sum(tf.matmul(a, b, transpose_a=True)) / n, lambd)


def barlow_twins_loss(z_a, z_b, lambd: float = 0.0051, method: str = "auto", eps: float = 1e-5):
    """The Barlow Twins loss of the global batch as a float32 scalar.

    See ``barlow_twins_terms`` for the arguments; this returns only ``loss``.

    >>> import tensorflow as tf
    >>> z = tf.random.normal([32, 16], seed=0)
    >>> barlow_twins_loss(z, z * 2.0 + 1.0, method="gram").dtype  # scale/shift invariant
    tf.float32
    """
    return barlow_twins_terms(z_a, z_b, lambd, method, eps).loss
