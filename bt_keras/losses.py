"""The Barlow Twins objective, exact over the global batch, on any Keras backend.

    z_a, z_b = standardise(z_a), standardise(z_b)     # per view, over the batch
    C = z_aᵀ z_b / N                                    # D × D cross-correlation
    loss = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²

The maths is written once in ``keras.ops``. N is always the *global* batch:

- On JAX (``keras.distribution``, SPMD), the arrays are global: a batch sharded
  over devices is still one ``[N, D]`` array, so the statistics and C are over
  the global batch and XLA inserts the collectives.
- On TensorFlow, inside a ``tf.distribute`` replica context (``strategy.run``,
  or a Keras ``train_step`` under a strategy), a TF-only wrapper all-gathers the
  embeddings or all-reduces C, whichever moves fewer bytes. The caller divides
  by ``num_replicas_in_sync`` before differentiating, because Keras' TF
  optimizer sums the replicas' gradients.

Either way the value and the gradients equal single-device training on the
global batch.

Examples:

>>> import numpy as np
>>> from bt_keras.losses import barlow_twins_loss
>>> z = np.random.default_rng(1).normal(size=(64, 128)).astype("float32")
>>> float(barlow_twins_loss(z, z)) < 128 * 128 * 0.0051  # only off-diagonal terms remain
True
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
from keras import ops

METHODS = ("auto", "dense", "gram")
STANDARDIZE = ("full", "center", "none")
"""Per-view normalisation before C: ``full`` is the paper's (affine-free BN); ``center`` and ``none`` are ablations."""


class BarlowTwinsTerms(NamedTuple):
    """The loss and its two parts: ``loss = on_diag + lambd * off_diag`` (float32 scalars)."""

    loss: Any
    on_diag: Any
    off_diag: Any


def _identity(x):
    return x


def _standardize(z, n, reduce_sum=_identity, eps=1e-5, mode="full"):
    # Biased variance, as BatchNorm1d(affine=False): each view on its own.
    # ``reduce_sum`` sums a per-replica partial sum over replicas (identity when the batch is whole).
    # ``mode`` (an ablation switch): "center" only subtracts the batch mean, "none" leaves z as it is.
    if mode == "none":
        return z
    mean = reduce_sum(ops.sum(z, axis=0)) / n
    centered = z - mean
    if mode == "center":
        return centered
    var = reduce_sum(ops.sum(ops.square(centered), axis=0)) / n
    return centered * ops.rsqrt(var + eps)


def check_standardize(standardize: str) -> str:
    """``standardize`` if it is one of :data:`STANDARDIZE`, else a ``ValueError`` naming the choices.

    >>> check_standardize("center")
    'center'
    """
    if standardize not in STANDARDIZE:
        raise ValueError(f"standardize must be one of {', '.join(STANDARDIZE)}, got {standardize!r}")
    return standardize


def _terms_from_c(c, lambd):
    diag = ops.diagonal(c)
    on = ops.sum(ops.square(diag - 1.0))
    off = ops.sum(ops.square(c)) - ops.sum(ops.square(diag))
    return BarlowTwinsTerms(on + lambd * off, on, off)


def _terms_dense(a, b, n, lambd):
    return _terms_from_c(ops.matmul(ops.transpose(a), b) / n, lambd)


def _terms_gram(a, b, n, lambd):
    # Σ_ij C_ij² = ‖aᵀb‖²_F / n² = ⟨a aᵀ, b bᵀ⟩_F / n²: O(n²D) time, O(n²) memory.
    total = ops.sum(ops.matmul(a, ops.transpose(a)) * ops.matmul(b, ops.transpose(b))) / (n * n)
    diag = ops.sum(a * b, axis=0) / n
    on = ops.sum(ops.square(diag - 1.0))
    off = total - ops.sum(ops.square(diag))
    return BarlowTwinsTerms(on + lambd * off, on, off)


