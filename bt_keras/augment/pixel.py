"""Stage 2 of a view: the per-image pixel program, one XLA program per batch.

:func:`apply_batch` runs flip, colour jitter (each example its own random
order), grayscale, blur, solarize and normalisation as one XLA program that
takes each image through the whole recipe while it is in cache. The program
is compiled once per (config, view, size, options): the config is a frozen,
hashable value, so it keys the cache itself.

Examples:

>>> import tensorflow as tf
>>> from bt_keras.augment import example_keys, get_preset, sample_params
>>> from bt_keras.augment.pixel import apply_batch
>>> cfg = get_preset("none")
>>> p = sample_params(example_keys(0, 0, tf.range(2, dtype=tf.int64)), 8, 8, cfg, 0)
>>> x = apply_batch(tf.fill([2, 8, 8, 3], tf.constant(255, tf.uint8)), p, cfg, view=0, normalize=False)
>>> float(tf.reduce_min(x)), x.shape
(1.0, TensorShape([2, 8, 8, 3]))
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from bt_keras.augment.config import AugmentConfig
from bt_keras.augment.params import PIXEL_PARAMS

__all__ = ["apply_batch", "blur_kernel_size"]


def blur_kernel_size(image_size: int, kernel_fraction: float = 0.1) -> int:
    """Odd kernel side ≈ ``kernel_fraction`` × ``image_size`` (23 at 224 px, as torchvision).

    Args:
        image_size: side of the (square) image.
        kernel_fraction: kernel side as a share of the image side.

    Examples:

    >>> blur_kernel_size(224), blur_kernel_size(32)
    (23, 3)
    """
    k = int(round(kernel_fraction * image_size))
    k = max(3, k + 1 - k % 2)
    # Reflect padding needs the half-width below the image side.
    return min(k, 2 * image_size - 1)


_LUMA = (0.299, 0.587, 0.114)  # torchvision rgb_to_grayscale

# The pixel ops below work on channels-first batches [B, 3, H, W]: each
# channel is then one contiguous plane, and measured 3-5× faster than slicing
# interleaved NHWC channels.


def _gray(x):
    """Luma [B, 1, H, W] of a channels-first batch."""
    return _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]


def _brightness(x, f):
    return tf.clip_by_value(x * f[:, None, None, None], 0.0, 1.0)


def _contrast(x, f):
    mean = tf.reduce_mean(_gray(x), axis=[1, 2, 3], keepdims=True)
    f = f[:, None, None, None]
    return tf.clip_by_value(f * x + (1.0 - f) * mean, 0.0, 1.0)


def _saturation(x, f):
    f = f[:, None, None, None]
    return tf.clip_by_value(f * x + (1.0 - f) * _gray(x), 0.0, 1.0)


def _hue(x, f):
    """Hue rotation by ``f`` turns (RGB→HSV→RGB in closed form), channels-first.

    With M = max, C = max − min and H the hexcone hue in sixths, each output
    channel is M − C·clamp(min(k, 4 − k), 0, 1) with k = (n + H) mod 6 and
    n = 5, 3, 1 for R, G, B: ``tf.image.adjust_hue`` without its per-image call.
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    top = tf.maximum(tf.maximum(r, g), b)
    chroma = top - tf.minimum(tf.minimum(r, g), b)
    is_r, is_g = top == r, top == g
    num = tf.where(is_r, g - b, tf.where(is_g, b - r, r - g))
    offset = tf.where(is_r, 0.0, tf.where(is_g, 2.0, 4.0))
    h = num / tf.maximum(chroma, 1e-12) + offset + 6.0 * f[:, None, None]
    k = tf.constant([5.0, 3.0, 1.0])[None, :, None, None] + h[:, None]
    k = k - 6.0 * tf.floor(k * (1.0 / 6.0))
    return top[:, None] - chroma[:, None] * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def _color_jitter(x, apply, factors, order):
    """One image [1, 3, H, W]: the four ops in the example's own ``order``, or none.

    A loop over the four stages with a ``switch_case`` that runs only the op
    the stage needs. (Unrolled, the 16 op instances took XLA 12 s to compile
    at 224 px, against 0.4 s; the loop costs ≈ 10% of the jitter's run time.)
    """

    def stage(i, x):
        branch = tf.where(apply, tf.gather(order, i), 4)
        ops = [functools.partial(fn, x, factors[k : k + 1]) for k, fn in enumerate(_JITTER_OPS)]
        return i + 1, tf.switch_case(branch, ops + [lambda: x])

    return tf.while_loop(lambda i, x: i < 4, stage, (tf.constant(0), x))[1]


