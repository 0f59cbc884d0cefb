"""Labelled datasets for probes and monitors: crop + flip training batches, fixed subsets.

The paper's linear probe trains on random-resized crops and flips of the
labelled images (:func:`crop_flip_config`, :func:`augmented_labelled_dataset`,
:class:`LabelledImages`); the kNN monitor holds a fixed random subset of a
labelled source in memory (:func:`sample_labelled`). Both read their source
through :func:`~bt_keras.data.eval_dataset`, so decoding, bad-file handling
and the centre crop are the evaluation's.

Examples:

>>> from bt_keras.contract import PreprocessingContract
>>> from bt_keras.data.labelled import sample_labelled
>>> x, y = sample_labelled("demo:test", 20, PreprocessingContract(32, crop_fraction=1.0))
>>> x.shape, y.dtype
((20, 32, 32, 3), dtype('int64'))
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bt_keras.augment.config import get_preset
from bt_keras.augment.crop import crop_resize
from bt_keras.augment.params import sample_params
from bt_keras.augment.pixel import apply_batch
from bt_keras.augment.rng import example_keys
from bt_keras.augment.shuffle import maybe_shuffle_pixels
from bt_keras.data.pipelines import eval_dataset
from bt_keras.data.prepare import count_examples, source_info

__all__ = ["LabelledImages", "augmented_labelled_dataset", "crop_flip_config", "sample_labelled"]


def crop_flip_config(contract):
    """The paper's linear-probe augmentation: random-resized crop (scale 0.08–1,
    ratio 3/4–4/3, bicubic) and horizontal flip only, with the contract's
    mean/std.

    Args:
        contract: a :class:`~bt_keras.contract.PreprocessingContract`.

    Examples:

    >>> from bt_keras.contract import PreprocessingContract
    >>> cfg = crop_flip_config(PreprocessingContract(image_size=32))
    >>> cfg.crop.enabled, cfg.flip.enabled, cfg.color_jitter.enabled
    (True, True, False)
    """
    seed = getattr(contract, "pixel_shuffle_seed", None)  # the ablation's permutation, when the run used it
    return get_preset(
        "none",
        crop={"enabled": True},
        flip={"enabled": True},
        pixel_shuffle={"enabled": seed is not None, "seed": seed or 0},
        mean=tuple(contract.mean),
        std=tuple(contract.std),
    )


def augmented_labelled_dataset(
    source,
    contract,
    *,
    batch_size: int = 256,
    epoch: int = 0,
    seed: int = 0,
    data_dir=None,
    cache_max_mb: int = 1024,
    repeat: bool = False,
):
    """One epoch of ``(images, labels)`` training batches for the paper's probe.

    Random-resized crops are cut from the central square of each image
    (``crop_fraction`` = 1), resized to ``image_size / crop_fraction`` (256
    for a 224 contract, the usual "resize 256"), then flipped and normalised
    with the contract's mean/std. Each (epoch, example) gets its own
    stateless seed.

    Args:
        source: a labelled source string or ``(images, labels)`` arrays.
        contract: a :class:`~bt_keras.contract.PreprocessingContract`.
        batch_size: examples per batch (the last one may be partial).
        epoch, seed: which epoch of which run (the crops' keys).
        data_dir: TensorFlow Datasets directory.
        cache_max_mb: keep the decoded images in memory up to this size.
        repeat: an endless stream of epochs, reshuffled each time (e.g. for
            supervised training).

    Examples:

    >>> from bt_keras.contract import PreprocessingContract
    >>> c = PreprocessingContract(image_size=32, crop_fraction=1.0)
    >>> x, y = next(iter(augmented_labelled_dataset("demo:test", c, batch_size=16)))
    >>> x.shape
    TensorShape([16, 32, 32, 3])
    """
    raw = LabelledImages(source, contract, data_dir, cache_max_mb)
    return raw.epoch(crop_flip_config(contract), batch_size, epoch, seed, repeat=repeat)


class LabelledImages:
    """A labelled source as uint8 central squares at ``image_size /
    crop_fraction``, unbatched; kept in memory (after the first full pass, or
    :meth:`warm`) when they fit in ``cache_max_mb``. :meth:`epoch` gives
    crop + flip training batches.

    Args:
        source: a labelled source string or ``(images, labels)`` arrays.
        contract: a :class:`~bt_keras.contract.PreprocessingContract`.
        data_dir: TensorFlow Datasets directory.
        cache_max_mb: the in-memory budget.

    Examples:

    >>> from bt_keras.contract import PreprocessingContract
    >>> images = LabelledImages("demo:test", PreprocessingContract(32, crop_fraction=1.0))
    >>> images.num_classes()
    10
    """

    def __init__(self, source, contract, data_dir=None, cache_max_mb: int = 1024, max_image_pixels=None):
        limit = {} if max_image_pixels is None else {"max_image_pixels": int(max_image_pixels)}
        self.info = source_info(source, data_dir=data_dir, **limit)
        load = int(round(contract.image_size / contract.crop_fraction))
        # mean 0, std 1/255 undoes the normalisation: pixels in [0, 255].
        ds = eval_dataset(
            source,
            batch_size=256,
            image_size=load,
            mean=(0.0, 0.0, 0.0),
            std=(1 / 255,) * 3,
            crop_fraction=1.0,
            data_dir=data_dir,
            **limit,
        )
        ds = ds.unbatch().map(lambda x, y: (tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8), y))
        budget = cache_max_mb * 2**20
        per_image = load * load * 3
        self.cached = self.info.num_examples * per_image <= budget
        if self.cached:
            ds = ds.cache()
            self.shuffle_buffer = max(self.info.num_examples, 1)
        else:
            self.shuffle_buffer = max(1000, budget // per_image)
        self.dataset = ds
        self.image_size = contract.image_size

    def warm(self) -> LabelledImages:
        """Fills the in-memory cache now (one full pass), so that training time excludes decoding."""
        if self.cached:
            for _ in self.dataset.batch(4096):
                pass
        return self

    def num_classes(self) -> int:
        """Class count: from the source's class names, else the largest label + 1."""
        if self.info.class_names:
            return len(self.info.class_names)
        return int(max(int(tf.reduce_max(y)) for _, y in self.dataset.batch(4096))) + 1

    def epoch(self, cfg, batch_size: int, epoch: int = 0, seed: int = 0, repeat: bool = False):
        """``(images, labels)`` batches of random crops (``cfg``, e.g. :func:`crop_flip_config`)."""
        size = self.image_size

        @tf.autograph.experimental.do_not_convert  # plain TF ops; no control flow to convert
        def crop(i, image, label):
            key = example_keys(tf.constant(seed, tf.int64), tf.constant(epoch, tf.int64), i)
            params = sample_params(key, tf.shape(image)[0], tf.shape(image)[1], cfg, 0)
            return crop_resize(image, params, size, cfg), params, label

        ds = self.dataset.shuffle(self.shuffle_buffer, seed=seed * 7919 + epoch, reshuffle_each_iteration=True)
        ds = (ds.repeat() if repeat else ds).enumerate()  # unique index → unique crop per (epoch, example)
        ds = ds.map(lambda i, ex: crop(i, *ex), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(
            lambda x, p, y: (maybe_shuffle_pixels(apply_batch(x, p, cfg, 0), cfg, size), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.prefetch(tf.data.AUTOTUNE)


def sample_labelled(
    source,
    max_examples: int,
    contract,
    *,
    data_dir=None,
    seed: int = 0,
    batch_size: int = 256,
    max_mb: int = 512,
    require_labels: bool = True,
):
    """A fixed random subset of a labelled source, preprocessed as for
    evaluation: ``(images float32, labels int)`` arrays, at most
    ``max_examples`` and at most ``max_mb`` of images (one pass over the
    source). ``max_examples`` 0 keeps every image.

    Args:
        source: a labelled source string or ``(images, labels)`` arrays.
        max_examples: subset size (0: all).
        contract: a :class:`~bt_keras.contract.PreprocessingContract`.
        data_dir: TensorFlow Datasets directory.
        seed: which subset.
        batch_size: the evaluation batch used while reading.
        max_mb: the subset's memory cap.
        require_labels: ``False`` accepts an unlabelled source (labels -1), as
            the int8 export's calibration images need.

    Examples:

    >>> from bt_keras.contract import PreprocessingContract
    >>> x, y = sample_labelled("demo:test", 50, PreprocessingContract(32, crop_fraction=1.0))
    >>> x.shape
    (50, 32, 32, 3)
    """
    per_image = contract.image_size**2 * 3 * 4
    n = count_examples(source, data_dir=data_dir)
    cap = min(max_examples or n, n, max(1, max_mb * 2**20 // per_image))
    keep = np.zeros(n + 1, bool)
    keep[np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))] = True
    ds = eval_dataset(
        source,
        batch_size=batch_size,
        **contract.eval_kwargs(),
        data_dir=data_dir,
        with_ids=not require_labels,
    )
    xs, ys, seen = [], [], 0
    for images, labels, *_ in ds:
        b = int(labels.shape[0])
        mask = keep[seen : seen + b]
        if len(mask) < b:
            mask = np.pad(mask, (0, b - len(mask)))
        if mask.any():
            xs.append(images.numpy()[mask])
            ys.append(labels.numpy()[mask])
        seen += b
        if seen > np.flatnonzero(keep).max():
            break
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)
