"""A nearest-neighbour index of an embedding set (FAISS), saved beside ``embeddings.npy``.

Cosine similarity is the inner product of unit rows, so the index holds the
rows scaled to unit length and searches by inner product. Below
``exact_below`` rows (200,000 by default) it is exact: a flat index (every
row compared, in FAISS's blocked BLAS kernels), which equals
:func:`bt_keras.embed.neighbors.nearest_neighbors`. Above it, an inverted-file
index (``IndexIVFFlat``: k-means cells of full-precision vectors; a query
scans the ``nprobe`` nearest cells). ``nprobe`` is chosen at build time: the
smallest power of two whose recall@10 against exact search, measured on
``recall_queries`` rows of the set, reaches ``target_recall``; the measured
recall is recorded with the other parameters in ``ann.json``.

Why FAISS and an inverted file: on this machine (2 cores, ``benchmarks/embed.py
--index --libraries``) FAISS IVF-Flat built 100,000 × 128 synthetic vectors in
6 s where usearch's HNSW graph took 62 s, both at recall@10 1.0 on 200
queries; an inverted file answers range queries (every row above a
similarity), which ``--duplicates`` needs; and it keeps the vectors
uncompressed, so the similarities it reports are exact for the pairs it finds.
``pip install "bt_keras[index]"`` installs ``faiss-cpu``.

Examples:

>>> import numpy as np, tempfile
>>> emb = np.random.default_rng(0).normal(size=(500, 8)).astype("float32")
>>> index = build_index(emb, tempfile.mkdtemp())
>>> index.kind, index.search(emb[:2], k=3, exclude=[0, 1])[0].shape
('flat', (2, 3))
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from bt_keras.embed.neighbors import unit_rows
from bt_keras.errors import UserError
from bt_keras.io import atomic_path, atomic_write

INDEX_FILE = "ann.faiss"
META_FILE = "ann.json"
EXACT_BELOW = 200_000
TARGET_RECALL = 0.95
RECALL_QUERIES = 1_000
ADD_ROWS = 65_536  # rows normalised and added at a time (a memory map is never loaded whole)
QUERY_ROWS = 16_384  # rows searched at a time by range queries


def faiss():
    """The ``faiss`` module, or a one-line error saying how to install it."""
    try:
        import faiss as module
    except ImportError:
        raise UserError('the nearest-neighbour index needs FAISS: pip install "bt_keras[index]"') from None
    return module


class NNIndex:
    """A FAISS index over unit rows, with its parameters (``meta``).

    Args:
        index: the FAISS index (inner product).
        meta: ``kind`` (``flat`` or ``ivf_flat``), ``rows``, ``dim``, and for IVF
            ``nlist``, ``nprobe``, the measured ``recall_at_10``.
    """

    def __init__(self, index, meta: dict):
        self.index = index
        self.meta = meta

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries, k: int, exclude=None):
        """The ``k`` rows most cosine-similar to each query; ``(indices [Q, k], similarities [Q, k])``.

        Args:
            queries: ``[Q, D]`` (not necessarily unit length).
            k: neighbours per query (at most the rows available).
            exclude: per query, a row never returned (the query itself), or -1.
        """
        q = unit_rows(queries)
        exclude = np.full([len(q)], -1, np.int64) if exclude is None else np.asarray(exclude, np.int64)
        k = int(min(k, len(self) - int(np.any(exclude >= 0))))
        sims, idx = self.index.search(q, k + 1)
        # Drop the excluded row where it came back, else the last one; -1 (too few found) sorts last.
        drop = idx == exclude[:, None]
        drop[~drop.any(axis=1), -1] = True
        keep = ~drop
        return idx[keep].reshape(len(q), k).astype(np.int64), sims[keep].reshape(len(q), k)

    def pairs(self, embeddings, threshold: float, query_rows: int = QUERY_ROWS):
        """Yields ``(row_a, row_b, similarity)``, ``row_a < row_b``, similarity ≥ ``threshold``, found by range queries.

        Exact for a flat index; an IVF index finds the pairs whose rows fall in
        each other's probed cells (its recall is measured in the tests).

        Args:
            embeddings: the ``[N, D]`` rows the index was built from.
            threshold: the cosine similarity from which a pair counts.
            query_rows: rows queried at a time.
        """
        # FAISS keeps similarities strictly above the radius: start just below, then filter >= threshold.
        radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
        for a in range(0, len(embeddings), query_rows):
            lims, sims, idx = self.index.range_search(unit_rows(embeddings[a : a + query_rows]), radius)
            rows = a + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
            keep = (rows < idx) & (sims >= np.float32(threshold))
            rows, idx, sims = rows[keep], idx[keep], sims[keep]
            for t in np.lexsort((idx, rows, -sims)):
                yield int(rows[t]), int(idx[t]), float(sims[t])

    def save(self, out_dir: str) -> None:
        """Writes ``ann.faiss`` and ``ann.json`` into ``out_dir`` (each replaced atomically)."""
        with atomic_path(os.path.join(out_dir, INDEX_FILE), ".faiss") as tmp:
            faiss().write_index(self.index, tmp)
        atomic_write(os.path.join(out_dir, META_FILE), json.dumps(self.meta, indent=2) + "\n")


def load_index(out_dir: str, rows: int | None = None) -> NNIndex:
    """Reads the index saved in ``out_dir``; refuses one built from a different number of rows.

    Args:
        out_dir: the embedding set's directory.
        rows: the rows of ``embeddings.npy`` now (None: not checked).
    """
    path, meta_path = os.path.join(out_dir, INDEX_FILE), os.path.join(out_dir, META_FILE)
    if not (os.path.isfile(path) and os.path.isfile(meta_path)):
        raise UserError(f"{out_dir}: no nearest-neighbour index ({INDEX_FILE}); run bt-embed again to build it")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if rows is not None and meta.get("rows") != rows:
        raise UserError(f"{path}: built from {meta.get('rows')} rows, embeddings.npy has {rows}: rebuild it")
    index = faiss().read_index(path)
    if "nprobe" in meta:
        index.nprobe = int(meta["nprobe"])
    return NNIndex(index, meta)


def build_index(
    embeddings,
    out_dir: str | None = None,
    *,
    exact_below: int = EXACT_BELOW,
    nlist: int | None = None,
    target_recall: float = TARGET_RECALL,
    recall_queries: int = RECALL_QUERIES,
    seed: int = 0,
) -> NNIndex:
    """Builds the index of ``embeddings`` (exact below ``exact_below`` rows) and saves it in ``out_dir``.

    Args:
        embeddings: ``[N, D]`` float32 (a memory map is read in blocks).
        out_dir: where to write ``ann.faiss`` + ``ann.json`` (None: not saved).
        exact_below: row count from which the index is approximate (IVF).
        nlist: IVF cells (None: ``4·√N``, a common rule).
        target_recall: the recall@10 ``nprobe`` must reach on the sample.
        recall_queries: rows of the set used as queries to measure it.
        seed: seed of the k-means sample and of the recall queries.
    """
    fa = faiss()
    n, dim = embeddings.shape
    if n >= exact_below:
        built = _build_ivf(fa, embeddings, nlist or int(4 * math.sqrt(n)), seed)
        meta = {"kind": "ivf_flat", "nlist": int(built.nlist)}
    else:
        built = fa.IndexFlatIP(dim)
        meta = {"kind": "flat"}
    _add_rows(built, embeddings)
    meta = {"library": "faiss-cpu " + fa.__version__, "metric": "cosine", "rows": int(n), "dim": int(dim), **meta}
    index = NNIndex(built, meta)
    if meta["kind"] == "ivf_flat":
        meta.update(_tune_nprobe(index, embeddings, target_recall, recall_queries, seed))
    if out_dir is not None:
        index.save(out_dir)
    return index


def _add_rows(index, embeddings) -> None:
    for start in range(0, len(embeddings), ADD_ROWS):
        index.add(unit_rows(embeddings[start : start + ADD_ROWS]))


def _build_ivf(fa, embeddings, nlist: int, seed: int):
    """A trained ``IndexIVFFlat``: 10 k-means iterations on at most 32 rows per cell, drawn at random.

    Fewer rows and iterations than FAISS's defaults (256, 25): the cells only
    route queries (the vectors stay exact), and ``nprobe`` is then tuned to the
    recall target on the cells as they are.
    """
    n, dim = embeddings.shape
    nlist = max(1, min(nlist, n // 32))
    picks = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 32 * nlist), replace=False))
    quantizer = fa.IndexFlatIP(dim)
    index = fa.IndexIVFFlat(quantizer, dim, nlist, fa.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = 10
    index.cp.min_points_per_centroid = 1  # 32 per cell is enough here: no warning
    index.train(unit_rows(embeddings[picks]))  # FAISS's Python wrapper keeps the quantizer alive with the index
    return index


def exact_neighbors(embeddings, queries, k: int, block_rows: int = ADD_ROWS):
    """Exact top-``k`` rows by cosine, block by block (no copy of the set): what recall is measured against.

    Args:
        embeddings: ``[N, D]`` (a memory map is read a block at a time).
        queries: ``[Q, D]``.
        k: neighbours per query.
        block_rows: rows compared at once.
    """
    q = unit_rows(queries)
    best_sim = np.full([len(q), 0], -np.inf, np.float32)
    best_idx = np.zeros([len(q), 0], np.int64)
    for start in range(0, len(embeddings), block_rows):
        block = unit_rows(embeddings[start : start + block_rows])
        sims, top = faiss().knn(q, block, min(k, len(block)), metric=faiss().METRIC_INNER_PRODUCT)
        sim = np.concatenate([best_sim, sims], axis=1)
        idx = np.concatenate([best_idx, top + start], axis=1)
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        best_sim, best_idx = np.take_along_axis(sim, order, axis=1), np.take_along_axis(idx, order, axis=1)
    return best_idx


def recall_at(found, truth) -> float:
    """The share of the true neighbours found, averaged over queries.

    >>> recall_at([[1, 2], [3, 4]], [[2, 1], [3, 5]])
    0.75
    """
    found, truth = np.asarray(found), np.asarray(truth)
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth))
    return float(hits / truth.size)


def _tune_nprobe(index: NNIndex, embeddings, target: float, queries: int, seed: int) -> dict:
    """The smallest power-of-two ``nprobe`` reaching ``target`` recall@10 on ``queries`` rows of the set."""
    n = len(embeddings)
    picks = np.sort(np.random.default_rng(seed + 1).choice(n, size=min(n, queries), replace=False))
    q = np.asarray(embeddings[picks], np.float32)
    truth = exact_neighbors(embeddings, q, 10)
    nprobe, recall = 1, 0.0
    while True:
        index.index.nprobe = nprobe
        recall = recall_at(index.index.search(unit_rows(q), 10)[1], truth)
        if recall >= target or nprobe >= index.index.nlist:
            break
        nprobe = min(2 * nprobe, index.index.nlist)
    return {"nprobe": int(nprobe), "recall_at_10": round(recall, 4), "recall_queries": len(picks)}
