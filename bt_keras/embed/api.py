"""One pass over a source: preprocess by the encoder's contract, embed in inference mode, write rows.

The images come from :func:`bt_keras.data.eval_dataset` (``with_ids``): the
same sources, the same validation, the same skipped-file report and the same
evaluation preprocessing as ``bt-eval`` and the exported serving signature.

Examples:

>>> import keras, numpy as np, tempfile
>>> from bt_keras.contract import make_contract
>>> x = np.zeros([5, 8, 8, 3], np.uint8)
>>> enc = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten()])
>>> embed_source(x, enc, tempfile.mkdtemp(), contract=make_contract(8), batch_size=2).embeddings().shape
(5, 192)
"""

from __future__ import annotations

import json
import os
import time

from bt_keras.errors import UserError

SKIPPED_FILE = "skipped.tsv"
SUMMARY_FILE = "embeddings.json"


def _frozen(encoder, contract):
    from bt_keras.saving import FrozenEncoder

    if isinstance(encoder, FrozenEncoder):
        if contract is not None and contract != encoder.contract:
            raise UserError("contract= conflicts with the encoder's recorded preprocessing contract")
        return encoder
    if contract is None:
        raise UserError("a Keras encoder needs contract= (bt_keras.contract.make_contract(image_size, ...))")
    return FrozenEncoder.from_keras(encoder, contract)


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuses to replace existing embeddings unless ``overwrite``, before any work is done."""
    from bt_keras.embed.writer import EMBEDDINGS_FILE

    if "://" in out_dir:
        raise UserError(f"--out {out_dir}: embeddings are written through a memory map, give a local directory")
    for name in (EMBEDDINGS_FILE, "embeddings.shards.json"):  # one file, or a Beam run's shards
        if os.path.exists(os.path.join(out_dir, name)) and not overwrite:
            raise UserError(f"{out_dir} already holds {name}; pass --overwrite (overwrite=True) to replace it")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} is a file, not a directory")


def embed_source(
    source,
    encoder,
    out_dir: str,
    *,
    contract=None,
    batch_size: int = 256,
    data_dir: str | None = None,
    overwrite: bool = False,
    cache: bool | None = None,
    validate: str = "auto",
    progress=None,
    index: bool | None = None,
):
    """Embeds every usable image of ``source`` into ``out_dir``; returns an :class:`EmbeddingSet`.

    Writes ``embeddings.npy`` (float32 ``[N, D]``, filled through a memory
    map), ``index.tsv`` (row, uid, path, label, class; see
    :mod:`bt_keras.embed.writer`), ``skipped.tsv`` (bad images and why) and
    ``embeddings.json`` (what was embedded with what). Rows follow the
    source's order (sorted paths for folders).

    Args:
        source: ``folder:PATH``, ``tfrecord:GLOB``, ``tfds:NAME[:SPLIT]``,
            ``demo[:SPLIT]``, a uint8 array or ``(images, labels)``; labels are optional.
        encoder: a :class:`~bt_keras.saving.FrozenEncoder`
            (:func:`~bt_keras.saving.load_frozen_encoder`) or a Keras model with ``contract``.
        out_dir: local output directory.
        contract: the preprocessing contract of a Keras ``encoder``.
        batch_size: images per batch.
        data_dir: TFDS ``data_dir``.
        overwrite: replace embeddings already in ``out_dir``.
        cache, validate: as in :class:`~bt_keras.data.DataConfig`.
        progress: ``progress(done, total)`` after each batch, or None.
        index: build the nearest-neighbour index (``ann.faiss``, see
            :mod:`bt_keras.embed.index`) after the embeddings; None: when
            FAISS is installed (``bt_keras[index]``), True: required.
    """
    import numpy as np

    from bt_keras.data.pipelines import eval_dataset
    from bt_keras.data.prepare import prepare
    from bt_keras.embed.embedding_set import EmbeddingSet
    from bt_keras.embed.writer import EmbeddingWriter
    from bt_keras.evaluation.features import inference_fn
    from bt_keras.io import atomic_write

    out_dir = str(out_dir)
    check_out_dir(out_dir, overwrite)
    frozen = _frozen(encoder, contract)
    c = frozen.contract
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    ds = eval_dataset(
        source,
        batch_size=batch_size,
        **c.eval_kwargs(),
        data_dir=data_dir,
        skipped_path=os.path.join(out_dir, SKIPPED_FILE),
        cache=cache,
        validate=validate,
        with_ids=True,
    )
    # The same (cached) preparation eval_dataset used: paths, class names, counts.
    prep = prepare(source, data_dir=data_dir, cache=cache, validate=validate)
    names = prep.class_names or []
    infer = inference_fn(frozen)
    writer = None
    try:
        for images, labels, uids in ds:
            emb = infer(images)
            if writer is None:
                writer = EmbeddingWriter(out_dir, prep.num_examples, emb.shape[-1])
            uids, labels = np.asarray(uids), np.asarray(labels)
            paths = [prep.source.locate(u) for u in uids]
            classes = [names[y] if 0 <= y < len(names) else "" for y in labels]
            writer.add(emb, uids, paths, labels, classes)
            if progress is not None:
                progress(writer.rows, prep.num_examples)
        if writer is None:
            raise UserError(f"{prep.source.name}: no usable image to embed")
        rows = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    seconds = time.perf_counter() - start
    num_skipped = sum(1 for _, reason in prep.skipped if not reason.startswith("ignored:"))
    result = EmbeddingSet(
        out_dir,
        source,
        c,
        frozen,
        rows,
        writer.dim,
        num_skipped + prep.num_examples - rows,
        seconds,
        data_dir,
        {"cache": cache, "validate": validate},
    )
    summary = {
        "source": prep.source.name,
        "encoder": frozen.origin,
        "preprocessing": json.loads(c.to_json()),
        "num_images": rows,
        "dim": writer.dim,
        "num_skipped": result.num_skipped,
        "seconds": round(seconds, 3),
        "files": {"embeddings": "embeddings.npy", "index": "index.tsv", "skipped": SKIPPED_FILE},
    }
    ann_meta = build_ann_index(result, index)
    if ann_meta is not None:
        summary["files"]["ann_index"] = "ann.faiss"
        summary["ann_index"] = ann_meta
    atomic_write(os.path.join(out_dir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    return result


def faiss_installed() -> bool:
    """Whether ``faiss`` can be imported (the ``bt_keras[index]`` extra)."""
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def build_ann_index(result, index: bool | None):
    """Builds the set's nearest-neighbour index (``index`` None: if FAISS is installed); its parameters or None."""
    if index is False or (index is None and not faiss_installed()):
        return None
    return result.build_ann_index().meta
