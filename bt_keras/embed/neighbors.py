"""Nearest neighbours by cosine similarity, and the picture grid a person judges an encoder by.

:func:`nearest_neighbors` scans the embeddings in blocks of rows (a memory
mapped ``embeddings.npy`` is never loaded whole) and keeps the best ``k`` of
each query. :func:`neighbor_grid` draws one row per query: the query, then
its neighbours from the most similar, each titled with its cosine similarity.

Examples:

>>> import numpy as np
>>> emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], "float32")
>>> idx, sim = nearest_neighbors(emb, emb[:1], k=2, exclude=[0])
>>> idx.tolist(), np.round(sim, 3).tolist()
([[1, 2]], [[0.994, 0.0]])
"""

from __future__ import annotations

import numpy as np

from bt_keras.io import atomic_path

BLOCK_ROWS = 16_384


def unit_rows(x) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero row stays zero.

    >>> unit_rows([[3.0, 4.0], [0.0, 0.0]]).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


def nearest_neighbors(embeddings, queries, k: int, exclude=None, block_rows: int = BLOCK_ROWS):
    """The ``k`` rows of ``embeddings`` most cosine-similar to each query.

    Args:
        embeddings: ``[N, D]`` (a memory map is read ``block_rows`` rows at a time).
        queries: ``[Q, D]``.
        k: neighbours per query (at most the rows available).
        exclude: for each query, a row never returned (the query itself), or -1.
        block_rows: rows compared at once.

    Returns:
        ``(indices [Q, k] int64, similarities [Q, k] float32)``, most similar first.
    """
    q = unit_rows(queries)
    n = len(embeddings)
    exclude = np.full([len(q)], -1, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    k = int(min(k, n - int(np.any(exclude >= 0))))
    best_sim = np.full([len(q), 0], -np.inf, np.float32)
    best_idx = np.zeros([len(q), 0], np.int64)
    for start in range(0, n, block_rows):
        sims = q @ unit_rows(embeddings[start : start + block_rows]).T
        rows = np.arange(start, start + sims.shape[1])
        sims[rows[None, :] == exclude[:, None]] = -np.inf
        sim = np.concatenate([best_sim, sims], axis=1)
        idx = np.concatenate([best_idx, np.broadcast_to(rows, sims.shape)], axis=1)
        # Stable sort: equal similarities keep row order, so results do not depend on block_rows.
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        best_sim = np.take_along_axis(sim, order, axis=1)
        best_idx = np.take_along_axis(idx, order, axis=1)
    return best_idx, best_sim


def neighbor_grid(path: str, query_views, neighbor_views, similarities, query_titles=None) -> str:
    """Writes a PNG grid: one row per query, the query then its neighbours titled with their similarity.

    Args:
        path: the PNG file (written atomically).
        query_views: uint8 ``[Q, S, S, 3]``.
        neighbor_views: uint8 ``[Q, K, S, S, 3]``.
        similarities: ``[Q, K]`` cosine similarities.
        query_titles: a short caption per query (e.g. its class), or None.

    Examples:

    >>> import os, tempfile
    >>> import numpy as np
    >>> v = np.zeros([1, 8, 8, 3], np.uint8)
    >>> neighbor_grid(os.path.join(tempfile.mkdtemp(), "grid.png"), v, v[:, None], [[0.5]]).endswith(".png")
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q, k = np.asarray(similarities).shape
    fig, axes = plt.subplots(q, k + 1, figsize=(1.3 * (k + 1), 1.45 * q), squeeze=False)
    for r in range(q):
        title = "query" + (f"\n{query_titles[r]}" if query_titles and query_titles[r] else "")
        cells = [(query_views[r], title, "tab:blue")]
        cells += [(neighbor_views[r][c], f"{similarities[r][c]:.3f}", "black") for c in range(k)]
        for ax, (image, text, colour) in zip(axes[r], cells):
            ax.imshow(image)
            # parse_math=False: a class or file name is text, never mathtext ("$\\bogus$" would raise).
            ax.set_title(text, fontsize=7, color=colour, parse_math=False)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{k} nearest neighbours by cosine similarity", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
