"""The embeddings file: rows written as they come, published atomically with their index.

``embeddings.npy`` is a float32 ``[N, D]`` NumPy array written through a
memory map (:func:`numpy.lib.format.open_memmap`), so a set of millions of
images never has to fit in memory; ``index.tsv`` gives, row for row, the
example's uid, its path (or ``source#uid`` where a source has no paths), its
label (-1: none) and class name. The index is a tab-separated file quoted
the ``csv`` way: a field holding a tab, a newline or a quote is quoted, so an
odd file name cannot add or shift rows (``csv.reader(f, delimiter="\\t")``
reads it back). Both files are built beside their destination and renamed
into place on :meth:`EmbeddingWriter.close` (:func:`bt_keras.io.atomic_path`):
an interrupted run leaves the previous files intact.

Why ``.npy`` and not Parquet: NumPy reads it with no extra dependency,
memory-maps it (``np.load(path, mmap_mode="r")``) for sets larger than
memory, and it is what :mod:`bt_keras.embed.neighbors` and
:mod:`bt_keras.embed.duplicates` read in blocks; pyarrow is not a
dependency of the package.

Examples:

>>> import numpy as np, os, tempfile
>>> d = tempfile.mkdtemp()
>>> w = EmbeddingWriter(d, capacity=3, dim=2)
>>> w.add(np.ones([2, 2], "float32"), [0, 1], ["a.jpg", "b\\tc.jpg"], [0, 1], ["cat", "dog"])
>>> w.close()
2
>>> np.load(os.path.join(d, "embeddings.npy")).shape, [r["path"] for r in read_index(d)]
((2, 2), ['a.jpg', 'b\\tc.jpg'])
"""

from __future__ import annotations

import contextlib
import csv
import os

import numpy as np

from bt_keras.io import atomic_path

EMBEDDINGS_FILE = "embeddings.npy"
INDEX_FILE = "index.tsv"
INDEX_COLUMNS = ("row", "uid", "path", "label", "class")
_COPY_ROWS = 65_536  # rows copied at a time when a shorter set is re-packed


class _TsvWriter:
    """``csv`` rows, tab-separated; a row with a carriage return anywhere is written with every field quoted.

    Python's ``csv`` writer quotes a field holding a tab, a quote or a character
    of its line terminator (``\\n``), not a lone ``\\r``, which its reader takes for
    a line end: a file name holding one would add a row. Such rows are rare, so
    only they are quoted in full; the others stay as ``QUOTE_MINIMAL`` writes them.

    Args:
        f: a text file opened with ``newline=""``.
    """

    def __init__(self, f):
        self._minimal = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        self._all = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, row) -> None:
        has_cr = any(isinstance(v, str) and "\r" in v for v in row)
        (self._all if has_cr else self._minimal).writerow(row)

    def writerows(self, rows) -> None:
        for row in rows:
            self.writerow(row)


def tsv_writer(f):
    """A ``csv`` writer of tab-separated rows that quotes fields holding a tab, newline, carriage return or quote."""
    return _TsvWriter(f)


class EmbeddingWriter:
    """Writes ``embeddings.npy`` and ``index.tsv`` into ``out_dir`` in bounded memory.

    Args:
        out_dir: local directory (created if needed).
        capacity: the most rows expected (the usable images the source
            reported); fewer is fine, more is an error.
        dim: the embedding size.
    """

    def __init__(self, out_dir: str, capacity: int, dim: int):
        self.out_dir = str(out_dir)
        self.capacity = int(capacity)
        self.dim = int(dim)
        self.rows = 0
        self.closed = False
        self._stack = contextlib.ExitStack()
        self._npy_tmp = self._stack.enter_context(atomic_path(os.path.join(self.out_dir, EMBEDDINGS_FILE), ".npy"))
        self._tsv_tmp = self._stack.enter_context(atomic_path(os.path.join(self.out_dir, INDEX_FILE)))
        self._array = np.lib.format.open_memmap(
            self._npy_tmp, mode="w+", dtype=np.float32, shape=(max(self.capacity, 1), self.dim)
        )
        self._index = open(self._tsv_tmp, "w", encoding="utf-8", newline="")
        self._csv = tsv_writer(self._index)
        self._csv.writerow(INDEX_COLUMNS)

    def add(self, embeddings, uids, paths, labels, class_names) -> None:
        """Appends a batch of rows and their index entries."""
        embeddings = np.asarray(embeddings, np.float32)
        n = len(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape [n, {self.dim}], got {embeddings.shape}")
        if self.rows + n > self.capacity:
            raise ValueError(f"more than the {self.capacity:,} rows announced")
        self._array[self.rows : self.rows + n] = embeddings
        self._csv.writerows([self.rows + i, int(uids[i]), paths[i], int(labels[i]), class_names[i]] for i in range(n))
        self.rows += n

    def close(self) -> int:
        """Publishes both files; returns the number of rows written."""
        try:
            self._array.flush()
            self._index.close()
            if self.rows < len(self._array):
                self._shrink()
            self._array = None  # unmaps before the rename
            self.closed = True
            stack, self._stack = self._stack, None
            stack.close()  # renames into place
        except BaseException:
            self.abort()
            raise
        return self.rows

    def abort(self) -> None:
        """Drops what was written; the previous files (if any) stay. Does nothing once closed."""
        if self.closed and self._stack is None:
            return
        self._array = None
        self.closed = True
        if not self._index.closed:
            self._index.close()
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def _shrink(self) -> None:
        """Re-packs the first ``rows`` rows into a file of that shape (images dropped late, e.g. undecodable)."""
        src = self._array
        tmp = self._npy_tmp + ".shrink"
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(self.rows, self.dim))
        for start in range(0, self.rows, _COPY_ROWS):
            dst[start : start + _COPY_ROWS] = src[start : min(start + _COPY_ROWS, self.rows)]
        dst.flush()
        del dst, src
        self._array = None
        os.replace(tmp, self._npy_tmp)


def read_index(out_dir: str) -> list:
    """The rows of ``index.tsv`` as dicts (``row``, ``uid``, ``label`` as ints).

    Args:
        out_dir: the directory holding ``index.tsv``.
    """
    with open(os.path.join(str(out_dir), INDEX_FILE), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for r in rows:
        for key in ("row", "uid", "label"):
            r[key] = int(r[key])
    return rows
