"""Two augmented views of each image: the one object the data pipeline calls.

:class:`TwoViews` holds a resolved :class:`~bt_keras.augment.AugmentConfig`,
the output size and the seed, and turns in-memory images or encoded bytes
into ``(view_a, view_b)``. It chooses the crop algorithm: small same-size
images are cut as a whole batch with matrix products
(:func:`~bt_keras.augment.crop.crop_resize_batch`), others one by one
(:func:`~bt_keras.augment.crop.crop_resize`), and JPEG bytes decode only the
crop window (:func:`~bt_keras.augment.crop.decode_crop_resize`). Whatever the
path, the pixel stage is :func:`~bt_keras.augment.pixel.apply_batch`, and
the finished views go through the pixel-shuffle ablation when it is enabled
(:func:`~bt_keras.augment.shuffle.maybe_shuffle_pixels`: off by default, and
then no op is added).

Examples:

>>> import numpy as np
>>> from bt_keras.augment import augment_pair, get_preset
>>> images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
>>> view_a, view_b = augment_pair(images, seed=0, config=get_preset("cifar"), image_size=32)
>>> view_a.shape, view_a.dtype
(TensorShape([4, 32, 32, 3]), tf.float32)
"""

from __future__ import annotations

import tensorflow as tf

from bt_keras.augment.config import AugmentConfig, resolve_augment
from bt_keras.augment.crop import MATRIX_METHODS, crop_resize, crop_resize_batch, decode_crop_resize_pair
from bt_keras.augment.params import sample_params
from bt_keras.augment.pixel import apply_batch
from bt_keras.augment.rng import example_keys
from bt_keras.augment.shuffle import maybe_shuffle_pixels

__all__ = ["VECTORISED_MAX_SIDE", "TwoViews", "augment_pair", "augment_views"]

VECTORISED_MAX_SIDE = 64  # source side up to which whole-batch matrix crops beat per-image resizes


