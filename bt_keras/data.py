"""Input pipelines: two augmented views for training, labelled images for evaluation.

Sources are named by a string (the ``data.source`` config key) or given as
NumPy arrays:

- ``demo`` / ``demo:train`` / ``demo:test``: scikit-learn's bundled digits
  (1,797 8×8 images) upsampled to 32×32 RGB, fixed 80/20 split; no network.
- ``tfds:NAME[:SPLIT]``: a prepared TensorFlow Datasets dataset in ``data_dir``
  (nothing is downloaded).
- ``folder:PATH``: every jpg/jpeg/png/bmp/gif under PATH (any letter case,
  recursive; local or ``gs://``); labels from the first-level sub-folders.
- ``tfrecord:GLOB``: ``tf.train.Example`` records with ``image/encoded`` and
  optionally ``image/class/label`` (``bt-data`` writes such shards).
- a uint8 array ``[N, H, W, 3]`` (or ``[N, H, W]`` / ``[N, H, W, 1]``), or a
  tuple ``(images, labels)``.

Bad files (empty, truncated, undecodable, not images) are skipped and
reported: the number skipped is printed and, when ``skipped_path`` is given,
their paths and reasons are written there as TSV. Small datasets are decoded
once and kept in memory; large ones are streamed, with JPEG crops decoded
straight from the bytes.

Example:

>>> from bt_keras import data
>>> ds = data.two_view_dataset("demo", batch_size=64, image_size=32)
>>> view_a, view_b = next(iter(ds))
>>> view_a.shape
TensorShape([64, 32, 32, 3])
>>> images, labels = next(iter(data.eval_dataset("demo:test", batch_size=100, image_size=32,
...     mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD, crop_fraction=1.0)))
>>> images.shape, labels.dtype
(TensorShape([100, 32, 32, 3]), tf.int32)
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import tensorflow as tf

from bt_keras import augment as aug
from bt_keras.augment import AugmentConfig
from bt_keras.cli import UserError
from bt_keras.preprocess import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    decode_rgb,
    preprocess_for_eval,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "DataConfig",
    "DataError",
    "SourceInfo",
    "count_examples",
    "eval_dataset",
    "load_demo",
    "source_info",
    "two_view_dataset",
    "write_tfrecords",
]

AUTOTUNE = tf.data.AUTOTUNE
# The pipeline functions are plain TensorFlow without Python control flow on
# tensors: skipping AutoGraph's source conversion saves seconds per dataset.
_plain = tf.autograph.experimental.do_not_convert
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VALIDATE_MODES = ("auto", "full", "quick", "off")
_MAX_DIAGNOSED = 10_000  # bad items examined one by one for a precise reason


class DataError(UserError, ValueError):
    """A problem with the data source or data settings, reported as one line."""


@dataclass
class DataConfig:
    """The ``data:`` section of a run configuration.

    ``cache``: None decodes once and keeps images in memory when the estimate
    fits in ``cache_max_mb`` (and half the free RAM); True/False force it.
    ``validate``: ``full`` decodes every image before training to list the bad
    ones exactly; ``quick`` checks size, format signature and end markers
    without decoding; ``off`` relies on skipping at training time (logged);
    ``auto`` is ``full`` when cached, ``quick`` for uncached folders, ``off``
    for uncached TFRecord/TFDS sources. ``shuffle_buffer`` applies to record
    streams (TFRecord/TFDS); in-memory data and folders get a full
    permutation each epoch. ``deterministic``: False lets parallel stages
    deliver examples out of order (faster); the views of an example are the
    same either way.

    >>> cfg = DataConfig(source="demo", image_size=32)
    >>> ds = cfg.train_dataset(batch_size=32)
    """

    source: str = "demo"
    data_dir: Optional[str] = None
    image_size: int = 32
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    shuffle_buffer: int = 10_000
    cache: Optional[bool] = None
    cache_max_mb: int = 2048
    validate: str = "auto"
    seed: int = 0
    val_source: Optional[str] = None
    crop_fraction: float = 1.0
    deterministic: bool = False

    def __post_init__(self):
        if isinstance(self.augment, str):
            self.augment = AugmentConfig(preset=self.augment)
        _check_positive("data.image_size", self.image_size)
        _check_positive("data.shuffle_buffer", self.shuffle_buffer)
        _check_positive("data.cache_max_mb", self.cache_max_mb)
        if self.validate not in VALIDATE_MODES:
            raise DataError(f"data.validate: must be one of {', '.join(VALIDATE_MODES)}, got {self.validate!r}")
        if not isinstance(self.crop_fraction, (int, float)) or not 0 < self.crop_fraction <= 1:
            raise DataError(f"data.crop_fraction: must be in (0, 1], got {self.crop_fraction!r}")
        if not isinstance(self.source, str) or not self.source:
            raise DataError(f"data.source: expected a source string, got {self.source!r}")

    @property
    def mean(self):
        return self.augment.resolve().mean

    @property
    def std(self):
        return self.augment.resolve().std

    def train_dataset(self, batch_size: int, input_context=None, skipped_path=None, source=None):
        """:func:`two_view_dataset` with this configuration."""
        return two_view_dataset(
            self.source if source is None else source,
            batch_size=batch_size,
            image_size=self.image_size,
            augment=self.augment,
            seed=self.seed,
            data_dir=self.data_dir,
            input_context=input_context,
            skipped_path=skipped_path,
            shuffle_buffer=self.shuffle_buffer,
            cache=self.cache,
            cache_max_mb=self.cache_max_mb,
            validate=self.validate,
            deterministic=self.deterministic,
        )

    def eval_dataset(self, batch_size: int, source=None, input_context=None, skipped_path=None):
        """:func:`eval_dataset` of ``source`` (default ``val_source``) with this configuration."""
        source = self.val_source if source is None else source
        if source is None:
            raise DataError("data.val_source: no labelled evaluation source configured")
        resolved = self.augment.resolve()
        return eval_dataset(
            source,
            batch_size=batch_size,
            image_size=self.image_size,
            mean=resolved.mean,
            std=resolved.std,
            crop_fraction=self.crop_fraction,
            data_dir=self.data_dir,
            input_context=input_context,
            skipped_path=skipped_path,
            cache=self.cache,
            cache_max_mb=self.cache_max_mb,
            validate=self.validate,
        )


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name}: must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------- #
# Demo data
# --------------------------------------------------------------------------- #

DEMO_TRAIN_FRACTION = 0.8


@functools.lru_cache(maxsize=None)
def _demo_arrays():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32) * (255.0 / 16.0)  # [1797, 8, 8] in 0..255
    x = tf.image.resize(x[..., None], [32, 32], method="bicubic").numpy()
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    x = np.repeat(x, 3, axis=-1)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(20240611).permutation(len(x))
    x, y = x[order], y[order]
    n_train = int(round(DEMO_TRAIN_FRACTION * len(x)))
    for a in (x, y):
        a.setflags(write=False)
    return x, y, n_train


def load_demo(split: str = "train"):
    """The demo set: (images uint8 [N, 32, 32, 3], labels int32 [N]).

    scikit-learn's digits (8×8, values 0..16) scaled to 0..255, upsampled
    bicubically to 32×32 and replicated to RGB. ``train`` is the first 80% of
    a fixed permutation (1,438 images), ``test`` the other 359.

    >>> x, y = load_demo("test")
    >>> x.shape, x.dtype, int(y.max())
    ((359, 32, 32, 3), dtype('uint8'), 9)
    """
    x, y, n_train = _demo_arrays()
    if split == "train":
        return x[:n_train], y[:n_train]
    if split == "test":
        return x[n_train:], y[n_train:]
    raise DataError(f"demo: unknown split {split!r} (use demo:train or demo:test)")


# --------------------------------------------------------------------------- #
# Sources
# --------------------------------------------------------------------------- #


@dataclass
class SourceInfo:
    """What a source holds: usable images, labels and what was skipped."""

    name: str
    num_examples: int
    has_labels: bool
    class_names: Optional[list]
    skipped: list  # [(path, reason)]
    num_files: int


class _Memory:
    """Images already decoded: NumPy arrays, the demo set, or a scanned source."""

    def __init__(self, name, images=None, labels=None, flat=None, offsets=None, shapes=None, uids=None):
        self.name = name
        self.labels = labels  # int32 [N] or None
        self.images = images  # uint8 [N, H, W, 3] when all images share a size
        self.flat, self.offsets, self.shapes = flat, offsets, shapes  # packed otherwise
        n = len(images) if images is not None else len(shapes)
        self.uids = np.arange(n, dtype=np.int64) if uids is None else uids
        self.n = n

    def shard(self, num, index):
        if num == 1:
            return self
        sel = np.arange(index, self.n, num)
        if self.images is not None:
            return _Memory(self.name, self.images[sel], _take(self.labels, sel), uids=self.uids[sel])
        parts = [self.flat[self.offsets[i] : self.offsets[i] + np.prod(self.shapes[i]) * 3] for i in sel]
        flat = np.concatenate(parts) if parts else np.zeros([0], np.uint8)
        sizes = np.array([len(p) for p in parts], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return _Memory(self.name, None, _take(self.labels, sel), flat, offsets, self.shapes[sel], self.uids[sel])

    def image_sizes(self) -> np.ndarray:
        """int32 [N, 2]: every image's (height, width)."""
        if self.images is not None:
            return np.broadcast_to(np.array(self.images.shape[1:3], np.int32), (self.n, 2))
        return self.shapes[:, :2].astype(np.int32)

    def index_to_example(self):
        """A function index -> (uid, uint8 image, label), closing over in-memory tensors."""
        uids = tf.constant(self.uids)
        labels = tf.constant(self.labels if self.labels is not None else np.full([self.n], -1, np.int32))
        if self.images is not None:
            images = tf.constant(self.images)

            def get(i):
                return uids[i], images[i], labels[i]

        else:
            flat = tf.constant(self.flat)
            offsets = tf.constant(self.offsets)
            shapes = tf.constant(self.shapes.astype(np.int64))

            def get(i):
                shape = shapes[i]
                size = shape[0] * shape[1] * 3
                image = tf.reshape(flat[offsets[i] : offsets[i] + size], [shape[0], shape[1], 3])
                return uids[i], image, labels[i]

        return get


