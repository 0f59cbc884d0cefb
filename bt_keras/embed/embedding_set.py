"""A written set of embeddings, and what can be made from it: neighbour grid, duplicate list, projector files.

:func:`bt_keras.embed.embed_source` returns an :class:`EmbeddingSet`; its
methods read ``embeddings.npy`` through a memory map and write next to it.

Examples:

>>> import bt_keras, keras, numpy as np, tempfile
>>> from bt_keras.contract import make_contract
>>> x = np.random.default_rng(0).integers(0, 256, [6, 16, 16, 3], dtype=np.uint8)
>>> enc = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D()])
>>> s = bt_keras.embed_source(x, enc, tempfile.mkdtemp(), contract=make_contract(16))
>>> s.num_images, s.dim, s.write_duplicates(0.9999)[1]
(6, 3, 0)
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from bt_keras.embed import duplicates, neighbors, projector, thumbnails
from bt_keras.embed import index as ann
from bt_keras.embed.writer import EMBEDDINGS_FILE, read_index
from bt_keras.errors import UserError

NEIGHBORS_FILE = "neighbors.png"
DUPLICATES_FILE = "duplicates.tsv"
PROJECTOR_DIR = "projector"
GRID_THUMBNAIL = 96


@dataclasses.dataclass
class EmbeddingSet:
    """Embeddings written by :func:`~bt_keras.embed.embed_source`, with what produced them.

    Args:
        out_dir: the directory holding ``embeddings.npy`` and ``index.tsv``.
        source: the embedded source (string or arrays).
        contract: the encoder's preprocessing contract.
        encoder: the encoder (embeds ``--query`` images that are not in the set).
        num_images: rows written.
        dim: the embedding size.
        num_skipped: bad images skipped.
        seconds: wall time of the embedding pass.
        data_dir: TFDS ``data_dir``.
        prepare_kwargs: ``cache``/``validate`` used to read the source.
        prepared: the prepared source the rows' uids refer to (None: prepared again).
    """

    out_dir: str
    source: object
    contract: object
    encoder: object
    num_images: int
    dim: int
    num_skipped: int
    seconds: float
    data_dir: str | None = None
    prepare_kwargs: dict = dataclasses.field(default_factory=dict)
    prepared: object = None

    @classmethod
    def open(cls, out_dir: str, encoder=None) -> EmbeddingSet:
        """A set written earlier (``bt-embed``, :func:`~bt_keras.embed.embed_source`), from its ``embeddings.json``.

        Args:
            out_dir: the set's directory.
            encoder: the :class:`~bt_keras.frozen.FrozenEncoder` that made it (needed by
                :meth:`search`); its contract must be the recorded one.

        Examples:

        >>> import bt_keras, keras, numpy as np, tempfile
        >>> from bt_keras.contract import make_contract
        >>> enc = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])
        >>> d = tempfile.mkdtemp()
        >>> _ = bt_keras.embed_source(np.zeros([3, 8, 8, 3], np.uint8), enc, d, contract=make_contract(8))
        >>> EmbeddingSet.open(d).num_images
        3
        """
        import json

        from bt_keras.contract import PreprocessingContract

        summary_path = os.path.join(str(out_dir), "embeddings.json")
        if not os.path.isfile(summary_path):
            raise UserError(f"{out_dir}: no embeddings.json (not a bt-embed output directory)")
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
        contract = PreprocessingContract.from_json(json.dumps(summary["preprocessing"]))
        if encoder is not None and encoder.contract != contract:
            raise UserError(f"{out_dir}: the encoder's preprocessing contract is not the one the set was embedded with")
        return cls(
            str(out_dir),
            summary["source"],
            contract,
            encoder,
            int(summary["num_images"]),
            int(summary["dim"]),
            int(summary["num_skipped"]),
            float(summary["seconds"]),
        )

    @property
    def embeddings_path(self) -> str:
        return os.path.join(self.out_dir, EMBEDDINGS_FILE)

    def embeddings(self) -> np.ndarray:
        """``embeddings.npy`` as a read-only memory map ``[N, D]`` (a Beam run's shards: one array over them)."""
        from bt_keras.embed import shards

        manifest = os.path.join(self.out_dir, shards.MANIFEST_FILE)
        if not os.path.exists(self.embeddings_path) and os.path.exists(manifest):
            return shards.open_sharded(self.out_dir)
        return np.load(self.embeddings_path, mmap_mode="r")

    def index(self) -> list:
        """The rows of ``index.tsv``."""
        return read_index(self.out_dir)

    def ann_index(self):
        """The saved nearest-neighbour index (:class:`~bt_keras.embed.index.NNIndex`), or None without one."""
        if not os.path.isfile(os.path.join(self.out_dir, ann.INDEX_FILE)):
            return None
        return ann.load_index(self.out_dir, rows=self.num_images)

    def build_ann_index(self, **kwargs):
        """Builds and saves the nearest-neighbour index (see :func:`~bt_keras.embed.index.build_index`)."""
        return ann.build_index(self.embeddings(), self.out_dir, **kwargs)

    def _nearest(self, vectors, k: int, exclude=None):
        """Through the saved index when there is one, else by brute force (exact)."""
        index = self.ann_index()
        if index is None:
            return neighbors.nearest_neighbors(self.embeddings(), vectors, k, exclude=exclude)
        return index.search(vectors, k, exclude=exclude)

    def search(self, images, k: int = 10) -> list:
        """The ``k`` nearest rows of the set to each image file (embedded by the set's encoder and contract).

        Args:
            images: image file paths (need not be in the set).
            k: neighbours per image.

        Returns:
            One list per image of ``(row, similarity, path)``, most similar first.
        """
        rows = self.index()
        vectors = np.stack([self._embed_file(p) for p in images]) if images else np.zeros([0, self.dim], np.float32)
        idx, sims = self._nearest(vectors, k)
        return [[(int(i), float(s), rows[i]["path"]) for i, s in zip(ri, rs) if i >= 0] for ri, rs in zip(idx, sims)]

    def _views(self, uids, size):
        return thumbnails.encoder_views(
            self.source,
            uids,
            self.contract,
            size,
            data_dir=self.data_dir,
            prepared=self.prepared,
            **self.prepare_kwargs,
        )

    def _resolve_queries(self, queries, rows) -> tuple:
        """``(row or -1, embedding or None, file path or None)`` of each ``--query``: a set member or a file."""
        by_path = {}
        for r in rows:
            by_path.setdefault(r["path"], r["row"])
            by_path.setdefault(os.path.realpath(r["path"]), r["row"])
        out = []
        for q in queries:
            row = by_path.get(q, by_path.get(os.path.realpath(q)))
            if row is not None:
                out.append((row, None, None))
                continue
            if not os.path.isfile(q):
                raise UserError(f"--query {q}: neither an embedded image nor an image file")
            out.append((-1, self._embed_file(q), q))
        return out

    def _embed_file(self, path: str) -> np.ndarray:
        import tensorflow as tf

        from bt_keras.contract import MAX_IMAGE_PIXELS
        from bt_keras.data.validation import image_size, too_large
        from bt_keras.evaluation.features import inference_fn
        from bt_keras.preprocess import preprocess_for_eval

        c = self.contract
        limit = self.prepare_kwargs.get("max_image_pixels", MAX_IMAGE_PIXELS)
        try:
            x = preprocess_for_eval(tf.io.read_file(path), c.image_size, c.mean, c.std, c.crop_fraction, limit)
        except tf.errors.OpError as e:
            with open(path, "rb") as f:
                reason = too_large(image_size(f.read()), limit)  # the header check's refusal, said plainly
            if reason is not None:
                raise UserError(f"--query {path}: {reason}") from None
            raise UserError(f"--query {path}: not a readable image ({' '.join(str(e).split())[-160:]})") from None
        return inference_fn(self.encoder)(x[None])[0]

    def write_neighbors(self, k: int, queries=None, sample: int = 8, seed: int = 0, path=None):
        """Writes the neighbour grid PNG; returns ``(path, query rows, neighbour rows [Q, k], similarities)``.

        Args:
            k: neighbours per query.
            queries: image paths (members of the set, or other files embedded on the spot), or None.
            sample: without ``queries``, how many queries to draw at random.
            seed: the draw's seed.
            path: the PNG (default ``neighbors.png`` in ``out_dir``).
        """
        emb, rows = self.embeddings(), self.index()
        if queries:
            resolved = self._resolve_queries(list(queries), rows)
        else:
            picks = np.random.default_rng(seed).choice(len(rows), size=min(sample, len(rows)), replace=False)
            resolved = [(int(r), None, None) for r in np.sort(picks)]
        query_rows = np.array([r for r, _, _ in resolved], np.int64)
        vectors = np.stack([emb[r] if r >= 0 else e for r, e, _ in resolved])
        idx, sims = self._nearest(vectors, k, exclude=query_rows)
        uids = [rows[i]["uid"] for i in idx.reshape(-1)]
        size = GRID_THUMBNAIL
        neighbor_views = self._views(uids, size).reshape(idx.shape + (size, size, 3))
        member_views = self._views([rows[r]["uid"] for r in query_rows if r >= 0], size)
        query_views, titles, m = [], [], 0
        for r, _, file in resolved:
            if r >= 0:
                query_views.append(member_views[m])
                m += 1
                titles.append(rows[r]["class"] or os.path.basename(rows[r]["path"])[:18])
            else:
                query_views.append(thumbnails.file_view(file, size, self.contract.crop_fraction))
                titles.append(os.path.basename(file)[:18])
        path = path or os.path.join(self.out_dir, NEIGHBORS_FILE)
        neighbors.neighbor_grid(path, np.stack(query_views), neighbor_views, sims, titles)
        return path, query_rows, idx, sims

    def write_duplicates(self, threshold: float, path=None) -> tuple:
        """Writes ``duplicates.tsv``: pairs with cosine similarity ≥ ``threshold``; returns ``(path, count)``.

        Pairs come from the saved index's range queries when there is one
        (exact for a flat index), else from comparing every pair.
        """
        path = path or os.path.join(self.out_dir, DUPLICATES_FILE)
        paths = [r["path"] for r in self.index()]
        index = self.ann_index()
        pairs = None if index is None else index.pairs(self.embeddings(), threshold)
        return path, duplicates.write_duplicates(path, self.embeddings(), paths, threshold, pairs=pairs)

    def write_projector(self, max_points: int = 10_000, seed: int = 0, out_dir=None) -> tuple:
        """Writes the Embedding Projector files (all rows, or a random ``max_points``); ``(dir, points)``."""
        out_dir = out_dir or os.path.join(self.out_dir, PROJECTOR_DIR)
        emb, rows = self.embeddings(), self.index()
        picks = np.arange(len(rows))
        if len(rows) > max_points:
            picks = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_points, replace=False))
        chosen = [rows[i] for i in picks]
        views = self._views([r["uid"] for r in chosen], projector.thumbnail_side(len(chosen)))
        meta = [[r["label"], r["class"], r["path"]] for r in chosen]
        projector.write_projector(out_dir, emb[picks], meta, views)
        return out_dir, len(chosen)
