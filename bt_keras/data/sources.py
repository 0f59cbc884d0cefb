"""Where images come from: demo, arrays, folder, TFRecord and TFDS sources behind one interface.

:func:`parse_source` turns a ``data.source`` string (or NumPy arrays) into a
:class:`Source`. Every source has a ``kind`` (which :mod:`~bt_keras.data.prepare`
uses to pick its preparation), a ``name`` for messages, ``read(uid)`` /
``locate(uid)`` for diagnosing one bad item, ``image_bytes`` to unwrap a
stored record and ``records_to_write`` for ``bt-data``. Example ids (uids)
are stable: an index for arrays and folders, ``file << 32 | record`` for
TFRecords, a hash of ``tfds_id`` for TFDS, so the augmentation keys do not
depend on sharding or order.

Examples:

>>> from bt_keras.data.sources import parse_source, source_name
>>> src = parse_source("demo:test")
>>> src.kind, src.n, source_name("demo:test")
('memory', 359, 'demo:test')
"""

from __future__ import annotations

import json
import os
import re
import stat

import numpy as np
import tensorflow as tf

from bt_keras.data.demo import load_demo
from bt_keras.data.source_base import (
    AUTOTUNE,
    IMAGE_EXTENSIONS,
    MemorySource,
    Source,
    as_memory,
    plain,
    source_name,
)
from bt_keras.data.source_names import missing_folder, unknown_kind, user_path
from bt_keras.errors import DataError, one_line

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderSource",
    "MemorySource",
    "Source",
    "TFDSSource",
    "TFRecordSource",
    "parse_source",
    "source_name",
]


class FolderSource(Source):
    """Image files under a directory (local or gs://), sorted, labels from sub-folders."""

    kind = "folder"

    def __init__(self, root: str):
        self.name = f"folder:{root}"
        missing = missing_folder(root)
        root = user_path(root).rstrip("/") or "/"
        if missing or not tf.io.gfile.isdir(root):
            raise DataError(missing or f"folder:{root}: no such directory")
        self.root = root
        files, ignored = _walk_remote(root) if "://" in root else _walk_local(root)
        files.sort()
        self.paths = files
        self.ignored = sorted(ignored)
        rel = [p[len(root) :].lstrip("/") for p in files]
        if files and all("/" in r for r in rel):
            top = [r.split("/", 1)[0] for r in rel]
            self.class_names = sorted(set(top))
            index = {c: i for i, c in enumerate(self.class_names)}
            self.labels = np.array([index[t] for t in top], np.int32)
        else:
            self.class_names, self.labels = None, None
        self.uids = np.arange(len(files), dtype=np.int64)

    def listing(self) -> tuple:
        return tuple(self.paths)

    def shard(self, num, index):
        return np.arange(index, len(self.paths), num)

    def locate(self, uid: int) -> str:
        return self.paths[int(uid)]

    def filename(self, uid: int) -> str:
        return self.locate(uid)

    def records_to_write(self, prep, rng):
        """The usable files, in a fixed shuffled order."""
        return self.records(rng.permutation(prep.good_uids)), len(prep.good_uids)

    def read(self, uid: int) -> bytes:
        with tf.io.gfile.GFile(self.paths[int(uid)], "rb") as f:
            return f.read()

    def records(self, sel, *, shuffle_seed=None, deterministic=True):
        """(uid, encoded bytes, label) for the selected files; a full reshuffle per epoch."""
        paths = tf.constant([self.paths[i].encode("utf-8") for i in sel], tf.string)
        labels = self.labels[sel] if self.labels is not None else np.full([len(sel)], -1, np.int32)
        ds = tf.data.Dataset.from_tensor_slices((self.uids[sel], paths, labels))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(sel), seed=shuffle_seed, reshuffle_each_iteration=True)
        return ds.map(
            lambda u, p, y: (u, tf.io.read_file(p), y), num_parallel_calls=AUTOTUNE, deterministic=deterministic
        )


_NOT_AN_IMAGE_NAME = "ignored: not an image file extension (jpg, jpeg, png, bmp, gif)"


