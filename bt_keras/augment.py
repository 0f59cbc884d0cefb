"""Barlow Twins view augmentations in pure, stateless TensorFlow.

The recipe is the paper's (official PyTorch code): random resized crop (area
scale (0.08, 1), aspect ratio (3/4, 4/3), bicubic), horizontal flip p=0.5,
colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, the four
in random order) with p=0.8, grayscale p=0.2, Gaussian blur (σ ~ U(0.1, 2),
kernel ≈ 10% of the side) with p=1.0 / 0.1 and solarize with p=0.0 / 0.2 for
view A / view B, then mean/std normalisation.

Every random choice is per example and stateless: :func:`example_keys` hashes
(seed, epoch key, example id) into an int64 key and :func:`uniforms` turns a
key into independent U[0, 1) draws (splitmix64, plain integer ops, so a whole
batch draws its parameters at once). The same seed therefore gives the same
views whatever the batch composition or the order in which parallel workers
deliver examples. The work runs in two stages:

1. the crop: :func:`sample_params` gives each view's parameters, then
   :func:`crop_resize` (decoded image), :func:`decode_crop_resize` (JPEG
   bytes: only the crop window is decoded) or, for small same-size images,
   :func:`crop_resize_batch` (the whole batch in two matrix products) cut
   and resize the crop;
2. per batch: :func:`apply_batch` runs flip, jitter (each example its own
   random order), grayscale, blur, solarize and normalisation as one XLA
   program that takes each image through the whole recipe while it is in
   cache.

Example:

>>> import numpy as np, tensorflow as tf
>>> from bt_keras import augment
>>> cfg = augment.AugmentConfig.from_preset("cifar")
>>> images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
>>> view_a, view_b = augment.augment_pair(images, seed=0, config=cfg, image_size=32)
>>> view_a.shape, view_a.dtype
(TensorShape([4, 32, 32, 3]), tf.float32)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import tensorflow as tf

from bt_keras.cli import UserError
from bt_keras.preprocess import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "AugmentConfig",
    "BlurConfig",
    "ColorJitterConfig",
    "CropConfig",
    "FlipConfig",
    "GrayscaleConfig",
    "SolarizeConfig",
    "PRESETS",
    "get_preset",
    "example_keys",
    "uniforms",
    "sample_params",
    "crop_resize",
    "crop_resize_batch",
    "decode_crop_resize",
    "apply_batch",
    "augment_pair",
    "augment_views",
    "blur_kernel_size",
]

RESIZE_METHODS = ("bicubic", "bilinear", "area", "lanczos3", "nearest")
PRESETS_NAMES = ("cifar", "imagenet", "none")


class AugmentConfigError(UserError, ValueError):
    """A bad augmentation setting; the message names the field."""


# Every leaf defaults to None, meaning "the preset's value": a YAML file can
# then name a preset and override single fields without restating the rest.
@dataclass
class CropConfig:
    """Random resized crop. Disabled: the central square, resized."""

    enabled: Optional[bool] = None
    scale: Optional[tuple[float, float]] = None
    ratio: Optional[tuple[float, float]] = None
    method: Optional[str] = None
    antialias: Optional[bool] = None


@dataclass
class FlipConfig:
    """Horizontal flip."""

    enabled: Optional[bool] = None
    prob: Optional[float] = None


@dataclass
class ColorJitterConfig:
    """torchvision ``ColorJitter`` semantics, applied as a whole with ``prob``."""

    enabled: Optional[bool] = None
    prob: Optional[float] = None
    brightness: Optional[float] = None
    contrast: Optional[float] = None
    saturation: Optional[float] = None
    hue: Optional[float] = None
    random_order: Optional[bool] = None


@dataclass
class GrayscaleConfig:
    """Grayscale (ITU-R 601 luma), replicated to three channels."""

    enabled: Optional[bool] = None
    prob: Optional[float] = None


@dataclass
class BlurConfig:
    """Gaussian blur; ``prob`` is (view A, view B)."""

    enabled: Optional[bool] = None
    prob: Optional[tuple[float, float]] = None
    sigma: Optional[tuple[float, float]] = None
    kernel_fraction: Optional[float] = None


@dataclass
class SolarizeConfig:
    """Invert values ≥ ``threshold`` (on [0, 1]); ``prob`` is (view A, view B)."""

    enabled: Optional[bool] = None
    prob: Optional[tuple[float, float]] = None
    threshold: Optional[float] = None


@dataclass
class AugmentConfig:
    """All augmentation settings. Fields left at None take the preset's value.

    Presets: ``imagenet`` (the paper's recipe, ImageNet mean/std), ``cifar``
    (the same without blur, CIFAR-10 mean/std) and ``none`` (central square
    resized, no augmentation, ImageNet mean/std).

    >>> cfg = AugmentConfig(preset="imagenet", blur=BlurConfig(prob=(1.0, 0.5))).resolve()
    >>> cfg.blur.prob, cfg.blur.sigma, cfg.solarize.prob
    ((1.0, 0.5), (0.1, 2.0), (0.0, 0.2))
    """

    preset: str = "cifar"
    crop: CropConfig = field(default_factory=CropConfig)
    flip: FlipConfig = field(default_factory=FlipConfig)
    color_jitter: ColorJitterConfig = field(default_factory=ColorJitterConfig)
    grayscale: GrayscaleConfig = field(default_factory=GrayscaleConfig)
    blur: BlurConfig = field(default_factory=BlurConfig)
    solarize: SolarizeConfig = field(default_factory=SolarizeConfig)
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None

    def __post_init__(self):
        _validate(self)

    @classmethod
    def from_preset(cls, name: str = "cifar", **overrides) -> "AugmentConfig":
        """A resolved preset; overrides are dataclasses, dicts or values.

        >>> AugmentConfig.from_preset("cifar", grayscale={"enabled": False}).grayscale.enabled
        False
        """
        return get_preset(name, **overrides)

    def resolve(self) -> "AugmentConfig":
        """A copy with every None replaced by the preset's value, validated."""
        _validate(self)
        base = PRESETS[self.preset]
        kwargs = {"preset": self.preset}
        for f in dataclasses.fields(self):
            if f.name == "preset":
                continue
            mine, theirs = getattr(self, f.name), getattr(base, f.name)
            if dataclasses.is_dataclass(theirs):
                if mine is None:
                    mine = type(theirs)()
                sub = {}
                for g in dataclasses.fields(theirs):
                    v = getattr(mine, g.name)
                    sub[g.name] = getattr(theirs, g.name) if v is None else v
                kwargs[f.name] = type(theirs)(**sub)
            else:
                kwargs[f.name] = theirs if mine is None else mine
        return AugmentConfig(**kwargs)


def get_preset(name: str = "cifar", **overrides) -> AugmentConfig:
    """Resolved preset ``name`` with ``overrides`` applied.

    An override of a nested op is a dataclass or a dict of its fields:

    >>> get_preset("imagenet", blur={"enabled": False}, mean=(0.5, 0.5, 0.5)).blur.enabled
    False
    """
    if isinstance(name, AugmentConfig):
        return name.resolve() if not overrides else get_preset(name.preset, **overrides)
    cfg = AugmentConfig(preset=name)
    known = {f.name for f in dataclasses.fields(AugmentConfig)}
    for key, value in overrides.items():
        if key not in known or key == "preset":
            raise AugmentConfigError(f"augment.{key}: unknown field")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            names = {g.name for g in dataclasses.fields(current)}
            for k in value:
                if k not in names:
                    raise AugmentConfigError(f"augment.{key}.{k}: unknown field")
            value = type(current)(**value)
        setattr(cfg, key, value)
    return cfg.resolve()


def _validate(cfg: AugmentConfig) -> None:
    """Checks every field that is set (None = from the preset) and the preset name."""
    if not isinstance(cfg.preset, str) or cfg.preset not in PRESETS_NAMES:
        raise AugmentConfigError(
            f"augment.preset: unknown preset {cfg.preset!r} (choose from {', '.join(PRESETS_NAMES)})"
        )

    def fail(name, msg):
        raise AugmentConfigError(f"augment.{name}: {msg}")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def check(name, v, ok, msg):
        if v is not None and not ok(v):
            fail(name, f"{msg}, got {v!r}")

    def is_prob(v):
        return number(v) and 0.0 <= v <= 1.0

    def is_pair(v):
        return isinstance(v, (tuple, list)) and len(v) == 2 and all(number(a) for a in v) and v[0] <= v[1]

    def is_view_probs(v):
        return isinstance(v, (tuple, list)) and len(v) == 2 and all(is_prob(a) for a in v)

    for name in ("crop", "flip", "color_jitter", "grayscale", "blur", "solarize"):
        op = getattr(cfg, name)
        if op is None or not dataclasses.is_dataclass(op):
            fail(name, f"expected a mapping of settings, got {op!r}")
        check(f"{name}.enabled", op.enabled, lambda v: isinstance(v, bool), "must be true or false")
    c = cfg.crop
    check("crop.scale", c.scale, lambda v: is_pair(v) and 0 < v[0] and v[1] <= 1, "must be [low, high] with 0 < low <= high <= 1")
    check("crop.ratio", c.ratio, lambda v: is_pair(v) and 0 < v[0], "must be [low, high] with 0 < low <= high")
    check("crop.method", c.method, lambda v: v in RESIZE_METHODS, f"must be one of {', '.join(RESIZE_METHODS)}")
    check("crop.antialias", c.antialias, lambda v: isinstance(v, bool), "must be true or false")
    check("flip.prob", cfg.flip.prob, is_prob, "must be a probability in [0, 1]")
    j = cfg.color_jitter
    check("color_jitter.prob", j.prob, is_prob, "must be a probability in [0, 1]")
    for name in ("brightness", "contrast", "saturation"):
        check(f"color_jitter.{name}", getattr(j, name), lambda v: number(v) and v >= 0, "must be >= 0")
    check("color_jitter.hue", j.hue, lambda v: number(v) and 0 <= v <= 0.5, "must be in [0, 0.5]")
    check("color_jitter.random_order", j.random_order, lambda v: isinstance(v, bool), "must be true or false")
    check("grayscale.prob", cfg.grayscale.prob, is_prob, "must be a probability in [0, 1]")
    b = cfg.blur
    check("blur.prob", b.prob, is_view_probs, "must be [p_view_a, p_view_b], each in [0, 1]")
    check("blur.sigma", b.sigma, lambda v: is_pair(v) and 0 < v[0], "must be [low, high] with 0 < low <= high")
    check("blur.kernel_fraction", b.kernel_fraction, lambda v: number(v) and 0 < v <= 1, "must be in (0, 1]")
    s = cfg.solarize
    check("solarize.prob", s.prob, is_view_probs, "must be [p_view_a, p_view_b], each in [0, 1]")
    check("solarize.threshold", s.threshold, lambda v: number(v) and 0 <= v <= 1, "must be in [0, 1]")
    rgb = lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and all(number(a) for a in v)  # noqa: E731
    check("mean", cfg.mean, rgb, "must have 3 numbers (R, G, B)")
    check("std", cfg.std, lambda v: rgb(v) and all(a > 0 for a in v), "must have 3 numbers > 0 (R, G, B)")


def _preset(mean, std, blur: bool) -> AugmentConfig:
    return AugmentConfig(
        crop=CropConfig(enabled=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), method="bicubic", antialias=True),
        flip=FlipConfig(enabled=True, prob=0.5),
        color_jitter=ColorJitterConfig(
            enabled=True, prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, random_order=True
        ),
        grayscale=GrayscaleConfig(enabled=True, prob=0.2),
        blur=BlurConfig(enabled=blur, prob=(1.0, 0.1), sigma=(0.1, 2.0), kernel_fraction=0.1),
        solarize=SolarizeConfig(enabled=True, prob=(0.0, 0.2), threshold=0.5),
        mean=tuple(mean),
        std=tuple(std),
    )


