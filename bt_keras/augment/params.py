"""Every random parameter of a view, drawn per example from its key.

:func:`sample_params` turns example keys into the crop box (torchvision's
``RandomResizedCrop.get_params``), the coins of each op, the jitter factors
and order and the blur σ, for one example or a whole batch at once.

Examples:

>>> import tensorflow as tf
>>> from bt_keras.augment import get_preset
>>> from bt_keras.augment.params import sample_params
>>> from bt_keras.augment.rng import example_keys
>>> p = sample_params(example_keys(0, 0, tf.range(8, dtype=tf.int64)), 32, 32, get_preset("cifar"), 0)
>>> sorted(p)[:3], p["crop"].shape
(['blur', 'blur_sigma', 'crop'], TensorShape([8, 4]))
"""

from __future__ import annotations

import math

import tensorflow as tf

from bt_keras.augment.config import AugmentConfig, CropConfig
from bt_keras.augment.rng import (
    ATTEMPTS,
    NUM_UNIFORMS,
    U_AREA,
    U_BLUR,
    U_FACTORS,
    U_FLIP,
    U_GRAY,
    U_JITTER,
    U_LEFT,
    U_ORDER,
    U_RATIO,
    U_SIGMA,
    U_SOLAR,
    U_TOP,
    uniforms,
    view_key,
)

__all__ = ["PIXEL_PARAMS", "sample_params"]

# The parameters the pixel program reads (all but the crop box).
PIXEL_PARAMS = ("flip", "jitter", "jitter_factors", "jitter_order", "grayscale", "blur", "blur_sigma", "solarize")


def _crop_box(u, height, width, crop: CropConfig):
    """torchvision ``RandomResizedCrop.get_params`` on uniform draws ``u`` [..., n]."""
    if not crop.enabled:
        side = tf.minimum(height, width)
        return tf.stack([(height - side) // 2, (width - side) // 2, side, side], axis=-1)
    h_f = tf.cast(height, tf.float32)[..., None]
    w_f = tf.cast(width, tf.float32)[..., None]
    lo, hi = (float(v) for v in crop.scale)
    log_lo, log_hi = math.log(crop.ratio[0]), math.log(crop.ratio[1])
    area = h_f * w_f * (lo + (hi - lo) * u[..., U_AREA : U_AREA + ATTEMPTS])
    ratio = tf.exp(log_lo + (log_hi - log_lo) * u[..., U_RATIO : U_RATIO + ATTEMPTS])
    cw = tf.round(tf.sqrt(area * ratio))
    ch = tf.round(tf.sqrt(area / ratio))
    ok = (cw > 0) & (cw <= w_f) & (ch > 0) & (ch <= h_f)
    pick = tf.one_hot(tf.argmax(tf.cast(ok, tf.int32), axis=-1), ATTEMPTS)  # the first box that fits
    cw_i = tf.reduce_sum(cw * pick, -1)
    ch_i = tf.reduce_sum(ch * pick, -1)
    h_f, w_f = h_f[..., 0], w_f[..., 0]
    top_i = tf.floor(tf.reduce_sum(u[..., U_TOP : U_TOP + ATTEMPTS] * pick, -1) * (h_f - ch_i + 1))
    left_i = tf.floor(tf.reduce_sum(u[..., U_LEFT : U_LEFT + ATTEMPTS] * pick, -1) * (w_f - cw_i + 1))
    top_i = tf.minimum(top_i, h_f - ch_i)
    left_i = tf.minimum(left_i, w_f - cw_i)
    # Fallback when no attempt fits: a central crop with the ratio clamped.
    in_ratio = w_f / h_f
    fw = tf.where(in_ratio > crop.ratio[1], tf.round(h_f * crop.ratio[1]), w_f)
    fh = tf.where(in_ratio < crop.ratio[0], tf.round(w_f / crop.ratio[0]), h_f)
    fw = tf.clip_by_value(fw, 1.0, w_f)
    fh = tf.clip_by_value(fh, 1.0, h_f)
    any_ok = tf.reduce_any(ok, axis=-1)
    box = tf.stack(
        [
            tf.where(any_ok, top_i, tf.floor((h_f - fh) / 2)),
            tf.where(any_ok, left_i, tf.floor((w_f - fw) / 2)),
            tf.where(any_ok, ch_i, fh),
            tf.where(any_ok, cw_i, fw),
        ],
        axis=-1,
    )
    return tf.cast(box, tf.int32)


def sample_params(key, height, width, config: AugmentConfig, view: int) -> dict:
    """All random parameters of one view, for one example or a batch.

    Returns, per example: ``crop`` (top, left, height, width), ``flip``,
    ``jitter``, ``jitter_factors`` (brightness, contrast, saturation, hue),
    ``jitter_order``, ``grayscale``, ``blur``, ``blur_sigma``, ``solarize``.
    Disabled ops give False.

    Args:
        key: int64 example key(s) (:func:`~bt_keras.augment.rng.example_keys`), any shape [...].
        height, width: the source images' sizes (broadcastable to ``key``).
        config: a resolved :class:`~bt_keras.augment.AugmentConfig`.
        view: 0 (view A) or 1 (view B).

    Examples:

    >>> from bt_keras.augment import example_keys, get_preset
    >>> keys = example_keys(0, 0, tf.range(1000, dtype=tf.int64))
    >>> p = sample_params(keys, 32, 32, get_preset("cifar"), view=1)
    >>> p["crop"].shape, round(float(tf.reduce_mean(tf.cast(p["solarize"], tf.float32))), 1)
    (TensorShape([1000, 4]), 0.2)
    """
    key = tf.convert_to_tensor(key, tf.int64)
    height = tf.broadcast_to(tf.cast(height, tf.int32), tf.shape(key))
    width = tf.broadcast_to(tf.cast(width, tf.int32), tf.shape(key))
    u = uniforms(view_key(key, view), NUM_UNIFORMS)
    false = tf.zeros(tf.shape(key), tf.bool)
    j = config.color_jitter

    def coin(index, p, enabled):
        return u[..., index] < p if enabled else false

    def span(k, lo, hi):
        return lo + (hi - lo) * u[..., U_FACTORS + k]

    factors = tf.stack(
        [
            span(0, max(0.0, 1 - j.brightness), 1 + j.brightness),
            span(1, max(0.0, 1 - j.contrast), 1 + j.contrast),
            span(2, max(0.0, 1 - j.saturation), 1 + j.saturation),
            span(3, -j.hue, j.hue),
        ],
        axis=-1,
    )
    if j.random_order:
        order = tf.argsort(u[..., U_ORDER : U_ORDER + 4], axis=-1, stable=True)
    else:
        order = tf.broadcast_to(tf.range(4, dtype=tf.int32), tf.concat([tf.shape(key), [4]], 0))
    sig_lo, sig_hi = (float(v) for v in config.blur.sigma)
    return {
        "crop": _crop_box(u, height, width, config.crop),
        "flip": coin(U_FLIP, config.flip.prob, config.flip.enabled),
        "jitter": coin(U_JITTER, j.prob, j.enabled),
        "jitter_factors": factors,
        "jitter_order": order,
        "grayscale": coin(U_GRAY, config.grayscale.prob, config.grayscale.enabled),
        "blur": coin(U_BLUR, float(config.blur.prob[view]), config.blur.enabled),
        "blur_sigma": sig_lo + (sig_hi - sig_lo) * u[..., U_SIGMA],
        "solarize": coin(U_SOLAR, float(config.solarize.prob[view]), config.solarize.enabled),
    }
