"""One fixed permutation of pixel positions: an ablation that removes all spatial structure.

With ``data.augment.pixel_shuffle.enabled``, every training view and every
evaluation image of a run is permuted by the same permutation of its
``image_size × image_size`` positions (the three channels of a pixel move
together). Each image keeps its colour histogram exactly; what a model can
still learn is what histograms carry. The permutation is applied last, to the
finished view, so a shuffled run sees exactly the pixels of the normal run,
rearranged (the same for both views and for evaluation, since it depends only
on the seed and the side).

The permutation comes from NumPy's ``default_rng(seed)`` (PCG64, stable
across NumPy versions) and is baked into the graph as a constant: no
per-example randomness, nothing drawn at trace time from TensorFlow's
generators.

Examples:

>>> import numpy as np, tensorflow as tf
>>> perm = pixel_permutation(4, seed=0)
>>> sorted(perm.tolist()) == list(range(16))
True
>>> x = tf.reshape(tf.range(2 * 4 * 4 * 3, dtype=tf.float32), [2, 4, 4, 3])
>>> y = shuffle_pixels(x, perm)
>>> bool(np.array_equal(np.sort(y.numpy().reshape(2, -1)), np.sort(x.numpy().reshape(2, -1))))
True
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

__all__ = ["maybe_shuffle_pixels", "pixel_permutation", "shuffle_pixels"]


@functools.lru_cache(maxsize=16)
def _permutation(image_size: int, seed: int) -> np.ndarray:
    perm = np.random.default_rng(seed).permutation(image_size * image_size).astype(np.int32)
    perm.setflags(write=False)
    return perm


def pixel_permutation(image_size: int, seed: int) -> np.ndarray:
    """The permutation of ``image_size²`` row-major pixel positions for ``seed`` (int32, read-only).

    Output position ``i`` takes input position ``perm[i]``.

    Examples:

    >>> bool((pixel_permutation(8, 3) == pixel_permutation(8, 3)).all()), pixel_permutation(8, 3).shape
    (True, (64,))
    """
    return _permutation(int(image_size), int(seed))


def shuffle_pixels(images, permutation):
    """``images`` ([..., S, S, C], any dtype) with their pixel positions permuted by ``permutation``.

    Args:
        images: a batch ``[B, S, S, C]`` or one image ``[S, S, C]``.
        permutation: int32 [S·S] from :func:`pixel_permutation`.

    Examples:

    >>> x = tf.reshape(tf.range(4), [1, 2, 2, 1])
    >>> shuffle_pixels(x, np.array([3, 2, 1, 0], np.int32)).numpy().ravel().tolist()
    [3, 2, 1, 0]
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    rank = images.shape.rank
    flat = tf.reshape(images, tf.concat([shape[: rank - 3], [-1], shape[rank - 1 :]], axis=0))
    out = tf.reshape(tf.gather(flat, tf.constant(permutation, tf.int32), axis=rank - 3), shape)
    out.set_shape(images.shape)
    return out


def maybe_shuffle_pixels(images, config, image_size: int):
    """:func:`shuffle_pixels` when ``config.pixel_shuffle.enabled``, else ``images`` itself (no op added).

    Args:
        images: views or evaluation images, ``[B, S, S, C]`` or ``[S, S, C]``.
        config: a resolved :class:`~bt_keras.augment.AugmentConfig`.
        image_size: S.

    Examples:

    >>> from bt_keras.augment import get_preset
    >>> x = tf.zeros([2, 4, 4, 3])
    >>> maybe_shuffle_pixels(x, get_preset("cifar"), 4) is x
    True
    """
    ps = config.pixel_shuffle
    if not ps.enabled:
        return images
    return shuffle_pixels(images, pixel_permutation(image_size, ps.seed))
