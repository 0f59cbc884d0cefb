"""Collapse indicators of a batch of representations (pure NumPy, no training state).

Examples:

>>> import numpy as np
>>> from bt_keras.callbacks.health import effective_rank
>>> effective_rank(np.outer(np.arange(10.0), np.ones(4)))
1.0
"""

from __future__ import annotations

import math

import numpy as np


def effective_rank(features) -> float:
    """exp(entropy) of the normalised singular values of the centred features.

    Roy & Vetterli 2007; RankMe: between 1 (all on one line) and min(N, D).
    NaN when a feature is not finite (a diverged run: the SVD would not converge,
    and the loss's own "not finite" message must be the one the user sees).

    Args:
        features: ``[N, D]``.

    Examples:

    >>> import numpy as np
    >>> round(effective_rank(np.random.default_rng(0).normal(size=(1000, 4))), 1)
    4.0
    >>> effective_rank(np.full((4, 2), np.nan))
    nan
    """
    x = np.asarray(features, np.float64)
    if not np.isfinite(x).all():
        return float("nan")
    x = x - x.mean(axis=0)
    s = np.linalg.svd(x, compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def representation_health(features, embeddings, dead_threshold: float = 0.01) -> dict:
    """Collapse indicators of one batch of encoder ``features`` [N, F] and projector ``embeddings`` [N, D].

    - ``embedding_std``/``embedding_std_min``: mean/min over dimensions of the
      batch std of the L2-normalised embeddings × √D (≈ 1 when spread over
      all directions, → 0 at collapse), with ``embedding_dim_std`` the
      per-dimension values;
    - ``effective_rank`` of the features and ``effective_rank_ratio`` =
      rank / min(N, F);
    - ``dead_fraction`` / ``embedding_dead_fraction``: share of dimensions
      whose std is below ``dead_threshold`` × the mean std (scale-free).

    Args:
        features: encoder outputs ``[N, F]``.
        embeddings: projector outputs ``[N, D]``.
        dead_threshold: a dimension is dead below this share of the mean std.

    Examples:

    >>> import numpy as np
    >>> f = np.random.default_rng(0).normal(size=(256, 8)); f[:, 0] = 1.0
    >>> representation_health(f, f)["dead_fraction"]
    0.125
    """
    f = np.asarray(features, np.float64)
    z = np.asarray(embeddings, np.float64)

    def dead(x):
        std = x.std(axis=0)
        return float(np.mean(std < dead_threshold * max(std.mean(), 1e-30)))

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # a diverged run: NaN values, no warnings
        zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        dim_std = zn.std(axis=0) * math.sqrt(z.shape[1])
        dead_f, dead_z = dead(f), dead(z)
    rank = effective_rank(f)
    return {
        "embedding_std": float(dim_std.mean()),
        "embedding_std_min": float(dim_std.min()),
        "embedding_dim_std": dim_std.astype(np.float32),
        "effective_rank": rank,
        "effective_rank_ratio": rank / min(f.shape),
        "dead_fraction": dead_f,
        "embedding_dead_fraction": dead_z,
    }


def correlation_heatmap(c, max_side: int = 128, cell: int | None = None) -> np.ndarray:
    """A D×D cross-correlation matrix as an RGB uint8 heatmap.

    Every s-th row and column is kept (s = ⌈D / max_side⌉): a strided
    subsample keeps diagonal entries on the diagonal, where block averages
    would dilute them. Colours: blue −1, white 0, red +1 (``RdBu_r``).

    Args:
        c: the ``[D, D]`` matrix.
        max_side: most rows/columns kept.
        cell: each entry becomes a ``cell``×``cell`` square (default: ≥ 256 px per side).

    Examples:

    >>> import numpy as np
    >>> correlation_heatmap(np.eye(1024)).shape
    (256, 256, 3)
    """
    from matplotlib import colormaps

    c = np.asarray(c, np.float32)
    stride = max(1, math.ceil(c.shape[0] / max_side))
    sub = np.clip(c[::stride, ::stride], -1.0, 1.0)
    rgb = (colormaps["RdBu_r"]((sub + 1.0) / 2.0)[..., :3] * 255).round().astype(np.uint8)
    cell = cell or max(1, math.ceil(256 / sub.shape[0]))
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