def _none_preset() -> AugmentConfig:
    cfg = _preset(IMAGENET_MEAN, IMAGENET_STD, blur=False)
    for name in ("crop", "flip", "color_jitter", "grayscale", "blur", "solarize"):
        getattr(cfg, name).enabled = False
    return cfg


PRESETS = {
    "imagenet": _preset(IMAGENET_MEAN, IMAGENET_STD, blur=True),
    "cifar": _preset(CIFAR10_MEAN, CIFAR10_STD, blur=False),
    "none": _none_preset(),
}
for _name, _cfg in PRESETS.items():
    _cfg.preset = _name


def _resolved(config) -> AugmentConfig:
    if config is None:
        return get_preset("cifar")
    if isinstance(config, str):
        return get_preset(config)
    if isinstance(config, AugmentConfig):
        return config.resolve()
    raise AugmentConfigError(f"augment: expected a preset name or AugmentConfig, got {type(config).__name__}")


def blur_kernel_size(image_size: int, kernel_fraction: float = 0.1) -> int:
    """Odd kernel side ≈ ``kernel_fraction`` × ``image_size`` (23 at 224 px, as torchvision)."""
    k = int(round(kernel_fraction * image_size))
    k = max(3, k + 1 - k % 2)
    # Reflect padding needs the half-width below the image side.
    return min(k, 2 * image_size - 1)


