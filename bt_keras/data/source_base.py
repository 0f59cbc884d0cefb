"""The interface every source implements (:class:`Source`), and the in-memory source of arrays.

:mod:`bt_keras.data.sources` adds folders, TFRecords and TFDS and turns a source string into one
(:func:`~bt_keras.data.sources.parse_source`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bt_keras.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
# Pipeline functions are plain TensorFlow without Python control flow on
# tensors: skipping AutoGraph's source conversion saves seconds per dataset.
plain = tf.autograph.experimental.do_not_convert
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def source_name(source) -> str:
    """How a source is named in messages: its string, or ``arrays``.

    >>> source_name("folder:/data"), source_name(None)
    ('folder:/data', 'arrays')
    """
    return source if isinstance(source, str) else "arrays"


class Source:
    """What every source offers besides its records (those differ by kind; see prepare).

    ``kind``: ``memory``, ``folder``, ``tfrecord`` or ``tfds``; ``ignored``:
    ``(path, reason)`` of files not considered (e.g. ``notes.txt``).
    """

    kind = "source"
    name = "source"
    ignored: list = []
    class_names: list | None = None

    def listing(self) -> tuple:
        """The files behind the source (changes when files appear or disappear)."""
        return ()

    def read(self, uid: int) -> bytes:
        """The stored bytes of item ``uid`` (raises on I/O errors)."""
        raise OSError(f"{self.name}: items cannot be read one by one")

    def locate(self, uid: int) -> str:
        """Where item ``uid`` is, for the list of skipped files."""
        return f"{self.name}#{int(uid)}"

    def image_bytes(self, data: bytes):
        """``(encoded image, None)`` from what :meth:`read` gives, or ``(None, reason)``."""
        return data, None

    def filename(self, uid: int) -> str | None:
        """The file name ``bt-data`` records as ``image/filename`` (None: none)."""
        return None

    def records_to_write(self, prep, rng):
        """``((uid, encoded bytes, label) dataset, count)`` in ``bt-data``'s fixed shuffled order."""
        if prep.stream is None:
            raise DataError(f"{self.name}: cannot be written as TFRecords")
        return prep.stream(deterministic=True), prep.num_examples


class MemorySource(Source):
    """Images already decoded: NumPy arrays, the demo set, or a scanned source."""

    kind = "memory"

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
            return MemorySource(self.name, self.images[sel], _take(self.labels, sel), uids=self.uids[sel])
        parts = [self.flat[self.offsets[i] : self.offsets[i] + np.prod(self.shapes[i]) * 3] for i in sel]
        flat = np.concatenate(parts) if parts else np.zeros([0], np.uint8)
        sizes = np.array([len(p) for p in parts], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return MemorySource(self.name, None, _take(self.labels, sel), flat, offsets, self.shapes[sel], self.uids[sel])

    def records_to_write(self, prep, rng):
        """The images as PNG, in a fixed shuffled order."""
        get = self.index_to_example()
        order = rng.permutation(self.n)
        records = tf.data.Dataset.from_tensor_slices(order).map(
            lambda i: (lambda u, im, y: (u, tf.io.encode_png(im), y))(*get(i)), num_parallel_calls=AUTOTUNE
        )
        return records, self.n

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


def as_memory(images, labels=None, name="arrays") -> MemorySource:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(
            f"{name}: expected uint8 images (0..255), got dtype {images.dtype}; "
            "convert with np.clip(x * 255, 0, 255).astype(np.uint8) for [0, 1] floats"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DataError(
            f"{name}: expected images of shape [N, H, W, 3] (or [N, H, W], [N, H, W, 1]), got {images.shape}"
        )
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
    return MemorySource(name, images=images, labels=labels)
