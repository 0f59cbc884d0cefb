"""Embeddings of a whole source, and what a person looks at to judge them.

:func:`embed_source` runs a frozen encoder (a run, a ``.keras`` file, a
SavedModel or an ONNX model, see :func:`bt_keras.frozen.load_frozen_encoder`)
over any source into ``embeddings.npy`` + ``index.tsv`` and returns an
:class:`EmbeddingSet`, which writes the nearest-neighbour grid
(:mod:`~bt_keras.embed.neighbors`), the near-duplicate list
(:mod:`~bt_keras.embed.duplicates`) and TensorBoard Embedding Projector files
(:mod:`~bt_keras.embed.projector`). ``bt-embed`` is the command line.
One module per concern: :mod:`~bt_keras.embed.api` (the pass),
:mod:`~bt_keras.embed.writer` (the files), :mod:`~bt_keras.embed.thumbnails`
(pictures of the images as the encoder saw them), :mod:`~bt_keras.embed.index`
(the nearest-neighbour index ``ann.faiss`` that ``--neighbors``,
``--duplicates`` and ``bt-search`` query).

Examples:

>>> import bt_keras.embed
>>> bt_keras.embed.embed_source.__module__
'bt_keras.embed.api'
"""

from __future__ import annotations

from bt_keras._lazy import lazy_namespace

_EXPORTS = {
    "embed_source": "bt_keras.embed.api",
    "EmbeddingSet": "bt_keras.embed.embedding_set",
    **{name: "bt_keras.embed.writer" for name in ("EmbeddingWriter", "read_index")},
    **{name: "bt_keras.embed.neighbors" for name in ("nearest_neighbors", "neighbor_grid")},
    **{name: "bt_keras.embed.duplicates" for name in ("duplicate_pairs", "write_duplicates")},
    "write_projector": "bt_keras.embed.projector",
    **{name: "bt_keras.embed.index" for name in ("build_index", "load_index")},
}
_SUBMODULES = ("api", "duplicates", "embedding_set", "index", "neighbors", "projector", "thumbnails", "writer")

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS, submodules=_SUBMODULES)