def _gaussian_blur(x, sigma, kernel_size: int):
    """Separable Gaussian blur, one σ per example, reflect padding; channels-first.

    Each pass is a sum of shifted copies weighted per example (the kernel is
    symmetric, so mirrored taps share a multiply); XLA turns each pass into
    one loop. The reflect-padded copy each pass reads is made in a branch of
    its own, so XLA materialises it once: fused into the taps, the padding's
    index arithmetic was recomputed for every tap of every value, which took
    half the blur's time (measured 2× faster at 224 px, the same sums in the
    same order). Summing only the taps that can change a float32 value (a
    radius per σ, chosen at run time) saved little more and multiplied the
    XLA compile time (docs/performance.md).

    Args:
        x: float32 [n, 3, H, W].
        sigma: float32 [n], each example's σ.
        kernel_size: the odd kernel side (:func:`blur_kernel_size`).
    """
    r = kernel_size // 2
    t = tf.range(-r, r + 1, dtype=tf.float32)
    w = tf.exp(-(t[None, :] ** 2) / (2.0 * sigma[:, None] ** 2))
    w = w / tf.reduce_sum(w, axis=1, keepdims=True)  # [n, k]
    # Always true, but XLA cannot know it: the branch boundary is what materialises the padding.
    real = tf.reduce_all(sigma > 0.0)

    def one_pass(y, axis):
        size = y.shape[axis]
        pad = [[0, 0]] * 4
        pad[axis] = [r, r]
        y = tf.cond(real, lambda: tf.pad(y, pad, mode="REFLECT"), lambda: tf.pad(y, pad))

        def tap(i):
            begin = [0, 0, 0, 0]
            begin[axis] = i
            shape = [-1, -1, -1, -1]
            shape[axis] = size
            return tf.slice(y, begin, shape)

        weight = lambda i: w[:, i, None, None, None]
        out = weight(r) * tap(r)
        for i in range(r):
            out += weight(i) * (tap(i) + tap(kernel_size - 1 - i))
        return out

    return one_pass(one_pass(x, 3), 2)


def apply_batch(
    images,
    params: dict,
    config: AugmentConfig,
    view: int,
    normalize: bool = True,
    channels_first: bool = False,
    flipped: bool = False,
):
    """Flip, jitter, grayscale, blur, solarize and normalise a batch.

    Returns float32 [B, S, S, 3], ``(x / 255 - mean) / std`` (or on [0, 1]
    with ``normalize=False``).

    Args:
        images: [B, S, S, 3] crops from stage 1, uint8 (or float on 0..255;
            [B, 3, S, S] with ``channels_first``).
        params: the batched dict from :func:`~bt_keras.augment.params.sample_params`.
        config: a resolved :class:`~bt_keras.augment.AugmentConfig`.
        view: 0 (view A) or 1 (view B): the blur and solarize probabilities.
        normalize: apply the mean/std normalisation.
        channels_first: ``images`` are [B, 3, S, S].
        flipped: the crops already carry their flips
            (:func:`~bt_keras.augment.crop.crop_resize_batch` applies ``params["flip"]``).

    Examples:

    >>> from bt_keras.augment import example_keys, get_preset, sample_params
    >>> cfg = get_preset("cifar")
    >>> p = sample_params(example_keys(0, 0, tf.range(8, dtype=tf.int64)), 32, 32, cfg, 0)
    >>> apply_batch(tf.zeros([8, 32, 32, 3], tf.uint8), p, cfg, view=0).shape
    TensorShape([8, 32, 32, 3])
    """
    side = int(images.shape[2] if channels_first else images.shape[1])
    run = _pixel_fn(config, view, side, bool(normalize), bool(channels_first), bool(flipped))
    x = run(images, {k: params[k] for k in PIXEL_PARAMS})
    x.set_shape([images.shape[0], side, side, 3])
    return x


@functools.lru_cache(maxsize=64)
def _pixel_fn(config: AugmentConfig, view, side, normalize, channels_first, flipped):
    """The XLA program of :func:`apply_batch`: a loop over the batch, the whole recipe per image.

    One image (600 kB at 224 px) stays in cache from its uint8 crop to its
    normalised output, so the batch is read once and written once; every
    "with probability p" is a branch that runs only when taken. On one
    thread, the ImageNet recipe: 1.8× less time than the same ops applied
    to the whole batch at 224 px (there each pass over a float batch costs
    as much as its arithmetic), 1.7× at 32 px.
    """
    kernel = blur_kernel_size(side, config.blur.kernel_fraction)
    blur = config.blur.enabled and float(config.blur.prob[view]) > 0 and kernel > 1
    solarize = config.solarize.enabled and float(config.solarize.prob[view]) > 0
    mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)

    def one(args):
        image, p = args
        x = tf.cast(image, tf.float32) * (1.0 / 255.0)
        x = (x if channels_first else tf.transpose(x, [2, 0, 1]))[None]  # [1, 3, S, S]
        if config.flip.enabled and not flipped:
            x = tf.cond(p["flip"], lambda: tf.reverse(x, axis=[3]), lambda: x)
        if config.color_jitter.enabled:
            x = _color_jitter(x, p["jitter"], p["jitter_factors"], p["jitter_order"])
        if config.grayscale.enabled:
            x = tf.cond(p["grayscale"], lambda: tf.tile(_gray(x), [1, 3, 1, 1]), lambda: x)
        if blur:
            # A branch even at p = 1: it also keeps XLA from fusing the two blur passes
            # into the ops after them (measured 2.8× slower fused).
            x = tf.cond(p["blur"], lambda: _gaussian_blur(x, p["blur_sigma"][None], kernel), lambda: x)
        if solarize:
            thr = float(config.solarize.threshold)
            x = tf.where(p["solarize"] & (x >= thr), 1.0 - x, x)
        if normalize:
            x = x * (1.0 / std)[:, None, None] - (mean / std)[:, None, None]
        return tf.transpose(x[0], [1, 2, 0])

    @tf.function(jit_compile=True, autograph=False)
    def run(images, params):
        return tf.map_fn(one, (images, params), fn_output_signature=tf.float32)

    return run
