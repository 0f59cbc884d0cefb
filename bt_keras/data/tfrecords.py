"""Writing a source as TFRecord shards (what ``bt-data`` runs).

The shards hold ``tf.train.Example`` records with the original encoded bytes
(``image/encoded``; JPEGs stay JPEGs, so training decodes only the crop),
``image/class/label`` and ``image/class/text`` when labelled, and
``image/filename`` for folders; ``NAME.bt-data.json`` next to them records
counts and class names, which :class:`~bt_keras.data.sources.TFRecordSource`
reads back instead of counting.

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

import numpy as np
import tensorflow as tf

from bt_keras.data.config import check_positive
from bt_keras.data.prepare import prepare
from bt_keras.data.sources import AUTOTUNE, source_name
from bt_keras.data.validation import report_skipped, sniff
from bt_keras.errors import DataError
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
) -> dict:
    """Writes a source's usable images as ``image/encoded`` TFRecord shards.

    Files are validated (decoded once) and bad ones skipped and listed, then
    written in a fixed shuffled order spread over ``num_shards`` files
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

    Examples:

    >>> import tempfile, numpy as np
    >>> out = tempfile.mkdtemp()
    >>> write_tfrecords((np.zeros([10, 8, 8, 3], np.uint8), np.arange(10)), out, num_shards=2)["num_examples"]
    10
    """
    check_positive("num_shards", num_shards)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise DataError(f"name: use letters, digits, '.', '_' or '-', got {name!r}")
    prep = prepare(source, data_dir=data_dir, cache=False, cache_max_mb=1, validate="full")
    out = output_dir.rstrip("/")
    report_skipped(prep.skipped, prep.num_examples, skipped_path or f"{out}/{name}.skipped.tsv")
    # A fixed shuffle spreads classes over all shards and over each shard.
    records, n = prep.source.records_to_write(prep, np.random.default_rng(seed))
    num_shards = min(num_shards, max(n, 1))
    tf.io.gfile.makedirs(output_dir)
    paths = [f"{out}/{name}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    counts = _write_shards(records, paths, prep)
    info = {
        "num_examples": int(sum(counts)),
        "counts": {os.path.basename(p): c for p, c in zip(paths, counts)},
        "has_labels": bool(prep.has_labels),
        "class_names": list(prep.class_names) if prep.class_names else None,
        "source": source_name(source),
        "skipped": len([s for s in prep.skipped if not s[1].startswith("ignored:")]),
    }
    atomic_write(f"{out}/{name}.bt-data.json", json.dumps(info, indent=2))
    return info


def _write_shards(records: tf.data.Dataset, paths: list, prep) -> list:
    """Writes ``(uid, bytes, label)`` records round-robin into ``paths``; the count of each."""
    src, class_names = prep.source, prep.class_names
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    counts = [0] * len(paths)
    try:
        for k, (u, data, y) in enumerate(records.prefetch(AUTOTUNE).as_numpy_iterator()):
            feats = {
                "image/encoded": _bytes_feature(data),
                "image/format": _bytes_feature((sniff(data) or "unknown").lower().encode()),
            }
            if prep.has_labels:
                feats["image/class/label"] = _int_feature(y)
                if class_names:
                    feats["image/class/text"] = _bytes_feature(str(class_names[y]).encode())
            filename = src.filename(u)
            if filename is not None:
                feats["image/filename"] = _bytes_feature(filename.encode())
            s = k % len(paths)
            writers[s].write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
            counts[s] += 1
    finally:
        for w in writers:
            w.close()
    return counts