def _walk_remote(root: str):
    """``(image paths, [(path, reason)])`` under a ``gs://``-style directory, through ``tf.io.gfile``."""
    files, ignored = [], []
    for dirpath, _, filenames in tf.io.gfile.walk(root):
        for fname in filenames:
            path = dirpath.rstrip("/") + "/" + fname
            if fname.lower().endswith(IMAGE_EXTENSIONS):
                files.append(path)
            else:
                ignored.append((path, _NOT_AN_IMAGE_NAME))
    return files, ignored


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _walk_local(root: str):
    """``(image paths, [(path, reason)])`` under a local directory, nothing opened but directories.

    Each real directory is visited once (by device and inode), so a symbolic
    link loop (``again -> .``) or a second link to a folder adds nothing.
    Only regular files (after following links) are kept: a FIFO, a device
    (``zero.png -> /dev/zero``), a socket or a dangling link is reported and
    never opened. A name that is not valid UTF-8 is reported (the path keeps
    its bytes as surrogate escapes, see :func:`os.fsdecode`) and skipped.
    Reasons starting with ``ignored:`` are not counted as skipped images.
    """
    files, ignored, seen = [], [], set()
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                ignored.append((directory, "ignored: a directory already visited (symbolic link loop or second link)"))
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            ignored.append((directory, f"unreadable directory: {e.strerror or e}"))
            continue
        subdirs = []
        for entry in entries:
            path = directory.rstrip("/") + "/" + entry.name
            try:
                is_dir = entry.is_dir()  # follows symbolic links
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(path)
                continue
            if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                ignored.append((path, _NOT_AN_IMAGE_NAME))
                continue
            reason = _not_a_usable_file(path)
            if reason is None:
                files.append(path)
            else:
                ignored.append((path, reason))
        pending.extend(reversed(subdirs))  # depth first, in name order
    return files, ignored


def _not_a_usable_file(path: str) -> str | None:
    """Why the file at ``path`` is not read (not UTF-8, not a regular file), or None; never opens it."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8: rename it to read it"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "unreadable: dangling symbolic link" if os.path.islink(path) else "unreadable: file disappeared"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"not a regular file ({kind}): not opened"


_TFR_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}


def parse_example(record):
    ex = tf.io.parse_single_example(record, _TFR_FEATURES)
    return ex["image/encoded"], tf.cast(ex["image/class/label"], tf.int32)


class TFRecordSource(Source):
    """``image/encoded`` Examples in files matching a glob (local or gs://)."""

    kind = "tfrecord"

    def __init__(self, pattern: str):
        self.name = f"tfrecord:{pattern}"
        files = sorted(tf.io.gfile.glob(user_path(pattern)))
        if not files:
            raise DataError(f"tfrecord:{pattern}: no file matches")
        _check_one_output(pattern, files)
        self.files = files
        self.ignored = []
        self.info = _read_sidecar(files)
        self.class_names = self.info.get("class_names") if self.info else None
        self._counts = None
        self._has_labels = None
        self.damaged = {}  # file index -> why its tail is lost (files counted without a sidecar)

    @property
    def has_labels(self) -> bool:
        if self._has_labels is None:
            if self.info is not None and "has_labels" in self.info:
                self._has_labels = bool(self.info["has_labels"])
            else:
                self._has_labels = False
                for rec in tf.data.TFRecordDataset(self.files[:1]).take(1):
                    ex = tf.train.Example.FromString(rec.numpy())
                    self._has_labels = "image/class/label" in ex.features.feature
        return self._has_labels

    def counts(self):
        if self._counts is None:
            if self.info is not None and "counts" in self.info:
                self._counts = [int(self.info["counts"][os.path.basename(f)]) for f in self.files]
            else:
                self._counts = []
                for i, f in enumerate(self.files):
                    count, damage = _count_records(f)
                    self._counts.append(count)
                    if damage:
                        self.damaged[i] = damage
        return self._counts

    def listing(self) -> tuple:
        return tuple(self.files)

    def locate(self, uid: int) -> str:
        uid = int(uid)
        return f"{self.files[uid >> 32]}#{uid & 0xFFFFFFFF}"

    def image_bytes(self, data: bytes):
        """The ``image/encoded`` bytes of a serialized Example, or why there are none."""
        try:
            ex = tf.train.Example.FromString(data)
        except Exception:  # noqa: BLE001 - any parse failure means the same to the user
            return None, "not a tf.train.Example record"
        feat = ex.features.feature.get("image/encoded")
        if feat is None or not feat.bytes_list.value:
            return None, "Example without image/encoded"
        return feat.bytes_list.value[0], None

    def read(self, uid: int) -> bytes:
        uid = int(uid)
        for rec in tf.data.TFRecordDataset(self.files[uid >> 32]).skip(uid & 0xFFFFFFFF).take(1):
            return rec.numpy()
        raise OSError("record not found")

    def file_shard(self, num, index):
        """Files of this input pipeline, and the record-level shard if files are too few."""
        ids = np.arange(len(self.files))
        if num > 1 and len(self.files) >= num:
            return ids[index::num], (1, 0)
        return ids, (num, index)

    def records(self, file_ids, record_shard=(1, 0), *, shuffle_seed=None, deterministic=True, shuffle_buffer=0):
        files = tf.constant([self.files[i] for i in file_ids])
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(np.asarray(file_ids, np.int64)), files))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(file_ids), seed=shuffle_seed, reshuffle_each_iteration=True)

        def read_file(fid, path):
            return tf.data.TFRecordDataset(path).enumerate().map(lambda i, r: (fid * (1 << 32) + i, r))

        ds = ds.interleave(
            read_file,
            cycle_length=max(1, min(len(file_ids), 16)),
            num_parallel_calls=AUTOTUNE,
            deterministic=deterministic,
        )
        if record_shard[0] > 1:
            ds = ds.shard(*record_shard)
        if shuffle_seed is not None and shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed + 1, reshuffle_each_iteration=True)
        return ds.map(lambda u, r: (u,) + parse_example(r), num_parallel_calls=AUTOTUNE, deterministic=deterministic)