# --------------------------------------------------------------------------- #
# Stage 1: per-example parameters and crops.
# --------------------------------------------------------------------------- #

_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before falling back
# Layout of the uniform draws of one view.
_U_AREA, _U_RATIO, _U_TOP, _U_LEFT = (i * _ATTEMPTS for i in range(4))
_U_FLIP = 4 * _ATTEMPTS
_U_JITTER, _U_FACTORS, _U_ORDER = _U_FLIP + 1, _U_FLIP + 2, _U_FLIP + 6
_U_GRAY, _U_BLUR, _U_SIGMA, _U_SOLAR = _U_FLIP + 10, _U_FLIP + 11, _U_FLIP + 12, _U_FLIP + 13
_NUM_UNIFORMS = _U_FLIP + 14

# splitmix64 constants. A counter-based hash gives every example its own random
# stream from (seed, epoch, example id) with plain vectorised integer ops, so a
# whole batch draws its parameters in a handful of ops, and the draws do not
# depend on batch composition or arrival order.
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _mix64(x):
    u64 = lambda v: tf.constant(v, tf.uint64)  # noqa: E731
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(30))) * u64(_MIX1)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(27))) * u64(_MIX2)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(31)))


def _to_u64(x):
    x = tf.convert_to_tensor(x)
    if x.dtype == tf.uint64:
        return x
    return tf.bitcast(tf.cast(x, tf.int64), tf.uint64)


