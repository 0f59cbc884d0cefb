"""Near-duplicate pairs: every pair of rows whose cosine similarity is at least a threshold.

All pairs are compared, in square blocks of rows, so memory stays at two
blocks of rows and one block of similarities whatever the number of images
(the work is still quadratic: about N² / 2 dot products). Pairs are written
as they are found, most similar first within each pair of blocks.

Examples:

>>> import numpy as np
>>> emb = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1], [-1, 0]], "float32")
>>> [(int(i), int(j)) for i, j, _ in duplicate_pairs(emb, 0.99, block_rows=2)]
[(0, 1), (2, 3)]
"""

from __future__ import annotations

import numpy as np

from bt_keras.embed.neighbors import unit_rows
from bt_keras.embed.writer import tsv_writer
from bt_keras.io import atomic_path

BLOCK_ROWS = 4096
COLUMNS = ("similarity", "row_a", "row_b", "path_a", "path_b")


def duplicate_pairs(embeddings, threshold: float, block_rows: int = BLOCK_ROWS):
    """Yields ``(row_a, row_b, similarity)`` with ``row_a < row_b`` and similarity ≥ ``threshold``.

    Args:
        embeddings: ``[N, D]`` (a memory map is read a block at a time).
        threshold: the cosine similarity from which a pair counts, in [-1, 1].
        block_rows: rows per block.
    """
    n = len(embeddings)
    for a in range(0, n, block_rows):
        block_a = unit_rows(embeddings[a : a + block_rows])
        for b in range(a, n, block_rows):
            sims = block_a @ (block_a if b == a else unit_rows(embeddings[b : b + block_rows])).T
            i, j = np.nonzero(sims >= np.float32(threshold))
            keep = i + a < j + b
            i, j = i[keep], j[keep]
            s = sims[i, j]
            for t in np.argsort(-s, kind="stable"):
                yield int(i[t] + a), int(j[t] + b), float(s[t])


def write_duplicates(path: str, embeddings, paths, threshold: float, block_rows: int = BLOCK_ROWS, pairs=None) -> int:
    """Writes the near-duplicate pairs as TSV (quoted like ``index.tsv``); returns how many.

    Args:
        path: the TSV file (written atomically).
        embeddings: ``[N, D]``.
        paths: the ``N`` paths, row for row.
        threshold: as in :func:`duplicate_pairs`.
        block_rows: rows per block.
        pairs: ``(row_a, row_b, similarity)`` found otherwise (a nearest-neighbour
            index's range queries); None: every pair is compared.
    """
    if pairs is None:
        pairs = duplicate_pairs(embeddings, threshold, block_rows)
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = tsv_writer(f)
        writer.writerow(COLUMNS)
        for i, j, s in pairs:
            writer.writerow([f"{s:.6f}", i, j, paths[i], paths[j]])
            count += 1
    return count
