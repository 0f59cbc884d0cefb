"""The last few sources this process prepared (:data:`PREPARED`), so one run lists, validates and
decodes a source once; bounded, and keyed so that a changed file is prepared again."""

from __future__ import annotations

import os

import numpy as np


class PreparedCache:
    """The last few sources this process prepared, so that a run's checks, its pipeline and its
    evaluation list, validate and decode a source once.

    Bounded twice: ``entries`` sources, and ``max_bytes`` of decoded images held in all (the oldest
    go first). Keyed on the source, its settings and its listing, and for local files on their sizes
    and modification times too, so a file rewritten in place under the same name is read again.
    :meth:`clear` empties it (``bt_keras.data.prepare.PREPARED.clear()``).
    """

    def __init__(self, entries: int = 4, max_bytes: int = 2 * 2**30):
        self.entries, self.max_bytes = entries, max_bytes
        self._items: dict = {}

    def get(self, key):
        return self._items.get(key)

    def put(self, key, prep) -> None:
        self._items[key] = prep
        while len(self._items) > self.entries or (len(self._items) > 1 and self.held_bytes() > self.max_bytes):
            self._items.pop(next(iter(self._items)))

    def held_bytes(self) -> int:
        return sum(_decoded_bytes(p) for p in self._items.values())

    def clear(self) -> None:
        self._items.clear()


def _decoded_bytes(prep) -> int:
    mem = prep.memory
    if mem is None:
        return 0
    if mem.images is not None:
        return int(np.asarray(mem.images).nbytes)
    return 0 if mem.flat is None else int(mem.flat.nbytes)


def listing_stamp(src) -> int:
    """A hash of the source's listing; for local files, of their sizes and modification times too."""
    listing = src.listing()
    if src.kind == "folder" and "://" not in getattr(src, "root", "://"):
        stats = []
        for path in listing:
            try:
                st = os.stat(path)
                stats.append((st.st_size, st.st_mtime_ns))
            except OSError:
                stats.append(None)  # gone: validation will say so
        return hash((listing, tuple(stats)))
    return hash(listing)


PREPARED = PreparedCache()
