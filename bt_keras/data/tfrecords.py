"""Writing a source as TFRecord shards (what ``bt-data`` runs).

The shards hold ``tf.train.Example`` records with the original encoded bytes
(``image/encoded``; JPEGs stay JPEGs, so training decodes only the crop),
``image/class/label`` and ``image/class/text`` when labelled, and
``image/filename`` for folders; ``NAME.bt-data.json`` next to them records
counts and class names, which :class:`~bt_keras.data.sources.TFRecordSource`
reads back instead of counting.

An output is built in a hidden temporary directory beside it and published
as a whole: nothing appears until every shard is written, an interruption
leaves the previous output as it was, and a previous output of the same
name is refused unless ``overwrite`` (then all of its files are replaced,
whatever its shard count). Publishing removes the old sidecar first and
renames the new one last, so a reader never sees a sidecar beside shards it
does not describe.

Examples:

>>> import tempfile, numpy as np
>>> from bt_keras.data.tfrecords import write_tfrecords
>>> out = tempfile.mkdtemp()
>>> write_tfrecords((np.zeros([4, 8, 8, 3], np.uint8), np.arange(4)), out, num_shards=2)["counts"]
{'train-00000-of-00002.tfrecord': 2, 'train-00001-of-00002.tfrecord': 2}
"""

from __future__ import annotations

import json
import os
import re
import uuid

import numpy as np
import tensorflow as tf

from bt_keras.data.checks import check_positive
from bt_keras.data.prepare import prepare
from bt_keras.data.sources import AUTOTUNE, source_name
from bt_keras.data.validation import report_skipped, sniff
from bt_keras.errors import DataError, one_line
from bt_keras.io import atomic_write

__all__ = ["write_tfrecords"]


def _bytes_feature(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int_feature(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))


