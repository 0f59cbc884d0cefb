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

import contextlib
import json
import os
import time
from pathlib import Path

from bt_keras.errors import UserError

SKIPPED_FILE = "skipped.tsv"
SUMMARY_FILE = "embeddings.json"
_MARK = "bt-embed"  # in the names of its temporaries and lock beside --out
# Everything bt-embed writes, the summary last: an --overwrite replaces all of them and removes those
# the new run does not write (an earlier run's duplicates.tsv or projector/).
OUTPUT_ENTRIES = (
    "embeddings.npy",
    "index.tsv",
    SKIPPED_FILE,
    "neighbors.png",
    "duplicates.tsv",
    "projector",
    "ann.faiss",  # the nearest-neighbour index (bt_keras.embed.index) and its parameters
    "ann.json",
    SUMMARY_FILE,
)


def _frozen(encoder, contract):
    from bt_keras.frozen import FrozenEncoder

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
    max_image_pixels: int | None = None,
    finish=None,
    index: bool | None = None,
):
    """Embeds every usable image of ``source`` into ``out_dir``; returns an :class:`EmbeddingSet`.

    Writes ``embeddings.npy`` (float32 ``[N, D]``, filled through a memory
    map), ``index.tsv`` (row, uid, path, label, class; see
    :mod:`bt_keras.embed.writer`), ``skipped.tsv`` (bad images and why) and
    ``embeddings.json`` (what was embedded with what). Rows follow the
    source's order (sorted paths for folders). Everything is built in a hidden
    directory beside ``out_dir`` and published as for ``bt-export``
    (:mod:`bt_keras.export.publish`): an interrupted run publishes nothing,
    ``overwrite`` replaces every output of the earlier run, and a second run
    into the same ``out_dir`` meanwhile is refused (a lock beside it).

    Args:
        source: ``folder:PATH``, ``tfrecord:GLOB``, ``tfds:NAME[:SPLIT]``,
            ``demo[:SPLIT]``, a uint8 array or ``(images, labels)``; labels are optional.
        encoder: a :class:`~bt_keras.frozen.FrozenEncoder`
            (:func:`~bt_keras.frozen.load_frozen_encoder`) or a Keras model with ``contract``.
        out_dir: local output directory.
        contract: the preprocessing contract of a Keras ``encoder``.
        batch_size: images per batch.
        data_dir: TFDS ``data_dir``.
        overwrite: replace embeddings already in ``out_dir``.
        cache, validate: as in :class:`~bt_keras.data.DataConfig`.
        progress: ``progress(done, total)`` after each batch, or None.
        max_image_pixels: larger images are skipped (None: the default
            :data:`~bt_keras.contract.MAX_IMAGE_PIXELS`; a run's ``data.max_image_pixels``).
        finish: ``finish(result)`` writes more files into ``result.out_dir`` (the neighbour
            grid, ...) before publishing, so they are published with the embeddings; or None.
        index: build the nearest-neighbour index (``ann.faiss``, see
            :mod:`bt_keras.embed.index`) after the embeddings; None: when
            FAISS is installed (``bt_keras[index]``), True: required.
    """
    from bt_keras.export.publish import publish, staging_directory

    out = Path(os.path.abspath(str(out_dir)))
    check_out_dir(str(out_dir), overwrite)
    frozen = _frozen(encoder, contract)
    check = lambda o, ow: check_out_dir(str(o), ow)
    with _out_lock(out), staging_directory(out, mark=_MARK) as stage:
        result = _embed_into(
            str(stage), str(out_dir), source, frozen, batch_size, data_dir, cache, validate, progress, max_image_pixels
        )
        ann_meta = build_ann_index(result, index)  # in the staging directory: --neighbors/--duplicates use it
        if finish is not None:
            finish(result)
        _complete_summary(Path(stage), ann_meta)
        publish(stage, out, overwrite, entries=OUTPUT_ENTRIES, check=check, mark=_MARK)
    result.out_dir = str(out_dir)
    return result