def fold_key(key, data):
    """A new int64 key from ``key`` and integer ``data`` (both any broadcastable shape)."""
    k = _to_u64(key) + _to_u64(data) * tf.constant(_GOLDEN, tf.uint64)
    return tf.bitcast(_mix64(k + tf.constant(_GOLDEN, tf.uint64)), tf.int64)


def example_keys(seed, epoch_key, uid):
    """Int64 key of each example: a hash of (seed, epoch key, example id)."""
    return fold_key(fold_key(fold_key(tf.constant(0x5EED, tf.int64), seed), epoch_key), uid)


def view_key(key, view: int):
    """Each view's own key derived from the example's key."""
    return fold_key(key, 1 + view)


def uniforms(key, n: int):
    """``n`` independent U[0, 1) float32 draws per key: shape ``key.shape + [n]``."""
    k = _to_u64(key)[..., None]
    ctr = tf.range(1, n + 1, dtype=tf.int64)
    x = _mix64(k + _to_u64(ctr) * tf.constant(_GOLDEN, tf.uint64))
    return tf.cast(tf.bitwise.right_shift(x, tf.constant(40, tf.uint64)), tf.float32) * (1.0 / (1 << 24))


def _crop_box(u, height, width, crop: CropConfig):
    """torchvision ``RandomResizedCrop.get_params`` on uniform draws ``u`` [..., n]."""
    if not crop.enabled:
        side = tf.minimum(height, width)
        return tf.stack([(height - side) // 2, (width - side) // 2, side, side], axis=-1)
    h_f = tf.cast(height, tf.float32)[..., None]
    w_f = tf.cast(width, tf.float32)[..., None]
    lo, hi = (float(v) for v in crop.scale)
    log_lo, log_hi = math.log(crop.ratio[0]), math.log(crop.ratio[1])
    area = h_f * w_f * (lo + (hi - lo) * u[..., _U_AREA : _U_AREA + _ATTEMPTS])
    ratio = tf.exp(log_lo + (log_hi - log_lo) * u[..., _U_RATIO : _U_RATIO + _ATTEMPTS])
    cw = tf.round(tf.sqrt(area * ratio))
    ch = tf.round(tf.sqrt(area / ratio))
    ok = (cw > 0) & (cw <= w_f) & (ch > 0) & (ch <= h_f)
    pick = tf.one_hot(tf.argmax(tf.cast(ok, tf.int32), axis=-1), _ATTEMPTS)  # the first box that fits
    cw_i = tf.reduce_sum(cw * pick, -1)
    ch_i = tf.reduce_sum(ch * pick, -1)
    h_f, w_f = h_f[..., 0], w_f[..., 0]
    top_i = tf.floor(tf.reduce_sum(u[..., _U_TOP : _U_TOP + _ATTEMPTS] * pick, -1) * (h_f - ch_i + 1))
    left_i = tf.floor(tf.reduce_sum(u[..., _U_LEFT : _U_LEFT + _ATTEMPTS] * pick, -1) * (w_f - cw_i + 1))
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

    ``key``: int64 example key(s) (:func:`example_keys`), any shape [...];
    ``height``/``width``: the source images' sizes (broadcastable to it);
    ``view``: 0 (view A) or 1 (view B). Returns, per example: ``crop`` (top,
    left, height, width), ``flip``, ``jitter``, ``jitter_factors``
    (brightness, contrast, saturation, hue), ``jitter_order``, ``grayscale``,
    ``blur``, ``blur_sigma``, ``solarize``. Disabled ops give False.

    >>> keys = example_keys(0, 0, tf.range(1000, dtype=tf.int64))
    >>> p = sample_params(keys, 32, 32, get_preset("cifar"), view=1)
    >>> p["crop"].shape, round(float(tf.reduce_mean(tf.cast(p["solarize"], tf.float32))), 1)
    (TensorShape([1000, 4]), 0.2)
    """
    key = tf.convert_to_tensor(key, tf.int64)
    height = tf.broadcast_to(tf.cast(height, tf.int32), tf.shape(key))
    width = tf.broadcast_to(tf.cast(width, tf.int32), tf.shape(key))
    u = uniforms(view_key(key, view), _NUM_UNIFORMS)
    false = tf.zeros(tf.shape(key), tf.bool)
    j = config.color_jitter

    def coin(index, p, enabled):
        return u[..., index] < p if enabled else false

    def span(k, lo, hi):
        return lo + (hi - lo) * u[..., _U_FACTORS + k]

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
        order = tf.argsort(u[..., _U_ORDER : _U_ORDER + 4], axis=-1, stable=True)
    else:
        order = tf.broadcast_to(tf.range(4, dtype=tf.int32), tf.concat([tf.shape(key), [4]], 0))
    sig_lo, sig_hi = (float(v) for v in config.blur.sigma)
    return {
        "crop": _crop_box(u, height, width, config.crop),
        "flip": coin(_U_FLIP, config.flip.prob, config.flip.enabled),
        "jitter": coin(_U_JITTER, j.prob, j.enabled),
        "jitter_factors": factors,
        "jitter_order": order,
        "grayscale": coin(_U_GRAY, config.grayscale.prob, config.grayscale.enabled),
        "blur": coin(_U_BLUR, float(config.blur.prob[view]), config.blur.enabled),
        "blur_sigma": sig_lo + (sig_hi - sig_lo) * u[..., _U_SIGMA],
        "solarize": coin(_U_SOLAR, float(config.solarize.prob[view]), config.solarize.enabled),
    }


def _keys_cubic(t):
    """Keys' cubic convolution kernel, a = -0.5 (TF's and PIL's bicubic)."""
    a = -0.5
    t = tf.abs(t)
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return tf.where(t <= 1.0, near, tf.where(t < 2.0, far, 0.0))


def _triangle(t):
    return tf.maximum(0.0, 1.0 - tf.abs(t))


def _resample_matrix(start, length, in_size: int, out_size: int, method: str, antialias: bool):
    """[B, out_size, in_size] weights resizing the window [start, start+length) of each row.

    Half-pixel centres as ``tf.image.resize``. Taps outside the window are
    dropped and the rest renormalised, and with antialias a window larger
    than the output widens the kernel: ``ScaleAndTranslate``'s rules (the
    antialiased ``tf.image.resize``).
    """
    kernel = _keys_cubic if method == "bicubic" else _triangle
    start = tf.cast(start, tf.float32)[:, None, None]
    length = tf.cast(length, tf.float32)[:, None, None]
    scale = length / out_size
    widen = tf.maximum(scale, 1.0) if antialias else 1.0
    centre = start + (tf.range(out_size, dtype=tf.float32)[None, :, None] + 0.5) * scale - 0.5
    j = tf.range(in_size, dtype=tf.float32)[None, None, :]
    w = kernel((j - centre) / widen)
    w = tf.where((j >= start) & (j < start + length), w, 0.0)
    return w / tf.reduce_sum(w, axis=-1, keepdims=True)


def crop_resize_batch(images, crops, image_size: int, config: AugmentConfig, channels_first: bool = False,
                      flip=None):
    """Every example's crop of a same-size uint8 batch [B, H, W, 3], resized.

    Returns uint8 [B, S, S, 3] (or float32 [B, 3, S, S] with integer values
    0..255 when ``channels_first``). Two batched matrix products with
    per-example resampling matrices replace B separate slice + resize
    kernels: at small sizes (CIFAR) this removes most of the per-image
    overhead. Equals :func:`crop_resize` up to ±1 away from the crop border
    and within a few levels at it (border rule of the antialiased resize).
    ``flip``: optional bool [B], mirrors those examples' outputs.
    """
    method = config.crop.method
    if method not in ("bicubic", "bilinear"):
        raise ValueError(f"crop_resize_batch supports bicubic and bilinear, not {method}")
    h, w = int(images.shape[1]), int(images.shape[2])
    aa = bool(config.crop.antialias)
    rows = _resample_matrix(crops[:, 0], crops[:, 2], h, image_size, method, aa)  # [B, S, H]
    cols = _resample_matrix(crops[:, 1], crops[:, 3], w, image_size, method, aa)  # [B, S, W]
    if flip is not None:  # reversed output columns: the flip costs nothing here
        cols = tf.where(flip[:, None, None], tf.reverse(cols, axis=[1]), cols)
    x = tf.transpose(tf.cast(images, tf.float32), [0, 3, 1, 2])  # [B, 3, H, W]
    x = tf.matmul(rows[:, None], x)  # [B, 3, S, W]
    x = tf.matmul(x, cols[:, None], transpose_b=True)  # [B, 3, S, S]
    x = tf.clip_by_value(tf.round(x), 0.0, 255.0)
    if channels_first:
        x.set_shape([images.shape[0], 3, image_size, image_size])
        return x
    out = tf.cast(tf.transpose(x, [0, 2, 3, 1]), tf.uint8)
    out.set_shape([images.shape[0], image_size, image_size, 3])
    return out


def _resize(crop, image_size: int, config: AugmentConfig):
    method = config.crop.method

    def plain():
        return tf.image.resize(crop, [image_size, image_size], method=method)

    if config.crop.antialias and method != "nearest":
        shape = tf.shape(crop)
        # Antialiasing only changes downscaling; upscaling takes the faster kernel.
        out = tf.cond(
            tf.reduce_any(shape[:2] > image_size),
            lambda: tf.image.resize(crop, [image_size, image_size], method=method, antialias=True),
            plain,
        )
    else:
        out = plain()
    out = tf.saturate_cast(tf.round(out), tf.uint8)
    out.set_shape([image_size, image_size, 3])
    return out


def crop_resize(image, params: dict, image_size: int, config: AugmentConfig):
    """Cuts ``params["crop"]`` out of a uint8 [H, W, 3] image and resizes it; uint8 [S, S, 3].

    The flip is left to :func:`apply_batch`, which does it on the image while
    it is in cache anyway.
    """
    box = params["crop"]
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], 3])
    return _resize(crop, image_size, config)