class TwoViews:
    """Makes the two augmented views of examples, given their keys' ingredients.

    Every example's randomness comes from ``example_keys(seed, epoch_key,
    uid)``, so its views depend on neither the batch nor the arrival order.

    Args:
        config: an :class:`~bt_keras.augment.AugmentConfig`, a preset name or
            None (``cifar``).
        image_size: side of the square views.
        seed: the run's seed.
        normalize: ``(x / 255 - mean) / std`` (else values on [0, 1]).

    Examples:

    >>> import tensorflow as tf
    >>> views = TwoViews("cifar", image_size=16, seed=0)
    >>> images = tf.zeros([4, 20, 20, 3], tf.uint8)
    >>> make = views.in_memory(tf.range(4, dtype=tf.int64), tf.fill([4, 2], 20), lambda: images.__getitem__, images)
    >>> [v.shape for v in make(tf.constant([0, 1, 2], tf.int64), tf.constant(0, tf.int64))]
    [TensorShape([3, 16, 16, 3]), TensorShape([3, 16, 16, 3])]
    """

    def __init__(self, config=None, image_size: int = 32, seed: int = 0, normalize: bool = True):
        self.config: AugmentConfig = resolve_augment(config)
        self.image_size = int(image_size)
        self.seed = seed
        self.normalize = bool(normalize)

    def keys(self, epoch_key, uids):
        """The examples' int64 keys for this pass over the data."""
        return example_keys(self.seed, epoch_key, uids)

    def matrix_crops(self, height: int, width: int) -> bool:
        """Whether same-size ``height`` × ``width`` images are cut as a whole batch by matrix products."""
        return self.config.crop.method in MATRIX_METHODS and max(height, width, self.image_size) <= VECTORISED_MAX_SIDE

    def in_memory(self, uids, sizes, make_image_at, images=None):
        """A function ``(indices [B], epoch_key) -> (view_a, view_b)`` over an in-memory set.

        Args:
            uids: int64 [N] stable example ids.
            sizes: int32 [N, 2] every image's (height, width).
            make_image_at: ``make_image_at()`` gives ``image_at(i)``, image
                ``i`` as uint8 [H, W, 3]; called only when the images are cut
                one by one (it may put the whole set in a constant).
            images: uint8 [N, H, W, 3] when all images share a size (static),
                else None; small ones take the whole-batch matrix crops.
        """
        uids = tf.convert_to_tensor(uids)
        if images is not None and self.matrix_crops(int(images.shape[1]), int(images.shape[2])):
            images = tf.convert_to_tensor(images)
            height, width = int(images.shape[1]), int(images.shape[2])

            def whole_batch(idx, epoch_key):
                k = self.keys(epoch_key, tf.gather(uids, idx))
                return self.from_same_size(tf.gather(images, idx), k, height, width)

            return whole_batch
        sizes = tf.convert_to_tensor(sizes)
        image_at = make_image_at()

        def per_image(idx, epoch_key):
            k = self.keys(epoch_key, tf.gather(uids, idx))
            hw = tf.gather(sizes, idx)
            return augment_views(
                lambda i: image_at(idx[i]), k, hw[:, 0], hw[:, 1], self.config, self.image_size, self.normalize
            )

        return per_image

    def from_same_size(self, images, keys, height: int, width: int):
        """``(view_a, view_b)`` of a uint8 [B, H, W, 3] batch: crops by matrix products, flip included."""
        views = []
        for view in (0, 1):
            p = sample_params(keys, height, width, self.config, view)
            crops = crop_resize_batch(
                images, p["crop"], self.image_size, self.config, channels_first=True, flip=p["flip"]
            )
            view_x = apply_batch(crops, p, self.config, view, self.normalize, channels_first=True, flipped=True)
            views.append(maybe_shuffle_pixels(view_x, self.config, self.image_size))
        return tuple(views)

    def crops_from_image(self, image, key):
        """Stage 1 of one decoded uint8 [H, W, 3] image: ``((crop_a, params_a), (crop_b, params_b))``."""
        shape = tf.shape(image)
        pa = sample_params(key, shape[0], shape[1], self.config, 0)
        pb = sample_params(key, shape[0], shape[1], self.config, 1)
        return (
            (crop_resize(image, pa, self.image_size, self.config), pa),
            (crop_resize(image, pb, self.image_size, self.config), pb),
        )

    def crops_from_bytes(self, data, key, max_pixels: int | None = None):
        """Stage 1 of one encoded image; a JPEG decodes only its two crop windows.

        An image of more than ``max_pixels`` pixels (default
        :data:`~bt_keras.contract.MAX_IMAGE_PIXELS`) raises before decoding.
        """
        from bt_keras.contract import MAX_IMAGE_PIXELS
        from bt_keras.preprocess import decode_rgb, refuse_above

        max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels

        def jpeg():
            shape = tf.io.extract_jpeg_shape(data)
            with tf.control_dependencies([refuse_above(shape[:2], max_pixels)]):
                shape = tf.identity(shape)
            pa = sample_params(key, shape[0], shape[1], self.config, 0)
            pb = sample_params(key, shape[0], shape[1], self.config, 1)
            va, vb = decode_crop_resize_pair(data, pa, pb, self.image_size, self.config)
            return (va, pa), (vb, pb)

        return tf.cond(tf.io.is_jpeg(data), jpeg, lambda: self.crops_from_image(decode_rgb(data, max_pixels), key))

    def finish(self, crops_a, crops_b):
        """Stage 2 of a batch of stage-1 results: ``(view_a, view_b)``.

        ``crops_a``/``crops_b``: batched ``(crops, params)`` pairs as
        :meth:`crops_from_bytes` gives them.
        """
        (va, pa), (vb, pb) = crops_a, crops_b
        return (
            maybe_shuffle_pixels(apply_batch(va, pa, self.config, 0, self.normalize), self.config, self.image_size),
            maybe_shuffle_pixels(apply_batch(vb, pb, self.config, 1, self.normalize), self.config, self.image_size),
        )