def _take(a, sel):
    return None if a is None else a[sel]


def _as_memory(images, labels=None, name="arrays") -> _Memory:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(
            f"{name}: expected uint8 images (0..255), got dtype {images.dtype}; "
            "convert with np.clip(x * 255, 0, 255).astype(np.uint8) for [0, 1] floats"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DataError(f"{name}: expected images of shape [N, H, W, 3] (or [N, H, W], [N, H, W, 1]), got {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 4:
        images = images[..., :3]
    if len(images) == 0:
        raise DataError(f"{name}: no images")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(images):
            raise DataError(f"{name}: {len(images)} images but {len(labels)} labels")
        labels = labels.astype(np.int32)
    return _Memory(name, images=images, labels=labels)


class _Folder:
    """Image files under a directory (local or gs://), sorted, labels from sub-folders."""

    kind = "folder"

    def __init__(self, root: str):
        self.name = f"folder:{root}"
        root = root.rstrip("/") or "/"
        if not tf.io.gfile.isdir(root):
            raise DataError(f"folder:{root}: no such directory")
        self.root = root
        files, ignored = [], []
        for dirpath, _, filenames in tf.io.gfile.walk(root):
            for fname in filenames:
                path = dirpath.rstrip("/") + "/" + fname
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(path)
                else:
                    ignored.append((path, "ignored: not an image file extension (jpg, jpeg, png, bmp, gif)"))
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

    def shard(self, num, index):
        return np.arange(index, len(self.paths), num)

    def locate(self, uid: int) -> str:
        return self.paths[int(uid)]

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


_TFR_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}


def _parse_example(record):
    ex = tf.io.parse_single_example(record, _TFR_FEATURES)
    return ex["image/encoded"], tf.cast(ex["image/class/label"], tf.int32)


class _TFRecord:
    """``image/encoded`` Examples in files matching a glob (local or gs://)."""

    kind = "tfrecord"

    def __init__(self, pattern: str):
        self.name = f"tfrecord:{pattern}"
        files = sorted(tf.io.gfile.glob(pattern))
        if not files:
            raise DataError(f"tfrecord:{pattern}: no file matches")
        self.files = files
        self.ignored = []
        self.info = _read_sidecar(files)
        self.class_names = self.info.get("class_names") if self.info else None
        self._counts = None
        self._has_labels = None

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
                self._counts = [
                    int(tf.data.TFRecordDataset(f).reduce(np.int64(0), lambda n, _: n + 1)) for f in self.files
                ]
        return self._counts

    def locate(self, uid: int) -> str:
        uid = int(uid)
        return f"{self.files[uid >> 32]}#{uid & 0xFFFFFFFF}"

    def read(self, uid: int) -> bytes:
        uid = int(uid)
        for rec in tf.data.TFRecordDataset(self.files[uid >> 32]).skip(uid & 0xFFFFFFFF).take(1):
            return rec.numpy()
        raise IOError("record not found")

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
        return ds.map(lambda u, r: (u,) + _parse_example(r), num_parallel_calls=AUTOTUNE, deterministic=deterministic)


class _TFDS:
    """A prepared TensorFlow Datasets split, read without decoding (JPEG crops decode less)."""

    kind = "tfds"

    def __init__(self, name: str, split: str, data_dir: Optional[str]):
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

        return ds.map(_plain(convert), num_parallel_calls=AUTOTUNE, deterministic=deterministic)


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


def _parse_source(source, data_dir=None):
    """A source string or arrays -> a source object."""
    if isinstance(source, tuple) and len(source) == 2:
        return _as_memory(source[0], source[1])
    if isinstance(source, np.ndarray):
        return _as_memory(source)
    if not isinstance(source, str):
        raise DataError(f"data.source: expected a string or NumPy arrays, got {type(source).__name__}")
    kind, _, rest = source.partition(":")
    if kind == "demo":
        x, y = load_demo(rest or "train")
        return _Memory(source, images=x, labels=y)
    if kind == "folder" and rest:
        return _Folder(rest)
    if kind == "tfrecord" and rest:
        return _TFRecord(rest)
    if kind == "tfds" and rest:
        name, _, split = rest.partition(":")
        return _TFDS(name, split or "train", data_dir)
    raise DataError(
        f"data.source: cannot read {source!r}; use demo[:train|test], tfds:NAME[:SPLIT], "
        "folder:PATH, tfrecord:GLOB or NumPy arrays"
    )


# --------------------------------------------------------------------------- #
# Validation, skipped files and in-memory caching
# --------------------------------------------------------------------------- #

_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"))


def _sniff(data: bytes) -> Optional[str]:
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    return None


def _diagnose(source, uid) -> Optional[str]:
    """Why item ``uid`` cannot be used (one line), or None if it decodes after all."""
    try:
        data = source.read(uid)
    except Exception as e:  # noqa: BLE001 - any I/O failure is a reason to report
        return f"unreadable: {_one_line(e)}"
    if source.kind == "tfrecord":
        try:
            ex = tf.train.Example.FromString(data)
        except Exception:  # noqa: BLE001
            return "not a tf.train.Example record"
        feat = ex.features.feature.get("image/encoded")
        if feat is None or not feat.bytes_list.value:
            return "Example without image/encoded"
        data = feat.bytes_list.value[0]
    if len(data) == 0:
        return "empty file"
    fmt = _sniff(data)
    if fmt is None:
        head = data[:64]
        text = all(32 <= c < 127 or c in (9, 10, 13) for c in head)
        return "not an image: " + ("text content" if text else "unrecognised content")
    try:
        decode_rgb(tf.constant(data))
    except tf.errors.OpError as e:
        return f"corrupt or truncated {fmt}: {_one_line(e)}"
    return None


def _one_line(e) -> str:
    msg = getattr(e, "message", None) or str(e)
    msg = " ".join(msg.split())
    msg = re.sub(r"\{\{[^}]*\}\}\s*", "", msg)  # TF's function-node prefix
    msg = re.sub(r"\s*\[Op:\w+\].*$", "", msg)
    return msg[:200].replace("\t", " ")


def _quick_check(data):
    """0 if ``data`` looks like a complete image, else a reason code; never raises."""
    n = tf.strings.length(data)
    head = tf.strings.substr(data, 0, 8)
    is_jpeg = tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff"
    is_png = head == b"\x89PNG\r\n\x1a\n"
    is_gif = tf.strings.substr(head, 0, 4) == b"GIF8"
    is_bmp = tf.strings.substr(head, 0, 2) == b"BM"
    # Files often carry padding after the JPEG end marker: look for it near the end.
    tail = tf.strings.bytes_split(tf.strings.substr(data, tf.maximum(n - 256, 0), 256))
    jpeg_end = tf.reduce_any((tail[:-1] == b"\xff") & (tail[1:] == b"\xd9"))
    png_end = tf.strings.substr(data, tf.maximum(n - 8, 0), 4) == b"IEND"
    return tf.case(
        [
            (n == 0, lambda: 1),
            (~(is_jpeg | is_png | is_gif | is_bmp), lambda: 2),
            (is_jpeg & ~jpeg_end, lambda: 3),
            (is_png & ~png_end, lambda: 4),
        ],
        default=lambda: 0,
    )


_QUICK_REASONS = {
    1: "empty file",
    2: "not an image: unrecognised content",
    3: "truncated JPEG: no end-of-image marker",
    4: "truncated PNG: no IEND chunk",
}


@dataclass
class _Prepared:
    """A source made ready for one input pipeline."""

    source: object
    memory: Optional[_Memory]  # decoded images when cached
    stream: Optional[object]  # (shuffle_seed, deterministic, shuffle_buffer) -> (uid, bytes, label)
    num_examples: int
    num_files: int
    skipped: list
    has_labels: bool
    class_names: Optional[list]
    good_uids: Optional[np.ndarray] = None  # folders: the usable files


def _estimate_decoded_bytes(sample_bytes: list, n_items: int) -> float:
    sizes = []
    for data in sample_bytes:
        try:
            shape = tf.io.extract_jpeg_shape(data) if _sniff(data) == "JPEG" else tf.shape(decode_rgb(data))
            sizes.append(int(shape[0]) * int(shape[1]) * 3)
        except (tf.errors.OpError, ValueError):
            continue
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


def _scan_decode(records: tf.data.Dataset, keep: bool):
    """Decodes every record once; returns survivors (uids, labels, shapes, flat pixels)."""

    def dec(uid, data, label):
        image = decode_rgb(data)
        shape = tf.shape(image)[:2]
        flat = tf.reshape(image, [-1]) if keep else tf.zeros([0], tf.uint8)
        return uid, label, shape, flat

    ds = records.map(_plain(dec), num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors()
    ds = ds.ragged_batch(512).prefetch(2)
    uids, labels, shapes, flats = [], [], [], []
    for u, y, s, f in ds:
        uids.append(u.numpy())
        labels.append(y.numpy())
        shapes.append(s.numpy())
        if keep:
            flats.append(f.flat_values.numpy())
    cat = lambda a, dt, shape=(0,): np.concatenate(a) if a else np.zeros(shape, dt)  # noqa: E731
    return (
        cat(uids, np.int64),
        cat(labels, np.int32),
        cat(shapes, np.int32, (0, 2)),
        cat(flats, np.uint8) if keep else None,
    )


def _scan_quick(records: tf.data.Dataset):
    ds = records.map(_plain(lambda u, d, y: (u, _quick_check(d))), num_parallel_calls=AUTOTUNE, deterministic=True)
    uids, codes = [], []
    for u, c in ds.batch(4096):
        uids.append(u.numpy())
        codes.append(c.numpy())
    return np.concatenate(uids), np.concatenate(codes)


def _to_memory(name, uids, labels, shapes, flat, has_labels) -> _Memory:
    labels = labels if has_labels else None
    if len(shapes) and (shapes == shapes[0]).all():
        h, w = (int(v) for v in shapes[0])
        return _Memory(name, images=flat.reshape([-1, h, w, 3]), labels=labels, uids=uids)
    sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1] * 3
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return _Memory(name, labels=labels, flat=flat, offsets=offsets, shapes=shapes, uids=uids)


_PREPARED_CACHE: dict = {}
_PREPARED_CACHE_SIZE = 4


def _prepare(source, *, data_dir, shard, cache, cache_max_mb, validate, seed) -> _Prepared:
    """Lists, validates and (if it fits) decodes a source into memory for one pipeline."""
    if validate not in VALIDATE_MODES:
        raise DataError(f"data.validate: must be one of {', '.join(VALIDATE_MODES)}, got {validate!r}")
    num, index = shard
    src = _parse_source(source, data_dir)
    key = None
    if isinstance(source, str):
        # Re-listing is cheap; the key changes when files appear or disappear.
        listing = tuple(getattr(src, "paths", ())) + tuple(getattr(src, "files", ()))
        key = (source, data_dir, num, index, cache, cache_max_mb, validate, hash(listing))
        if key in _PREPARED_CACHE:
            return _PREPARED_CACHE[key]
    if isinstance(src, _Memory):
        mem = src.shard(num, index)
        prep = _Prepared(src, mem, None, mem.n, src.n, [], src.labels is not None, None)
    elif isinstance(src, _Folder):
        prep = _prepare_folder(src, shard, cache, cache_max_mb, validate)
    elif isinstance(src, _TFRecord):
        prep = _prepare_tfrecord(src, shard, cache, cache_max_mb, validate)
    else:
        prep = _prepare_tfds(src, shard, cache, cache_max_mb, validate)
    if key is not None:
        if len(_PREPARED_CACHE) >= _PREPARED_CACHE_SIZE:
            _PREPARED_CACHE.pop(next(iter(_PREPARED_CACHE)))
        _PREPARED_CACHE[key] = prep
    return prep


def _decide_cache(cache, estimate, cache_max_mb):
    if cache is None:
        return estimate <= _memory_budget(cache_max_mb)
    return bool(cache)


def _prepare_folder(src: _Folder, shard, cache, cache_max_mb, validate) -> _Prepared:
    sel = src.shard(*shard)
    if len(src.paths) == 0:
        raise DataError(
            f"{src.name}: no image files (jpg, jpeg, png, bmp, gif) found"
            + (f"; {len(src.ignored)} other files ignored" if src.ignored else "")
        )
    sample = [src.read(int(u)) for u in sel[:: max(1, len(sel) // 16)][:16]]
    cached = _decide_cache(cache, _estimate_decoded_bytes(sample, len(sel)), cache_max_mb)
    mode = validate if validate != "auto" else ("full" if cached else "quick")
    skipped = []
    memory, good = None, sel
    if cached or mode == "full":
        uids, labels, shapes, flat = _scan_decode(src.records(sel), keep=cached)
        bad = np.setdiff1d(src.uids[sel], uids)
        skipped = _reasons(src, bad)
        good = uids
        if cached:
            memory = _to_memory(src.name, uids, labels, shapes, flat, src.labels is not None)
    elif mode == "quick":
        uids, codes = _scan_quick(src.records(sel))
        skipped, cleared = _confirm_quick(src, uids, codes)
        good = np.sort(np.concatenate([uids[codes == 0], cleared]))
    if len(good) == 0:
        raise DataError(f"{src.name}: no usable image among {len(sel):,} files ({_reason_summary(skipped)})")

    def stream(shuffle_seed=None, deterministic=True, shuffle_buffer=0):
        return src.records(good, shuffle_seed=shuffle_seed, deterministic=deterministic)

    return _Prepared(
        src, memory, None if memory else stream, len(good), len(sel), skipped + src.ignored,
        src.labels is not None, src.class_names, good,
    )


def _prepare_tfrecord(src: _TFRecord, shard, cache, cache_max_mb, validate) -> _Prepared:
    file_ids, rec_shard = src.file_shard(*shard)
    sample = []
    for rec in src.records(file_ids[:1], rec_shard).ignore_errors().take(8):
        sample.append(rec[1].numpy())
    sizes = [tf.io.gfile.stat(src.files[i]).length for i in file_ids[:8]]
    enc = np.mean([len(s) for s in sample]) if sample else 1.0
    # Decoded size of the whole shard, from the sampled decoded/encoded ratio.
    shard_bytes = np.mean(sizes) * len(file_ids) / rec_shard[0]
    estimate = _estimate_decoded_bytes(sample, 1) / max(enc, 1.0) * shard_bytes
    cached = _decide_cache(cache, estimate, cache_max_mb)
    mode = validate if validate != "auto" else ("full" if cached else "off")
    counts = src.counts() if mode != "off" or cached else None
    skipped, memory = [], None
    bad_sorted = np.zeros([0], np.int64)
    if mode in ("full", "quick") or cached:
        expected = np.concatenate(
            [(np.int64(f) << 32) + np.arange(counts[f], dtype=np.int64) for f in file_ids]
        )
        if rec_shard[0] > 1:
            expected = expected[rec_shard[1] :: rec_shard[0]]
        if cached or mode == "full":
            uids, labels, shapes, flat = _scan_decode(src.records(file_ids, rec_shard), keep=cached)
            bad = np.setdiff1d(expected, uids)
            if cached:
                memory = _to_memory(src.name, uids, labels, shapes, flat, src.has_labels)
            n_good = len(uids)
        else:
            uids, codes = _scan_quick(src.records(file_ids, rec_shard))
            flagged, cleared = _confirm_quick(src, uids, codes)
            bad = np.setdiff1d(np.union1d(np.setdiff1d(expected, uids), uids[codes != 0]), cleared)
            n_good = len(expected) - len(bad)
        skipped = _reasons(src, bad)
        bad_sorted = np.sort(bad)
        n_total = len(expected)
    else:
        n_total = n_good = _tfrecord_count_estimate(src, file_ids, rec_shard)
    if n_good == 0:
        raise DataError(f"{src.name}: no usable image among {n_total:,} records ({_reason_summary(skipped)})")

    def stream(shuffle_seed=None, deterministic=True, shuffle_buffer=0):
        ds = src.records(
            file_ids, rec_shard, shuffle_seed=shuffle_seed, deterministic=deterministic, shuffle_buffer=shuffle_buffer
        )
        if len(bad_sorted):
            bad_t = tf.constant(bad_sorted)
            ds = ds.filter(lambda u, d, y: ~_member(u, bad_t))
        return ds

    return _Prepared(src, memory, None if memory else stream, n_good, n_total, skipped, src.has_labels, src.class_names)


def _tfrecord_count_estimate(src, file_ids, rec_shard):
    counts = src.counts()
    return sum(counts[f] for f in file_ids) // max(rec_shard[0], 1)


def _member(x, sorted_values):
    i = tf.searchsorted(sorted_values, tf.reshape(x, [1]))[0]
    i = tf.minimum(i, tf.size(sorted_values, out_type=i.dtype) - 1)
    return tf.gather(sorted_values, i) == x


def _prepare_tfds(src: _TFDS, shard, cache, cache_max_mb, validate) -> _Prepared:
    ds = src.records(None)
    n = int(ds.cardinality())
    if n < 0:
        n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    if src.image_shape[0] and src.image_shape[1]:
        estimate = float(n * src.image_shape[0] * src.image_shape[1] * 3)
    else:
        estimate = _estimate_decoded_bytes([r[1].numpy() for r in ds.take(16)], n)
    estimate /= shard[0]
    cached = _decide_cache(cache, estimate, cache_max_mb)
    if n == 0:
        raise DataError(f"{src.name}: the split is empty")
    if cached:
        records = src.records(None)
        if shard[0] > 1:
            records = records.shard(*shard)
        uids, labels, shapes, flat = _scan_decode(records, keep=True)
        memory = _to_memory(src.name, uids, labels, shapes, flat, src.label_key is not None)
        expected = len(range(shard[1], n, shard[0]))
        skipped = []
        if len(uids) < expected:
            skipped = [(src.name, f"{expected - len(uids)} records could not be decoded")]
        return _Prepared(src, memory, None, len(uids), expected, skipped, src.label_key is not None, src.class_names)

    def stream(shuffle_seed=None, deterministic=True, shuffle_buffer=0, input_context=None):
        return src.records(
            input_context, shuffle_seed=shuffle_seed, deterministic=deterministic, shuffle_buffer=shuffle_buffer
        )

    return _Prepared(src, None, stream, n // shard[0], n, [], src.label_key is not None, src.class_names)


def _reasons(src, bad_uids) -> list:
    out = []
    for i, u in enumerate(bad_uids):
        reason = _diagnose(src, u) if i < _MAX_DIAGNOSED else "could not be decoded"
        out.append((src.locate(u), reason or "could not be decoded in the input pipeline"))
    return out


def _confirm_quick(src, uids, codes):
    """Flagged items with their precise reasons; flags that decode after all are dropped."""
    skipped, cleared = [], []
    for u, c in zip(uids[codes != 0], codes[codes != 0]):
        reason = _diagnose(src, u)
        if reason is None:
            cleared.append(u)
        else:
            skipped.append((src.locate(u), reason if reason else _QUICK_REASONS[int(c)]))
    return skipped, np.array(cleared, np.int64)


def _reason_summary(skipped) -> str:
    if not skipped:
        return "nothing decodable"
    counts = {}
    for _, reason in skipped:
        key = reason.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) + f"; e.g. {skipped[0][0]}"


def _report_skipped(prep: _Prepared, skipped_path: Optional[str]) -> None:
    skipped = prep.skipped
    if skipped_path is not None:
        parent = os.path.dirname(skipped_path)
        if parent:
            tf.io.gfile.makedirs(parent)
        with tf.io.gfile.GFile(skipped_path, "w") as f:
            f.write("")  # GFile creates files on first write: an empty list is still a file
            for path, reason in skipped:
                f.write(f"{path}\t{' '.join(reason.split())}\n")
    bad = [s for s in skipped if not s[1].startswith("ignored:")]
    if not bad:
        return
    total = prep.num_examples + len(bad)
    where = f"see {skipped_path}" if skipped_path else "first: " + "; ".join(f"{p} ({r})" for p, r in bad[:3])
    print(f"bt_keras.data: skipped {len(bad):,} of {total:,} files: {where}", file=sys.stderr)


# --------------------------------------------------------------------------- #
# Pipelines
# --------------------------------------------------------------------------- #


def _shard_of(input_context):
    if input_context is None:
        return (1, 0)
    return (int(input_context.num_input_pipelines), int(input_context.input_pipeline_id))


def _options(deterministic: bool, sharded: bool) -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = deterministic
    opts.autotune.enabled = True
    opts.experimental_optimization.map_parallelization = True
    if sharded:
        # Each input pipeline already reads only its own files or examples.
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return opts


def _epoch_keys(seed: int):
    """One int64 per element, constant within a pass and different for each new pass.

    ``rerandomize_each_iteration`` advances a seed generator every time the
    dataset is iterated again, so epoch k of a run is the same for every run
    with the same seed.
    """
    first = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return first.flat_map(lambda k: tf.data.Dataset.from_tensors(k).repeat())


def two_view_dataset(
    source,
    *,
    batch_size: int,
    image_size: int = 32,
    augment=None,
    seed: int = 0,
    data_dir: Optional[str] = None,
    input_context: Optional[tf.distribute.InputContext] = None,
    skipped_path: Optional[str] = None,
    shuffle_buffer: int = 10_000,
    cache: Optional[bool] = None,
    cache_max_mb: int = 2048,
    validate: str = "auto",
    deterministic: bool = False,
) -> tf.data.Dataset:
    """Batches of two augmented views ``(view_a, view_b)`` of the same images.

    Each is float32 ``[b, image_size, image_size, 3]``, normalised with the
    augmentation config's mean/std; ``b = batch_size`` or, with an
    ``input_context``, its per-replica share (and only this pipeline's shard
    of the data is read). The last partial batch is dropped (static shapes).
    One pass over the dataset is one epoch; every new pass is reshuffled and
    re-augmented, the same way in every run with the same ``seed``.

    ``augment``: an :class:`~bt_keras.augment.AugmentConfig` or a preset name
    (default ``cifar``).

    >>> import numpy as np
    >>> x = np.random.default_rng(0).integers(0, 256, (64, 40, 40, 3), dtype=np.uint8)
    >>> ds = two_view_dataset(x, batch_size=16, image_size=32, augment="imagenet")
    >>> [a.shape for a in next(iter(ds))]
    [TensorShape([16, 32, 32, 3]), TensorShape([16, 32, 32, 3])]
    """
    cfg = aug._resolved(augment)
    _check_positive("batch_size", batch_size)
    _check_positive("image_size", image_size)
    b = input_context.get_per_replica_batch_size(batch_size) if input_context is not None else batch_size
    shard = _shard_of(input_context)
    prep = _prepare(
        source, data_dir=data_dir, shard=shard, cache=cache, cache_max_mb=cache_max_mb, validate=validate, seed=seed
    )
    _report_skipped(prep, skipped_path)
    if prep.num_examples < b:
        raise DataError(
            f"{_name(source)}: {prep.num_examples:,} usable images in this input pipeline, "
            f"fewer than one batch of {b:,} (batches are full-size for static shapes)"
        )
    # Distinct, reproducible streams for each input pipeline.
    stream_seed = int(seed) * 1_000_003 + shard[1]
    keys = _epoch_keys(stream_seed)
    mem = prep.memory

    def per_batch(a, b_):
        (va, pa), (vb, pb) = a, b_
        return aug.apply_batch(va, pa, cfg, 0), aug.apply_batch(vb, pb, cfg, 1)

    if mem is not None:
        # In memory: whole batches, parameters drawn for the batch at once.
        uids = tf.constant(mem.uids)
        ds = tf.data.Dataset.range(mem.n).shuffle(mem.n, seed=stream_seed, reshuffle_each_iteration=True)
        ds = tf.data.Dataset.zip((ds.batch(b, drop_remainder=True), keys))
        if _vectorised_crops(mem, image_size, cfg):
            # Small same-size images: the crops too, in a few batched ops.
            images = tf.constant(mem.images)
            height, width = mem.images.shape[1], mem.images.shape[2]

            def whole_batch(idx, epoch_key):
                x = tf.gather(images, idx)
                k = aug.example_keys(seed, epoch_key, tf.gather(uids, idx))
                views = []
                for view in (0, 1):
                    p = aug.sample_params(k, height, width, cfg, view)
                    crops = aug.crop_resize_batch(x, p["crop"], image_size, cfg, channels_first=True, flip=p["flip"])
                    views.append(aug.apply_batch(crops, p, cfg, view, channels_first=True, flipped=True))
                return tuple(views)

        else:
            get = mem.index_to_example()
            sizes = tf.constant(mem.image_sizes())

            def whole_batch(idx, epoch_key):
                k = aug.example_keys(seed, epoch_key, tf.gather(uids, idx))
                hw = tf.gather(sizes, idx)
                return aug.augment_views(lambda i: get(idx[i])[1], k, hw[:, 0], hw[:, 1], cfg, image_size)

        ds = ds.map(_plain(whole_batch), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        return ds.prefetch(AUTOTUNE).with_options(_options(deterministic, input_context is not None))

    def pair_from_image(image, key):
        shape = tf.shape(image)
        pa = aug.sample_params(key, shape[0], shape[1], cfg, 0)
        pb = aug.sample_params(key, shape[0], shape[1], cfg, 1)
        return (aug.crop_resize(image, pa, image_size, cfg), pa), (aug.crop_resize(image, pb, image_size, cfg), pb)

    def pair_from_bytes(data, key):
        def jpeg():
            shape = tf.io.extract_jpeg_shape(data)
            pa = aug.sample_params(key, shape[0], shape[1], cfg, 0)
            pb = aug.sample_params(key, shape[0], shape[1], cfg, 1)
            va = aug.decode_crop_resize(data, pa, image_size, cfg)
            vb = aug.decode_crop_resize(data, pb, image_size, cfg)
            return (va, pa), (vb, pb)

        return tf.cond(tf.io.is_jpeg(data), jpeg, lambda: pair_from_image(decode_rgb(data), key))

    # Streamed: per-example crops (JPEG crop-decoded), then the batch.
    kwargs = {}
    if isinstance(prep.source, _TFDS):
        kwargs["input_context"] = input_context
    ds = prep.stream(
        shuffle_seed=stream_seed, deterministic=deterministic, shuffle_buffer=shuffle_buffer, **kwargs
    )
    ds = tf.data.Dataset.zip((ds, keys))

    def per_example(example, epoch_key):
        uid, data, _ = example
        return pair_from_bytes(data, aug.example_keys(seed, epoch_key, uid))

    ds = ds.map(_plain(per_example), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    # Validated upstream; anything left that fails to decode is skipped with a logged warning.
    ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(b, drop_remainder=True, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.map(_plain(per_batch), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.prefetch(AUTOTUNE)
    return ds.with_options(_options(deterministic, input_context is not None))


VECTORISED_MAX_SIDE = 64  # source side up to which whole-batch matrix crops beat per-image resizes


def _vectorised_crops(mem: _Memory, image_size: int, cfg: AugmentConfig) -> bool:
    return (
        mem.images is not None
        and cfg.crop.method in ("bicubic", "bilinear")
        and max(mem.images.shape[1], mem.images.shape[2], image_size) <= VECTORISED_MAX_SIDE
    )


def eval_dataset(
    source,
    *,
    batch_size: int,
    image_size: int,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    crop_fraction: float = 0.875,
    data_dir: Optional[str] = None,
    input_context: Optional[tf.distribute.InputContext] = None,
    skipped_path: Optional[str] = None,
    cache: Optional[bool] = None,
    cache_max_mb: int = 2048,
    validate: str = "auto",
) -> tf.data.Dataset:
    """Labelled single views for evaluation: ``(images, labels)`` batches.

    Images are centre-cropped (``crop_fraction`` of the shorter side), resized
    and normalised by :func:`bt_keras.preprocess.preprocess_for_eval`, the code
    the exported serving signature runs. Order is deterministic and the last
    partial batch is kept. A source without labels is a ``DataError``.

    >>> ds = eval_dataset("demo:test", batch_size=128, image_size=32, mean=CIFAR10_MEAN,
    ...                   std=CIFAR10_STD, crop_fraction=1.0)
    >>> sum(int(y.shape[0]) for _, y in ds)
    359
    """
    _check_positive("batch_size", batch_size)
    _check_positive("image_size", image_size)
    b = input_context.get_per_replica_batch_size(batch_size) if input_context is not None else batch_size
    prep = _prepare(
        source, data_dir=data_dir, shard=_shard_of(input_context), cache=cache, cache_max_mb=cache_max_mb,
        validate=validate, seed=0,
    )
    if not prep.has_labels:
        raise DataError(
            f"{_name(source)}: no labels (folders need one sub-folder per class; TFRecords need "
            "image/class/label; arrays need (images, labels))"
        )
    _report_skipped(prep, skipped_path)
    mean, std = tuple(mean), tuple(std)

    def prep_fn(x):
        return preprocess_for_eval(x, image_size, mean=mean, std=std, crop_fraction=crop_fraction)

    if prep.memory is not None:
        get = prep.memory.index_to_example()

        def one(i):
            _, image, label = get(i)
            return prep_fn(image), label

        ds = tf.data.Dataset.range(prep.memory.n).map(_plain(one), num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        kwargs = {"input_context": input_context} if isinstance(prep.source, _TFDS) else {}
        ds = prep.stream(deterministic=True, **kwargs)
        ds = ds.map(_plain(lambda u, d, y: (prep_fn(d), y)), num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(b, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)
    return ds.with_options(_options(True, input_context is not None))


def _name(source) -> str:
    return source if isinstance(source, str) else "arrays"


def source_info(source, data_dir: Optional[str] = None, **kwargs) -> SourceInfo:
    """Usable image count, labels, class names and skipped files of a source.

    >>> info = source_info("demo:test")
    >>> info.num_examples, info.has_labels
    (359, True)
    """
    prep = _prepare(
        source,
        data_dir=data_dir,
        shard=(1, 0),
        cache=kwargs.get("cache"),
        cache_max_mb=kwargs.get("cache_max_mb", 2048),
        validate=kwargs.get("validate", "auto"),
        seed=0,
    )
    return SourceInfo(
        _name(source), prep.num_examples, prep.has_labels, prep.class_names, list(prep.skipped), prep.num_files
    )


def count_examples(source, data_dir: Optional[str] = None, **kwargs) -> int:
    """Number of usable images in ``source`` (for steps per epoch).

    >>> count_examples("demo")
    1438
    """
    return source_info(source, data_dir, **kwargs).num_examples


# --------------------------------------------------------------------------- #
# Writing TFRecord shards (bt-data)
# --------------------------------------------------------------------------- #


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
    data_dir: Optional[str] = None,
    seed: int = 0,
    skipped_path: Optional[str] = None,
) -> dict:
    """Writes a source's usable images as ``image/encoded`` TFRecord shards.

    Files are validated (decoded once) and bad ones skipped and listed, then
    written in a fixed shuffled order spread over ``num_shards`` files
    ``{output_dir}/{name}-NNNNN-of-MMMMM.tfrecord`` (local or gs://), with the
    original encoded bytes (JPEGs stay JPEGs, so training decodes only the
    crop). A ``{name}.bt-data.json`` next to them records counts and class
    names. Returns that summary.

    >>> import tempfile, numpy as np
    >>> out = tempfile.mkdtemp()
    >>> write_tfrecords((np.zeros([10, 8, 8, 3], np.uint8), np.arange(10)), out, num_shards=2)["num_examples"]
    10
    """
    _check_positive("num_shards", num_shards)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise DataError(f"name: use letters, digits, '.', '_' or '-', got {name!r}")
    prep = _prepare(source, data_dir=data_dir, shard=(1, 0), cache=False, cache_max_mb=1, validate="full", seed=0)
    if skipped_path is None:
        skipped_path = f"{output_dir.rstrip('/')}/{name}.skipped.tsv"
    _report_skipped(prep, skipped_path)
    src = prep.source
    # A fixed shuffle spreads classes over all shards and over each shard.
    rng = np.random.default_rng(seed)
    if isinstance(src, _Memory):
        get = src.index_to_example()
        order = rng.permutation(src.n)
        records = tf.data.Dataset.from_tensor_slices(order).map(
            lambda i: (lambda u, im, y: (u, tf.io.encode_png(im), y))(*get(i)), num_parallel_calls=AUTOTUNE
        )
        n = src.n
    elif isinstance(src, _Folder):
        records = src.records(rng.permutation(prep.good_uids))
        n = len(prep.good_uids)
    elif prep.stream is not None:
        records = prep.stream(deterministic=True)
        n = prep.num_examples
    else:
        raise DataError(f"{_name(source)}: cannot be written as TFRecords")
    num_shards = min(num_shards, max(n, 1))
    tf.io.gfile.makedirs(output_dir)
    paths = [f"{output_dir.rstrip('/')}/{name}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    counts = [0] * num_shards
    class_names = prep.class_names
    try:
        for k, (u, data, y) in enumerate(records.prefetch(AUTOTUNE).as_numpy_iterator()):
            feats = {"image/encoded": _bytes_feature(data), "image/format": _bytes_feature(
                (_sniff(data) or "unknown").lower().encode())}
            if prep.has_labels:
                feats["image/class/label"] = _int_feature(y)
                if class_names:
                    feats["image/class/text"] = _bytes_feature(str(class_names[y]).encode())
            if isinstance(src, _Folder):
                feats["image/filename"] = _bytes_feature(src.locate(u).encode())
            s = k % num_shards
            writers[s].write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
            counts[s] += 1
    finally:
        for w in writers:
            w.close()
    info = {
        "num_examples": int(sum(counts)),
        "counts": {os.path.basename(p): c for p, c in zip(paths, counts)},
        "has_labels": bool(prep.has_labels),
        "class_names": list(class_names) if class_names else None,
        "source": _name(source),
        "skipped": len([s for s in prep.skipped if not s[1].startswith("ignored:")]),
    }
    with tf.io.gfile.GFile(f"{output_dir.rstrip('/')}/{name}.bt-data.json", "w") as f:
        json.dump(info, f, indent=2)
    return info