def decode_crop_resize(jpeg_bytes, params: dict, image_size: int, config: AugmentConfig):
    """JPEG bytes → decode only the crop window (``decode_and_crop_jpeg``) → uint8 [S, S, 3]."""
    crop = tf.io.decode_and_crop_jpeg(jpeg_bytes, params["crop"], channels=3)
    return _resize(crop, image_size, config)


# --------------------------------------------------------------------------- #
# Stage 2: pixel operations, per-example parameters, one XLA program per batch.
# --------------------------------------------------------------------------- #

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
    one loop. On a batch of 128 at 224 px: 64 ms, against 115 ms for a
    depthwise convolution with the batch folded into channels.
    """
    r = kernel_size // 2
    t = tf.range(-r, r + 1, dtype=tf.float32)
    w = tf.exp(-(t[None, :] ** 2) / (2.0 * sigma[:, None] ** 2))
    w = w / tf.reduce_sum(w, axis=1, keepdims=True)  # [n, k]

    def one_pass(y, axis):
        size = y.shape[axis]
        pad = [[0, 0]] * 4
        pad[axis] = [r, r]
        y = tf.pad(y, pad, mode="REFLECT")

        def tap(i):
            begin = [0, 0, 0, 0]
            begin[axis] = i
            shape = [-1, -1, -1, -1]
            shape[axis] = size
            return tf.slice(y, begin, shape)

        weight = lambda i: w[:, i, None, None, None]  # noqa: E731
        out = weight(r) * tap(r)
        for i in range(r):
            out += weight(i) * (tap(i) + tap(kernel_size - 1 - i))
        return out

    return one_pass(one_pass(x, 3), 2)


def apply_batch(images, params: dict, config: AugmentConfig, view: int, normalize: bool = True,
                channels_first: bool = False, flipped: bool = False):
    """Flip, jitter, grayscale, blur, solarize and normalise a batch.

    ``images``: [B, S, S, 3] crops from stage 1, uint8 (or float on 0..255;
    [B, 3, S, S] with ``channels_first``); ``params``: the batched dict from
    :func:`sample_params`. Returns float32 [B, S, S, 3],
    ``(x / 255 - mean) / std`` (or on [0, 1] with ``normalize=False``).
    ``flipped``: the crops already carry their flips
    (:func:`crop_resize_batch` applies ``params["flip"]``).

    >>> cfg = get_preset("cifar")
    >>> p = sample_params(example_keys(0, 0, tf.range(8, dtype=tf.int64)), 32, 32, cfg, 0)
    >>> apply_batch(tf.zeros([8, 32, 32, 3], tf.uint8), p, cfg, view=0).shape
    TensorShape([8, 32, 32, 3])
    """
    side = int(images.shape[2] if channels_first else images.shape[1])
    run = _pixel_fn(config, view, side, bool(normalize), bool(channels_first), bool(flipped))
    x = run(images, {k: params[k] for k in _PIXEL_PARAMS})
    x.set_shape([images.shape[0], side, side, 3])
    return x


_PIXEL_PARAMS = ("flip", "jitter", "jitter_factors", "jitter_order", "grayscale", "blur", "blur_sigma", "solarize")


@functools.lru_cache(maxsize=64)
def _pixel_fn_cached(cfg_repr, view, side, normalize, channels_first, flipped):
    """The XLA program of :func:`apply_batch`: a loop over the batch, the whole recipe per image.

    One image (600 kB at 224 px) stays in cache from its uint8 crop to its
    normalised output, so the batch is read once and written once; every
    "with probability p" is a branch that runs only when taken. On one
    thread, the ImageNet recipe: 1.8× less time than the same ops applied
    to the whole batch at 224 px (there each pass over a float batch costs
    as much as its arithmetic), 1.7× at 32 px.
    """
    config = _PIXEL_CONFIGS[cfg_repr]
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


_PIXEL_CONFIGS: dict = {}


def _pixel_fn(config, view, side, normalize, channels_first, flipped):
    key = repr(config)
    _PIXEL_CONFIGS[key] = config
    return _pixel_fn_cached(key, view, side, normalize, channels_first, flipped)


def augment_pair(images, seed: int, config=None, image_size: Optional[int] = None, normalize: bool = True):
    """Two augmented views of every image of a uint8 [N, H, W, 3] batch.

    Example ``i`` has the key ``example_keys(seed, 0, i)``, so its views do
    not depend on the rest of the batch. A convenience for notebooks and
    tests; training pipelines use :func:`bt_keras.data.two_view_dataset`,
    which runs the same code.
    """
    cfg = _resolved(config)
    images = tf.convert_to_tensor(images, tf.uint8)
    size = int(image_size or images.shape[1])
    key = (repr(cfg), size, bool(normalize))
    if key not in _PAIR_FNS:
        _PAIR_FNS[key] = _make_pair_fn(cfg, size, bool(normalize))
    return _PAIR_FNS[key](images, tf.constant(seed, tf.int64))


_PAIR_FNS: dict = {}


def _make_pair_fn(cfg, size, normalize):
    @tf.function(reduce_retracing=True, autograph=False)
    def run(images, seed):
        n = tf.shape(images)[0]
        keys = example_keys(seed, 0, tf.range(n, dtype=tf.int64))
        return augment_views(lambda i: images[i], keys, tf.shape(images)[1], tf.shape(images)[2], cfg, size, normalize)

    return run


def augment_views(image_at, keys, heights, widths, config: AugmentConfig, image_size: int, normalize: bool = True):
    """``(view_a, view_b)`` of a batch of in-memory images, float32 [B, S, S, 3] each.

    ``image_at(i)``: example ``i``'s uint8 [H, W, 3] image (sizes may
    differ); ``keys``: int64 [B] example keys; ``heights``/``widths``: the
    images' sizes, [B] or scalars. Parameters are drawn for the whole
    batch, each crop is cut and resized on its own, then :func:`apply_batch`.

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
        return (crop_resize(image, {"crop": box_a}, image_size, config),
                crop_resize(image, {"crop": box_b}, image_size, config))

    va, vb = tf.map_fn(crops, (tf.range(tf.shape(keys)[0]), pa["crop"], pb["crop"]),
                       fn_output_signature=(sig, sig), parallel_iterations=16)
    return apply_batch(va, pa, config, 0, normalize), apply_batch(vb, pb, config, 1, normalize)