def augment_views(image_at, keys, heights, widths, config: AugmentConfig, image_size: int, normalize: bool = True):
    """``(view_a, view_b)`` of a batch of in-memory images, float32 [B, S, S, 3] each.

    Parameters are drawn for the whole batch, each crop is cut and resized on
    its own, then :func:`~bt_keras.augment.pixel.apply_batch` (and the
    pixel-shuffle ablation when ``config`` enables it).

    Args:
        image_at: ``image_at(i)``, example ``i``'s uint8 [H, W, 3] image (sizes may differ).
        keys: int64 [B] example keys.
        heights, widths: the images' sizes, [B] or scalars.
        config: a resolved :class:`~bt_keras.augment.AugmentConfig`.
        image_size: side of the views.
        normalize: ``(x / 255 - mean) / std`` (else values on [0, 1]).

    Examples:

    >>> from bt_keras.augment import example_keys, get_preset
    >>> images = tf.zeros([4, 40, 48, 3], tf.uint8)
    >>> keys = example_keys(0, 0, tf.range(4, dtype=tf.int64))
    >>> a, b = augment_views(lambda i: images[i], keys, 40, 48, get_preset("cifar"), 32)
    >>> a.shape
    TensorShape([4, 32, 32, 3])
    """
    pa = sample_params(keys, heights, widths, config, 0)
    pb = sample_params(keys, heights, widths, config, 1)
    sig = tf.TensorSpec([image_size, image_size, 3], tf.uint8)

    def crops(args):
        i, box_a, box_b = args
        image = image_at(i)
        return (
            crop_resize(image, {"crop": box_a}, image_size, config),
            crop_resize(image, {"crop": box_b}, image_size, config),
        )

    va, vb = tf.map_fn(
        crops,
        (tf.range(tf.shape(keys)[0]), pa["crop"], pb["crop"]),
        fn_output_signature=(sig, sig),
        parallel_iterations=16,
    )
    return (
        maybe_shuffle_pixels(apply_batch(va, pa, config, 0, normalize), config, image_size),
        maybe_shuffle_pixels(apply_batch(vb, pb, config, 1, normalize), config, image_size),
    )


def augment_pair(images, seed: int, config=None, image_size: int | None = None, normalize: bool = True):
    """Two augmented views of every image of a uint8 [N, H, W, 3] batch.

    Example ``i`` has the key ``example_keys(seed, 0, i)``, so its views do
    not depend on the rest of the batch. A convenience for notebooks and
    tests; training pipelines use :func:`bt_keras.data.two_view_dataset`,
    which runs the same code.

    Args:
        images: uint8 [N, H, W, 3].
        seed: the seed of the examples' keys.
        config: an :class:`~bt_keras.augment.AugmentConfig`, a preset name or None (``cifar``).
        image_size: side of the views (default: the images' height).
        normalize: ``(x / 255 - mean) / std`` (else values on [0, 1]).

    Examples:

    >>> a, b = augment_pair(tf.zeros([2, 24, 24, 3], tf.uint8), seed=0, config="none", normalize=False)
    >>> float(tf.reduce_max(a)), a.shape
    (0.0, TensorShape([2, 24, 24, 3]))
    """
    cfg = resolve_augment(config)
    images = tf.convert_to_tensor(images, tf.uint8)
    size = int(image_size or images.shape[1])
    key = (cfg, size, bool(normalize))
    if key not in _PAIR_FNS:
        _PAIR_FNS[key] = _make_pair_fn(cfg, size, bool(normalize))
    return _PAIR_FNS[key](images, tf.constant(seed, tf.int64))


_PAIR_FNS: dict = {}  # (config, size, normalize) -> traced function


def _make_pair_fn(cfg, size, normalize):
    @tf.function(reduce_retracing=True, autograph=False)
    def run(images, seed):
        n = tf.shape(images)[0]
        keys = example_keys(seed, 0, tf.range(n, dtype=tf.int64))
        return augment_views(lambda i: images[i], keys, tf.shape(images)[1], tf.shape(images)[2], cfg, size, normalize)

    return run