def resolve_method(method: str, batch_size: int, dim: int) -> str:
    """``"auto"`` → ``"gram"`` when 2N < D (N·D² > 2·N²·D multiply-adds), else ``"dense"``.

    Args:
      method: ``"auto"``, ``"dense"`` or ``"gram"``.
      batch_size: the global batch N.
      dim: the embedding width D.

    Examples:

    >>> resolve_method("auto", batch_size=256, dim=8192)
    'gram'
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    return "gram" if 2 * batch_size < dim else "dense"


def global_batch_terms(
    z_a,
    z_b,
    lambd: float = 0.0051,
    method: str = "auto",
    eps: float = 1e-5,
    static_n=None,
    static_dim=None,
    standardize: str = "full",
):
    """The backend-agnostic core: the loss of ``[N, D]`` float32 embeddings that hold the whole batch.

    Args:
      z_a, z_b: float32 embeddings of the two views, the global batch.
      lambd: off-diagonal weight.
      method: ``"auto" | "dense" | "gram"``.
      eps: added to the variance.
      static_n, static_dim: N and D for ``"auto"`` when the static shape lacks them
        (after a TF all-gather).
      standardize: per-view normalisation over the batch (see :data:`STANDARDIZE`).

    Examples:

    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    >>> round(float(global_batch_terms(z, z).on_diag), 3)
    0.0
    """
    n_static = z_a.shape[0] if z_a.shape[0] is not None else static_n
    dim = z_a.shape[-1] if z_a.shape[-1] is not None else static_dim
    n = ops.cast(ops.shape(z_a)[0], "float32")
    a = _standardize(z_a, n, eps=eps, mode=check_standardize(standardize))
    b = _standardize(z_b, n, eps=eps, mode=standardize)
    fn = _terms_gram if resolve_method(method, n_static or 256, dim) == "gram" else _terms_dense
    return fn(a, b, n, lambd)


def _tf_replica_context():
    """The ``tf.distribute`` replica context with more than one replica, else ``None`` (never on JAX)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf  # Lazy: the JAX backend never needs tf.distribute.

    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def _tf_cross_replica_terms(ctx, z_a, z_b, lambd, method, eps, standardize="full"):
    """TensorFlow replicas: gather rows (2·N·D floats) or all-reduce C (D² floats, dense only).

    Both collectives are differentiable, so gradients are exact.
    """
    import tensorflow as tf

    dim = z_a.shape[-1]
    local_n = z_a.shape[0] if z_a.shape[0] is not None else 256  # "auto" guess for an unknown batch
    global_n_static = local_n * ctx.num_replicas_in_sync
    if method == "gram" or 2 * global_n_static * dim <= dim * dim:
        z_a = ctx.all_gather(z_a, axis=0)
        z_b = ctx.all_gather(z_b, axis=0)
        return global_batch_terms(
            z_a, z_b, lambd, method, eps, static_n=global_n_static, static_dim=dim, standardize=standardize
        )

    def all_sum(x):
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)

    n = all_sum(tf.cast(tf.shape(z_a)[0], tf.float32))
    a = _standardize(z_a, n, all_sum, eps, check_standardize(standardize))
    b = _standardize(z_b, n, all_sum, eps, standardize)
    return _terms_from_c(all_sum(tf.matmul(a, b, transpose_a=True)) / n, lambd)


def cross_correlation(z_a, z_b, eps: float = 1e-5, standardize: str = "full"):
    """The D×D matrix C of the loss for one (local) batch, in float32.

    Same standardisation as the loss (each view on its own, biased variance);
    for monitoring and pictures, not for training (use ``barlow_twins_terms``).

    Args:
      z_a, z_b: ``[N, D]`` embeddings.
      eps: added to the variance.
      standardize: per-view normalisation (see :data:`STANDARDIZE`).

    Returns:
      A backend tensor (``keras.ops.convert_to_numpy`` turns it into NumPy).

    Examples:

    >>> import numpy as np
    >>> from keras import ops
    >>> z = np.random.default_rng(0).normal(size=(512, 8)).astype("float32")
    >>> c = ops.convert_to_numpy(cross_correlation(z, 3.0 * z + 1.0))
    >>> bool((abs(np.diag(c) - 1.0) < 1e-3).all())
    True
    """
    z_a = ops.cast(z_a, "float32")
    z_b = ops.cast(z_b, "float32")
    n = ops.cast(ops.shape(z_a)[0], "float32")
    mode = check_standardize(standardize)
    a = _standardize(z_a, n, eps=eps, mode=mode)
    return ops.matmul(ops.transpose(a), _standardize(z_b, n, eps=eps, mode=mode)) / n


def barlow_twins_terms(
    z_a, z_b, lambd: float = 0.0051, method: str = "auto", eps: float = 1e-5, standardize: str = "full"
):
    """Barlow Twins loss with its on- and off-diagonal parts, in float32.

    Args:
      z_a, z_b: ``[N_local, D]`` embeddings of the two views (any float dtype).
        On JAX and on one TF replica, N_local is the global batch.
      lambd: weight of the off-diagonal (redundancy-reduction) term.
      method: ``"dense"`` forms the D×D matrix C; ``"gram"`` never does;
        ``"auto"`` picks the cheaper for the (global) batch size and D.
      eps: added to the variance when standardising.
      standardize: each view's normalisation over the (global) batch before C:
        ``"full"`` (default, the paper's: mean 0 and unit biased variance, an
        affine-free BN), or, as ablations only, ``"center"`` (mean 0) and
        ``"none"`` (the raw projector output).

    Returns:
      ``BarlowTwinsTerms(loss, on_diag, off_diag)``, float32 scalars of the
      global batch (identical on every replica).

    Examples:

    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(32, 16)).astype("float32")
    >>> terms = barlow_twins_terms(z, z[::-1], method="dense")
    >>> bool(abs(float(terms.loss) - float(terms.on_diag) - 0.0051 * float(terms.off_diag)) < 1e-3)
    True
    """
    z_a = ops.cast(z_a, "float32")
    z_b = ops.cast(z_b, "float32")
    ctx = _tf_replica_context()
    if ctx is not None:
        return _tf_cross_replica_terms(ctx, z_a, z_b, lambd, method, eps, standardize)
    return global_batch_terms(z_a, z_b, lambd, method, eps, standardize=standardize)


def barlow_twins_loss(
    z_a, z_b, lambd: float = 0.0051, method: str = "auto", eps: float = 1e-5, standardize: str = "full"
):
    """The Barlow Twins loss of the global batch as a float32 scalar.

    See ``barlow_twins_terms`` for the arguments; this returns only ``loss``.

    Examples:

    >>> import keras, numpy as np
    >>> z = np.random.default_rng(0).normal(size=(32, 16)).astype("float32")
    >>> keras.backend.standardize_dtype(barlow_twins_loss(z, z * 2.0 + 1.0, method="gram").dtype)
    'float32'
    """
    return barlow_twins_terms(z_a, z_b, lambd, method, eps, standardize).loss