@contextlib.contextmanager
def _out_lock(out: Path):
    """One bt-embed at a time per ``--out``: a lock file beside it (see :mod:`bt_keras.run_lock`)."""
    from bt_keras.errors import RunLocked
    from bt_keras.run_lock import RunDirectoryLock

    lock = RunDirectoryLock(str(out.parent))
    lock.path = str(out.parent / f".{out.name}.{_MARK}.lock")
    try:
        lock.acquire()
    except RunLocked:
        holder = lock.holder() or {}
        raise UserError(
            f"--out {out} is being written by another bt-embed (process {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}); wait for it or choose another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _embed_into(stage, out_dir, source, frozen, batch_size, data_dir, cache, validate, progress, max_image_pixels):
    """The embedding pass into the staging directory ``stage``; returns the :class:`EmbeddingSet`.

    Args:
        stage: the staging directory (published by :func:`embed_source`).
        out_dir: where it will be published (messages name it).
        source, frozen: the source and the frozen encoder.
        batch_size, data_dir, cache, validate, progress, max_image_pixels: as in :func:`embed_source`.
    """
    from bt_keras.data.pipelines import eval_dataset
    from bt_keras.data.prepare import prepare
    from bt_keras.embed.embedding_set import EmbeddingSet
    from bt_keras.evaluation.features import inference_fn
    from bt_keras.io import atomic_write

    c = frozen.contract
    start = time.perf_counter()
    limit = {} if max_image_pixels is None else {"max_image_pixels": int(max_image_pixels)}
    # Listed once: the rows' uids, the paths written for them and the thumbnails all come
    # from this one listing (a second one would see a file added meanwhile and shift every path).
    prep = prepare(source, data_dir=data_dir, cache=cache, validate=validate, **limit)
    ds = eval_dataset(
        source,
        batch_size=batch_size,
        **c.eval_kwargs(),
        data_dir=data_dir,
        skipped_path=os.path.join(stage, SKIPPED_FILE),
        skipped_shown_as=os.path.join(out_dir, SKIPPED_FILE),
        cache=cache,
        validate=validate,
        with_ids=True,
        prepared=prep,
        **limit,
    )
    rows, dim = _write_rows(stage, ds, prep, inference_fn(frozen), progress)
    seconds = time.perf_counter() - start
    num_skipped = sum(1 for _, reason in prep.skipped if not reason.startswith("ignored:"))
    result = EmbeddingSet(
        stage,
        source,
        c,
        frozen,
        rows,
        dim,
        num_skipped + prep.num_examples - rows,
        seconds,
        data_dir,
        {"cache": cache, "validate": validate, **limit},
        prep,
    )
    summary = {
        "source": prep.source.name,
        "encoder": frozen.origin,
        "preprocessing": json.loads(c.to_json()),
        "num_images": rows,
        "dim": dim,
        "num_skipped": result.num_skipped,
        "seconds": round(seconds, 3),
        "files": {"embeddings": "embeddings.npy", "index": "index.tsv", "skipped": SKIPPED_FILE},
    }
    atomic_write(os.path.join(stage, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    return result


def _write_rows(stage, ds, prep, infer, progress) -> tuple[int, int]:
    """Embeds every batch of ``ds`` into ``stage`` (rows, paths, labels); returns (rows, dim).

    A failure (or an interrupt) aborts the writer, so no half-written array is left to publish.
    """
    import numpy as np

    from bt_keras.embed.writer import EmbeddingWriter

    names = prep.class_names or []
    writer = None
    try:
        for images, labels, uids in ds:
            emb = infer(images)
            if writer is None:
                writer = EmbeddingWriter(stage, prep.num_examples, emb.shape[-1])
            uids, labels = np.asarray(uids), np.asarray(labels)
            paths = [prep.source.locate(u) for u in uids]
            classes = [names[y] if 0 <= y < len(names) else "" for y in labels]
            writer.add(emb, uids, paths, labels, classes)
            if progress is not None:
                progress(writer.rows, prep.num_examples)
        if writer is None:
            raise UserError(f"{prep.source.name}: no usable image to embed")
        return writer.close(), writer.dim
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


_OPTIONAL_OUTPUTS = {
    "neighbors": "neighbors.png",
    "duplicates": "duplicates.tsv",
    "projector": "projector",
    "ann_index": "ann.faiss",
    "ann_index_parameters": "ann.json",
}


def _complete_summary(stage: Path, ann_meta) -> None:
    """Adds to ``embeddings.json`` the files written after the embeddings (neighbour grid, duplicates,
    projector, index) and the index's parameters, so the summary lists everything the run publishes."""
    from bt_keras.io import atomic_write

    path = stage / SUMMARY_FILE
    summary = json.loads(path.read_text())
    summary["files"].update({key: name for key, name in _OPTIONAL_OUTPUTS.items() if (stage / name).exists()})
    if ann_meta is not None:
        summary["ann_index"] = ann_meta
    atomic_write(str(path), json.dumps(summary, indent=2) + "\n")


def faiss_installed() -> bool:
    """Whether ``faiss`` can be imported (the ``bt_keras[index]`` extra)."""
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def build_ann_index(result, index: bool | None):
    """Builds the set's nearest-neighbour index (``index`` None: if FAISS is installed); its parameters or None."""
    if index is False or (index is None and not faiss_installed()):
        return None
    return result.build_ann_index().meta
