"""Making a source ready for one input pipeline: list, validate, and decide what to cache.

:func:`prepare` lists a source's shard, validates it (see
:mod:`~bt_keras.data.validation`) and, when the decoded images fit the memory
budget, decodes them once into memory; otherwise it gives a ``stream`` of
``(uid, encoded bytes, label)`` records. Each source kind has its own
preparation, picked from a table by ``source.kind``. Prepared sources are
kept (a few) so that the training, evaluation and counting of one run list
and validate a source once.

Examples:

>>> from bt_keras.data.prepare import source_info
>>> info = source_info("demo:test")
>>> info.num_examples, info.has_labels
(359, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from bt_keras.contract import MAX_IMAGE_PIXELS
from bt_keras.data.checks import check_validate
from bt_keras.data.prepared_cache import PREPARED, PreparedCache, listing_stamp  # noqa: F401 (public here too)
from bt_keras.data.sources import (
    AUTOTUNE,
    FolderSource,
    MemorySource,
    Source,
    TFDSSource,
    TFRecordSource,
    parse_source,
    plain,
    source_name,
)
from bt_keras.data.validation import confirm_quick, image_size, quick_check, reason_summary, reasons
from bt_keras.errors import DataError
from bt_keras.preprocess import decode_rgb

__all__ = ["Prepared", "SourceInfo", "count_examples", "open_source", "prepare", "source_info"]


@dataclass
class SourceInfo:
    """What a source holds: usable images, labels and what was skipped."""

    name: str
    num_examples: int
    has_labels: bool
    class_names: list | None
    skipped: list  # [(path, reason)]
    num_files: int


@dataclass
class Prepared:
    """A source made ready for one input pipeline.

    Either ``memory`` (decoded images) or ``stream``, a function
    ``(shuffle_seed=None, deterministic=True, shuffle_buffer=0,
    input_context=None)`` giving ``(uid, encoded bytes, label)`` records
    (TFDS shards its files by ``input_context``; the others are sharded already).
    """

    source: Source
    memory: MemorySource | None  # decoded images when cached
    stream: object | None
    num_examples: int
    num_files: int
    skipped: list
    has_labels: bool
    class_names: list | None
    good_uids: np.ndarray | None = None  # folders: the usable files


def _estimate_decoded_bytes(sample_bytes: list, n_items: int, max_pixels: int = MAX_IMAGE_PIXELS) -> float:
    """Mean decoded size of the sample (sizes read from headers, nothing decoded) times ``n_items``."""
    sizes = []
    for data in sample_bytes:
        size = image_size(data)
        if size is not None and size[0] * size[1] <= max_pixels:
            sizes.append(size[0] * size[1] * 3)
    return (float(np.mean(sizes)) if sizes else 0.0) * n_items


def _memory_budget(cache_max_mb: int) -> float:
    budget = cache_max_mb * 2**20
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    budget = min(budget, int(line.split()[1]) * 1024 / 2)
    except OSError:
        pass
    return budget


def _scan_decode(records: tf.data.Dataset, keep: bool, max_pixels: int = MAX_IMAGE_PIXELS):
    """Decodes every record once; returns survivors (uids, labels, shapes, flat pixels)."""

    def dec(uid, data, label):
        image = decode_rgb(data, max_pixels)
        shape = tf.shape(image)[:2]
        flat = tf.reshape(image, [-1]) if keep else tf.zeros([0], tf.uint8)
        return uid, label, shape, flat

    ds = records.map(plain(dec), num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors()
    ds = ds.ragged_batch(512).prefetch(2)
    uids, labels, shapes, flats = [], [], [], []
    for u, y, s, f in ds:
        uids.append(u.numpy())
        labels.append(y.numpy())
        shapes.append(s.numpy())
        if keep:
            flats.append(f.flat_values.numpy())
    cat = lambda a, dt, shape=(0,): np.concatenate(a) if a else np.zeros(shape, dt)
    return (
        cat(uids, np.int64),
        cat(labels, np.int32),
        cat(shapes, np.int32, (0, 2)),
        cat(flats, np.uint8) if keep else None,
    )


def _scan_quick(records: tf.data.Dataset, max_pixels: int = MAX_IMAGE_PIXELS):
    ds = records.map(
        plain(lambda u, d, y: (u, quick_check(d, max_pixels))), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    uids, codes = [], []
    for u, c in ds.batch(4096):
        uids.append(u.numpy())
        codes.append(c.numpy())
    return np.concatenate(uids), np.concatenate(codes)


def _to_memory(name, uids, labels, shapes, flat, has_labels) -> MemorySource:
    labels = labels if has_labels else None
    if len(shapes) and (shapes == shapes[0]).all():
        h, w = (int(v) for v in shapes[0])
        return MemorySource(name, images=flat.reshape([-1, h, w, 3]), labels=labels, uids=uids)
    sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1] * 3
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return MemorySource(name, labels=labels, flat=flat, offsets=offsets, shapes=shapes, uids=uids)


def _has_labels(src: Source) -> bool:
    if isinstance(src, (FolderSource, MemorySource)):
        return src.labels is not None
    if isinstance(src, TFDSSource):
        return src.label_key is not None
    return bool(getattr(src, "has_labels", False))


def _check_not_empty(src: Source) -> None:
    if isinstance(src, FolderSource) and not src.paths:
        raise DataError(
            f"{src.name}: no image files (jpg, jpeg, png, bmp, gif) found"
            + (f"; {len(src.ignored)} other files ignored" if src.ignored else "")
        )


def open_source(source, data_dir=None, *, key: str | None = None, labelled: bool = False) -> Source:
    """Opens a source (lists the folder, globs the files, finds the TFDS split); errors name ``key``.

    The one place where a source is opened on behalf of a config key or flag:
    a missing path, an empty folder, an unknown scheme or (with ``labelled``)
    a source without labels is a one-line ``DataError`` starting with
    ``key`` (e.g. ``eval.train_source: folder:x: no such directory``).

    Args:
        source: a source string or NumPy arrays (see :mod:`bt_keras.data`).
        data_dir: TensorFlow Datasets directory.
        key: the config key or flag holding ``source``, put first in messages.
        labelled: also require labels (class sub-folders for folders).

    Examples:

    >>> open_source("demo:test", key="eval.test_source", labelled=True).n
    359
    >>> open_source("folder:/no/such/dir", key="eval.train_source")
    Traceback (most recent call last):
    ...
    bt_keras.errors.DataError: eval.train_source: folder:/no/such/dir: no such directory (looked for /no/such/dir)
    """
    try:
        src = parse_source(source, data_dir)
        _check_not_empty(src)
        if labelled and not _has_labels(src):
            hint = " (no class sub-folders)" if isinstance(src, FolderSource) else ""
            raise DataError(f"{src.name}: has no labels{hint}; a labelled source is needed here")
    except DataError as e:
        if key is None:
            raise
        raise DataError(f"{key}: {e}") from None
    return src


def prepare(
    source,
    *,
    data_dir=None,
    shard=(1, 0),
    cache=None,
    cache_max_mb=2048,
    validate="auto",
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> Prepared:
    """Lists, validates and (if it fits) decodes a source into memory for one pipeline.

    Args:
        source: a source string or NumPy arrays (see :mod:`bt_keras.data`).
        data_dir: TensorFlow Datasets directory.
        shard: ``(number of input pipelines, this pipeline's index)``.
        cache, cache_max_mb, validate, max_image_pixels: as in :class:`~bt_keras.data.DataConfig`.

    Examples:

    >>> prepare("demo:test", shard=(2, 1)).num_examples
    179
    """
    check_validate(validate)
    num, index = shard
    src = parse_source(source, data_dir)
    key = None
    if isinstance(source, str):
        # Re-listing is cheap; the key changes when files appear or disappear.
        key = (source, data_dir, num, index, cache, cache_max_mb, validate, max_image_pixels, listing_stamp(src))
        if PREPARED.get(key) is not None:
            return PREPARED.get(key)
    prep = _PREPARERS[src.kind](src, shard, cache, cache_max_mb, validate, max_image_pixels)
    if key is not None:
        PREPARED.put(key, prep)
    return prep


def _prepare_memory(src: MemorySource, shard, cache, cache_max_mb, validate, max_pixels) -> Prepared:
    mem = src.shard(*shard)
    return Prepared(src, mem, None, mem.n, src.n, [], src.labels is not None, None)


def _decide_cache(cache, estimate, cache_max_mb):
    if cache is None:
        return estimate <= _memory_budget(cache_max_mb)
    return bool(cache)


def _read_sample(src: FolderSource, uids) -> list:
    """The bytes of the files of ``uids`` that can be read (a bad one is diagnosed and skipped later)."""
    sample = []
    for u in uids:
        try:
            sample.append(src.read(int(u)))
        except (OSError, tf.errors.OpError):
            continue
    return sample


def _prepare_folder(src: FolderSource, shard, cache, cache_max_mb, validate, max_pixels) -> Prepared:
    sel = src.shard(*shard)
    _check_not_empty(src)
    sample = _read_sample(src, sel[:: max(1, len(sel) // 16)][:16])
    cached = _decide_cache(cache, _estimate_decoded_bytes(sample, len(sel), max_pixels), cache_max_mb)
    mode = validate if validate != "auto" else ("full" if cached else "quick")
    skipped = []
    memory, good = None, sel
    if cached or mode == "full":
        uids, labels, shapes, flat = _scan_decode(src.records(sel), keep=cached, max_pixels=max_pixels)
        bad = np.setdiff1d(src.uids[sel], uids)
        skipped = reasons(src, bad, max_pixels)
        good = uids
        if cached:
            memory = _to_memory(src.name, uids, labels, shapes, flat, src.labels is not None)
    elif mode == "quick":
        uids, codes = _scan_quick(src.records(sel), max_pixels)
        skipped, cleared = confirm_quick(src, uids, codes, max_pixels)
        good = np.sort(np.concatenate([uids[codes == 0], cleared]))
    if len(good) == 0:
        raise DataError(f"{src.name}: no usable image among {len(sel):,} files ({reason_summary(skipped)})")

    def stream(shuffle_seed=None, deterministic=True, shuffle_buffer=0, input_context=None):
        # input_context: unused, the shard was chosen above (every stream takes the same arguments).
        return src.records(good, shuffle_seed=shuffle_seed, deterministic=deterministic)

    return Prepared(
        src,
        memory,
        None if memory else stream,
        len(good),
        len(sel),
        skipped + src.ignored,
        src.labels is not None,
        src.class_names,
        good,
    )


def _prepare_tfrecord(src: TFRecordSource, shard, cache, cache_max_mb, validate, max_pixels) -> Prepared:
    file_ids, rec_shard = src.file_shard(*shard)
    sample = []
    for rec in src.records(file_ids[:1], rec_shard).ignore_errors().take(8):
        sample.append(rec[1].numpy())
    sizes = [tf.io.gfile.stat(src.files[i]).length for i in file_ids[:8]]
    enc = np.mean([len(s) for s in sample]) if sample else 1.0
    # Decoded size of the whole shard, from the sampled decoded/encoded ratio.
    shard_bytes = np.mean(sizes) * len(file_ids) / rec_shard[0]
    estimate = _estimate_decoded_bytes(sample, 1, max_pixels) / max(enc, 1.0) * shard_bytes
    cached = _decide_cache(cache, estimate, cache_max_mb)
    mode = validate if validate != "auto" else ("full" if cached else "off")
    counts = src.counts() if mode != "off" or cached else None
    skipped, memory = [], None
    bad_sorted = np.zeros([0], np.int64)
    if mode in ("full", "quick") or cached:
        expected = np.concatenate([(np.int64(f) << 32) + np.arange(counts[f], dtype=np.int64) for f in file_ids])
        if rec_shard[0] > 1:
            expected = expected[rec_shard[1] :: rec_shard[0]]
        if cached or mode == "full":
            uids, labels, shapes, flat = _scan_decode(
                src.records(file_ids, rec_shard), keep=cached, max_pixels=max_pixels
            )
            bad = np.setdiff1d(expected, uids)
            if cached:
                memory = _to_memory(src.name, uids, labels, shapes, flat, src.has_labels)
            n_good = len(uids)
        else:
            uids, codes = _scan_quick(src.records(file_ids, rec_shard), max_pixels)
            flagged, cleared = confirm_quick(src, uids, codes, max_pixels)
            bad = np.setdiff1d(np.union1d(np.setdiff1d(expected, uids), uids[codes != 0]), cleared)
            n_good = len(expected) - len(bad)
        skipped = reasons(src, bad, max_pixels)
        bad_sorted = np.sort(bad)
        n_total = len(expected)
    else:
        n_total = n_good = _tfrecord_count_estimate(src, file_ids, rec_shard)
    # Files counted without a sidecar whose tail could not be read: their lost records are reported.
    skipped = skipped + [(src.files[f], src.damaged[f]) for f in file_ids if f in src.damaged]
    if n_good == 0:
        raise DataError(f"{src.name}: no usable image among {n_total:,} records ({reason_summary(skipped)})")

    def stream(shuffle_seed=None, deterministic=True, shuffle_buffer=0, input_context=None):
        ds = src.records(
            file_ids, rec_shard, shuffle_seed=shuffle_seed, deterministic=deterministic, shuffle_buffer=shuffle_buffer
        )
        if len(bad_sorted):
            bad_t = tf.constant(bad_sorted)
            ds = ds.filter(lambda u, d, y: ~_member(u, bad_t))
        return ds

    return Prepared(src, memory, None if memory else stream, n_good, n_total, skipped, src.has_labels, src.class_names)


def _tfrecord_count_estimate(src, file_ids, rec_shard):
    counts = src.counts()
    return sum(counts[f] for f in file_ids) // max(rec_shard[0], 1)


def _member(x, sorted_values):
    i = tf.searchsorted(sorted_values, tf.reshape(x, [1]))[0]
    i = tf.minimum(i, tf.size(sorted_values, out_type=i.dtype) - 1)
    return tf.gather(sorted_values, i) == x


def _prepare_tfds(src: TFDSSource, shard, cache, cache_max_mb, validate, max_pixels) -> Prepared:
    ds = src.records(None)
    n = int(ds.cardinality())
    if n < 0:
        n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    if src.image_shape[0] and src.image_shape[1]:
        estimate = float(n * src.image_shape[0] * src.image_shape[1] * 3)
    else:
        estimate = _estimate_decoded_bytes([r[1].numpy() for r in ds.take(16)], n, max_pixels)
    estimate /= shard[0]
    cached = _decide_cache(cache, estimate, cache_max_mb)
    if n == 0:
        raise DataError(f"{src.name}: the split is empty")
    if cached:
        records = src.records(None)
        if shard[0] > 1:
            records = records.shard(*shard)
        uids, labels, shapes, flat = _scan_decode(records, keep=True, max_pixels=max_pixels)
        memory = _to_memory(src.name, uids, labels, shapes, flat, src.label_key is not None)
        expected = len(range(shard[1], n, shard[0]))
        skipped = []
        if len(uids) < expected:
            skipped = [(src.name, f"{expected - len(uids)} records could not be decoded")]
        return Prepared(src, memory, None, len(uids), expected, skipped, src.label_key is not None, src.class_names)

    def stream(shuffle_seed=None, deterministic=True, shuffle_buffer=0, input_context=None):
        return src.records(
            input_context, shuffle_seed=shuffle_seed, deterministic=deterministic, shuffle_buffer=shuffle_buffer
        )

    return Prepared(src, None, stream, n // shard[0], n, [], src.label_key is not None, src.class_names)


_PREPARERS = {
    "memory": _prepare_memory,
    "folder": _prepare_folder,
    "tfrecord": _prepare_tfrecord,
    "tfds": _prepare_tfds,
}


def source_info(source, data_dir: str | None = None, **kwargs) -> SourceInfo:
    """Usable image count, labels, class names and skipped files of a source.

    Args:
        source: a source string or NumPy arrays.
        data_dir: TensorFlow Datasets directory.
        **kwargs: ``cache``, ``cache_max_mb``, ``validate``, ``max_image_pixels`` as in
            :class:`~bt_keras.data.DataConfig`.

    Examples:

    >>> info = source_info("demo:test")
    >>> info.num_examples, info.has_labels
    (359, True)
    """
    prep = prepare(
        source,
        data_dir=data_dir,
        cache=kwargs.get("cache"),
        cache_max_mb=kwargs.get("cache_max_mb", 2048),
        validate=kwargs.get("validate", "auto"),
        max_image_pixels=kwargs.get("max_image_pixels", MAX_IMAGE_PIXELS),
    )
    return SourceInfo(
        source_name(source), prep.num_examples, prep.has_labels, prep.class_names, list(prep.skipped), prep.num_files
    )


def count_examples(source, data_dir: str | None = None, **kwargs) -> int:
    """Number of usable images in ``source`` (for steps per epoch).

    Args:
        source, data_dir, **kwargs: as in :func:`source_info`.

    Examples:

    >>> count_examples("demo")
    1438
    """
    return source_info(source, data_dir, **kwargs).num_examples