def write_tfrecords(
    source,
    output_dir: str,
    *,
    name: str = "train",
    num_shards: int = 8,
    data_dir: str | None = None,
    seed: int = 0,
    skipped_path: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Writes a source's usable images as ``image/encoded`` TFRecord shards.

    Files are validated (decoded once) and bad ones skipped and listed, then
    written in a fixed shuffled order, in consecutive runs over ``num_shards`` files
    ``{output_dir}/{name}-NNNNN-of-MMMMM.tfrecord`` (local or gs://), with the
    original encoded bytes (JPEGs stay JPEGs, so training decodes only the
    crop). A ``{name}.bt-data.json`` next to them records counts and class
    names. Returns that summary.

    Args:
        source: a source string or NumPy arrays (arrays are written as PNG).
        output_dir: the shards' directory.
        name: the shards' file prefix.
        num_shards: number of files (at most one per image).
        data_dir: TensorFlow Datasets directory for ``tfds:`` sources.
        seed: seed of the fixed shuffle across shards.
        skipped_path: the skipped files' TSV (default ``{output_dir}/{name}.skipped.tsv``).
        overwrite: replace a previous output of this ``name`` in ``output_dir``
            (all its shards, sidecar and TSV); without it that is a ``DataError``.

    Examples:

    >>> import tempfile, numpy as np
    >>> out = tempfile.mkdtemp()
    >>> write_tfrecords((np.zeros([10, 8, 8, 3], np.uint8), np.arange(10)), out, num_shards=2)["num_examples"]
    10
    """
    check_positive("num_shards", num_shards)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise DataError(f"name: use letters, digits, '.', '_' or '-', got {name!r}")
    out = output_dir.rstrip("/") or "/"
    previous = _previous_output(out, name)
    if previous and not overwrite:
        raise DataError(
            f"{out}: already holds a '{name}' output ({len(previous)} files); pass --overwrite to replace it "
            "as a whole, or choose another output directory or --name"
        )
    prep = prepare(source, data_dir=data_dir, cache=False, cache_max_mb=1, validate="full")
    # A fixed shuffle spreads classes over all shards and over each shard.
    records, n = prep.source.records_to_write(prep, np.random.default_rng(seed))
    num_shards = min(num_shards, max(n, 1))
    tf.io.gfile.makedirs(out)
    staging = f"{out}/.{name}.bt-data-{uuid.uuid4().hex[:12]}"
    tf.io.gfile.makedirs(staging)
    try:
        info = _build(prep, records, n, staging, name, num_shards, source)
        report_skipped(
            prep.skipped,
            prep.num_examples,
            skipped_path or f"{staging}/{name}.skipped.tsv",
            shown_as=skipped_path or f"{out}/{name}.skipped.tsv",  # where it is once published
        )
        _publish(staging, out, name, _previous_output(out, name))
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    return info


def _previous_output(out: str, name: str) -> list:
    """The files of an earlier ``bt-data`` output called ``name`` in ``out``."""
    if not tf.io.gfile.isdir(out):
        return []
    pattern = re.compile(re.escape(name) + r"(-\d{5}-of-\d{5}\.tfrecord|\.bt-data\.json|\.skipped\.tsv)")
    return sorted(f"{out}/{f}" for f in tf.io.gfile.listdir(out) if pattern.fullmatch(f))


def _publish(staging: str, out: str, name: str, previous: list) -> None:
    """Moves the staged output into ``out``, replacing ``previous``; the sidecar goes last."""
    sidecar = f"{name}.bt-data.json"
    # The old sidecar goes first: never a sidecar beside shards it does not describe.
    for path in sorted(previous, key=lambda p: not p.endswith(sidecar)):
        tf.io.gfile.remove(path)
    staged = sorted(tf.io.gfile.listdir(staging), key=lambda f: f == sidecar)
    for fname in staged:
        tf.io.gfile.rename(f"{staging}/{fname}", f"{out}/{fname}", overwrite=True)


def _build(prep, records, total: int, staging: str, name: str, num_shards: int, source) -> dict:
    """Writes the shards and the sidecar into ``staging``; returns the sidecar's content."""
    paths = [f"{staging}/{name}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    try:
        counts = _write_shards(records, paths, prep, total)
    except tf.errors.OpError as e:
        raise DataError(
            f"{prep.source.name}: a file could not be read while writing ({one_line(e)}): did the source change? "
            "Nothing was published; a previous output is intact"
        ) from None
    info = {
        "num_examples": int(sum(counts)),
        "counts": {os.path.basename(p): c for p, c in zip(paths, counts)},
        "has_labels": bool(prep.has_labels),
        "class_names": list(prep.class_names) if prep.class_names else None,
        "source": source_name(source),
        "skipped": len([s for s in prep.skipped if not s[1].startswith("ignored:")]),
    }
    atomic_write(f"{staging}/{name}.bt-data.json", json.dumps(info, indent=2))
    return info


def serialize_example(data: bytes, label, class_names, filename) -> bytes:
    """One record: ``image/encoded`` + ``image/format``, the label (and class text) if any, the file name if any.

    Args:
        data: the encoded image.
        label: the class index, or None (unlabelled source).
        class_names: names by index, or None.
        filename: ``image/filename`` (None: not recorded).
    """
    feats = {
        "image/encoded": _bytes_feature(data),
        "image/format": _bytes_feature((sniff(data) or "unknown").lower().encode()),
    }
    if label is not None:
        feats["image/class/label"] = _int_feature(label)
        if class_names:
            feats["image/class/text"] = _bytes_feature(str(class_names[label]).encode())
    if filename is not None:
        feats["image/filename"] = _bytes_feature(filename.encode())
    # deterministic: map entries sorted by key. Otherwise their order follows a per-process hash seed, and the
    # same image gives different bytes in different processes (Beam's workers, or two runs).
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(deterministic=True)


def _write_shards(records: tf.data.Dataset, paths: list, prep, total: int) -> list:
    """Writes ``(uid, bytes, label)`` records into ``paths`` in consecutive runs; the count of each.

    The records come in a fixed shuffled order, so consecutive runs mix classes
    as well as dealing them out would; and only one file is open at a time
    (``--shards 1024`` under the usual ``ulimit -n 1024`` opened every shard at
    once). Shard ``s`` gets ``total // S`` records, one more for the first ``total % S``.

    Args:
        records: the ``(uid, bytes, label)`` records, in their shuffled order.
        paths: the shard files.
        prep: the prepared source (labels, class names, file names).
        total: the number of records.
    """
    src, class_names = prep.source, prep.class_names
    quota = [total // len(paths) + (s < total % len(paths)) for s in range(len(paths))]
    counts = [0] * len(paths)
    shard, writer = 0, tf.io.TFRecordWriter(paths[0])
    try:
        for u, data, y in records.prefetch(AUTOTUNE).as_numpy_iterator():
            while counts[shard] >= quota[shard] and shard + 1 < len(paths):
                writer.close()
                shard += 1
                writer = tf.io.TFRecordWriter(paths[shard])
            writer.write(serialize_example(data, y if prep.has_labels else None, class_names, src.filename(u)))
            counts[shard] += 1
    finally:
        writer.close()
    for path in paths[shard + 1 :]:  # fewer records than announced: the remaining shards exist, empty
        tf.io.TFRecordWriter(path).close()
    return counts