class TFDSSource(Source):
    """A prepared TensorFlow Datasets split, read without decoding (JPEG crops decode less)."""

    kind = "tfds"

    def __init__(self, name: str, split: str, data_dir: str | None):
        import tensorflow_datasets as tfds

        self.name = f"tfds:{name}:{split}"
        self.split = split
        self.ignored = []
        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:  # noqa: BLE001 - tfds raises many types for unknown names
            raise DataError(f"tfds:{name}: {str(e).splitlines()[0]}") from None
        feats = self.builder.info.features
        self.image_key = next((k for k, f in feats.items() if isinstance(f, tfds.features.Image)), None)
        if self.image_key is None:
            raise DataError(f"tfds:{name}: the dataset has no image feature")
        label = feats["label"] if "label" in feats else None
        self.label_key = "label" if isinstance(label, tfds.features.ClassLabel) else None
        self.class_names = list(label.names) if self.label_key else None
        self.image_shape = feats[self.image_key].shape

    def dataset(self, *, input_context=None, shuffle_seed=None):
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(
            input_context=input_context, shuffle_seed=shuffle_seed, add_tfds_id=True, try_autocache=False
        )
        try:
            return self.builder.as_dataset(
                split=self.split,
                shuffle_files=shuffle_seed is not None,
                decoders={self.image_key: tfds.decode.SkipDecoding()},
                read_config=read_config,
            )
        except AssertionError as e:
            raise DataError(f"{self.name}: {str(e).splitlines()[0]} (no downloads at run time)") from None
        except ValueError as e:
            raise DataError(f"{self.name}: {str(e).splitlines()[0]}") from None

    def records(self, input_context=None, *, shuffle_seed=None, deterministic=True, shuffle_buffer=0):
        ds = None
        shard = (1, 0)
        if input_context is not None and input_context.num_input_pipelines > 1:
            try:
                ds = self.dataset(input_context=input_context, shuffle_seed=shuffle_seed)
            except DataError:
                raise
            except Exception:  # noqa: BLE001 - fewer files than pipelines: shard the records instead
                shard = (input_context.num_input_pipelines, input_context.input_pipeline_id)
        if ds is None:
            ds = self.dataset(shuffle_seed=shuffle_seed)
        if shard[0] > 1:
            ds = ds.shard(*shard)
        if shuffle_seed is not None and shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed + 1, reshuffle_each_iteration=True)
        label_key, image_key = self.label_key, self.image_key

        def convert(ex):
            uid = tf.strings.to_hash_bucket_fast(ex["tfds_id"], 1 << 62)
            label = tf.cast(ex[label_key], tf.int32) if label_key else tf.constant(-1, tf.int32)
            return uid, ex[image_key], label

        return ds.map(plain(convert), num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def _count_records(path: str):
    """``(readable records, None or why the rest of the file is lost)`` of one TFRecord file."""
    sizes = tf.data.TFRecordDataset(path).map(lambda r: tf.strings.length(r, unit="BYTE"))
    count = span = 0
    try:
        for batch in sizes.batch(4096):
            count, span = count + len(batch), span + int(np.sum(batch.numpy(), dtype=np.int64)) + 16 * len(batch)
        return count, None
    except tf.errors.OpError:
        pass
    try:  # the damaged tail: one record at a time from the last whole batch
        for size in sizes.skip(count):
            count, span = count + 1, span + int(size) + 16
        return count, None
    except tf.errors.OpError as e:
        lost = tf.io.gfile.stat(path).length - span
        return count, (
            f"corrupt or truncated TFRecord: the {lost:,} bytes after record {count} cannot be read "
            f"(the records there are lost): {one_line(e)}"
        )


def _check_one_output(pattern: str, files: list) -> None:
    """Refuses a glob that picks up shards of two ``bt-data`` outputs (``-of-00004`` and ``-of-00008``)."""
    totals = {}
    for f in files:
        m = re.fullmatch(r"(.*)-\d{5}-of-(\d{5})\.tfrecord", f)
        if m:
            totals.setdefault(m.group(1), set()).add(m.group(2))
    for prefix, seen in totals.items():
        if len(seen) > 1:
            raise DataError(
                f"tfrecord:{pattern}: mixes shards of different bt-data outputs ({os.path.basename(prefix)}-*-of-"
                + " and -of-".join(sorted(seen))
                + "); remove the stale ones or rerun bt-data with --overwrite"
            )


def _read_sidecar(files):
    """The ``<name>.bt-data.json`` written by ``bt-data`` next to its shards, if it matches."""
    m = re.match(r"(.*)-\d{5}-of-\d{5}\.tfrecord$", files[0])
    if not m:
        return None
    path = m.group(1) + ".bt-data.json"
    try:
        with tf.io.gfile.GFile(path) as f:
            info = json.load(f)
    except (tf.errors.NotFoundError, ValueError, OSError):
        return None
    names = set(info.get("counts", {}))
    if not {os.path.basename(f) for f in files} <= names:
        return None
    return info


def parse_source(source, data_dir=None) -> Source:
    """A source string or NumPy arrays (``images`` or ``(images, labels)``) as a :class:`Source`.

    Args:
        source: ``demo[:train|test]``, ``tfds:NAME[:SPLIT]``, ``folder:PATH``,
            ``tfrecord:GLOB``, a uint8 array or ``(images, labels)``.
        data_dir: TensorFlow Datasets directory for ``tfds:`` sources.

    Examples:

    >>> parse_source("ftp://x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bt_keras.errors.DataError: cannot read 'ftp://x'; use demo[:train|test], tfds:NAME[:SPLIT], ...

    Messages name the source, not the config key that holds it (the same
    source may be ``data.source`` or ``eval.test_source``):
    :func:`~bt_keras.data.prepare.open_source` adds the key.
    """
    if isinstance(source, tuple) and len(source) == 2:
        return as_memory(source[0], source[1])
    if isinstance(source, np.ndarray):
        return as_memory(source)
    if not isinstance(source, str):
        raise DataError(f"expected a source string or NumPy arrays, got {type(source).__name__}")
    kind, _, rest = source.partition(":")
    if kind == "demo":
        x, y = load_demo(rest or "train")
        return MemorySource(source, images=x, labels=y)
    if kind == "folder" and rest:
        return FolderSource(rest)
    if kind == "tfrecord" and rest:
        return TFRecordSource(rest)
    if kind == "tfds" and rest:
        name, _, split = rest.partition(":")
        return TFDSSource(name, split or "train", data_dir)
    raise DataError(unknown_kind(source))
