"""Embeddings written as several ``.npy`` shards plus a manifest, read as one ``[N, D]`` array.

A Beam run of ``bt-embed`` (:mod:`bt_keras.embed.beam`) writes one
``embeddings-SSSSS-of-TTTTT.npy`` per shard and ``embeddings.shards.json``
naming them in row order with their row counts. :class:`ShardedArray` reads
them through memory maps and answers what the readers of ``embeddings.npy``
ask of an array: ``len``, ``shape``, row slices, single rows and lists of
rows (a slice across shards is copied out, a block at a time, as with one file).

Examples:

>>> import numpy as np, os, tempfile
>>> d = tempfile.mkdtemp()
>>> np.save(os.path.join(d, "a.npy"), np.zeros([2, 3], "float32"))
>>> np.save(os.path.join(d, "b.npy"), np.ones([3, 3], "float32"))
>>> write_manifest(d, [("a.npy", 2), ("b.npy", 3)], dim=3)
>>> x = open_sharded(d)
>>> x.shape, x[1:4].sum(axis=1).tolist(), x[[4, 0]].sum(axis=1).tolist()
((5, 3), [0.0, 3.0, 3.0], [3.0, 0.0])
"""

from __future__ import annotations

import json
import os

import numpy as np

from bt_keras.io import atomic_write

MANIFEST_FILE = "embeddings.shards.json"


def write_manifest(out_dir: str, shards, dim: int) -> None:
    """Writes the manifest: ``shards`` is ``[(file name, rows)]`` in row order.

    Args:
        out_dir: the directory holding the shards.
        shards: ``(file name relative to out_dir, row count)`` pairs.
        dim: the embedding size.
    """
    entries = [{"file": f, "rows": int(n)} for f, n in shards]
    manifest = {"dim": int(dim), "rows": sum(e["rows"] for e in entries), "shards": entries}
    atomic_write(os.path.join(out_dir, MANIFEST_FILE), json.dumps(manifest, indent=2) + "\n")


def open_sharded(out_dir: str) -> ShardedArray:
    """The shards named by ``out_dir``'s manifest, as one read-only array."""
    with open(os.path.join(out_dir, MANIFEST_FILE), encoding="utf-8") as f:
        manifest = json.load(f)
    parts = [np.load(os.path.join(out_dir, e["file"]), mmap_mode="r") for e in manifest["shards"] if e["rows"]]
    return ShardedArray(parts, int(manifest["dim"]))


class ShardedArray:
    """Row-wise concatenation of ``[n_i, D]`` arrays, without copying them.

    Args:
        parts: the shards (memory maps), in row order.
        dim: the embedding size (the shape of an empty set).
    """

    dtype = np.dtype(np.float32)

    def __init__(self, parts, dim: int):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.starts[-1]), int(dim))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        return self[0 : len(self)].astype(dtype or self.dtype, copy=False)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._rows(start, stop)
        if np.ndim(key) == 0:
            row = int(key) + (len(self) if int(key) < 0 else 0)
            s = int(np.searchsorted(self.starts, row, side="right")) - 1
            return np.asarray(self.parts[s][row - self.starts[s]])
        rows = np.asarray(key, np.int64)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty([len(rows), self.shape[1]], np.float32)
        for s in np.unique(shard):
            pick = shard == s
            out[pick] = self.parts[s][rows[pick] - self.starts[s]]
        return out

    def _rows(self, start: int, stop: int) -> np.ndarray:
        pieces = []
        for s, part in enumerate(self.parts):
            lo, hi = max(start, self.starts[s]), min(stop, self.starts[s + 1])
            if lo < hi:
                pieces.append(part[lo - self.starts[s] : hi - self.starts[s]])
        return np.concatenate(pieces) if pieces else np.zeros([0, self.shape[1]], np.float32)
