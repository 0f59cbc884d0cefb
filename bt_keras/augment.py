"""Barlow Twins view augmentations in pure, stateless TensorFlow.

The recipe is the paper's (official PyTorch code): random resized crop (area
scale (0.08, 1), aspect ratio (3/4, 4/3), bicubic), horizontal flip p=0.5,
colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, the four
in random order) with p=0.8, grayscale p=0.2, Gaussian blur (σ ~ U(0.1, 2),
kernel ≈ 10% of the side) with p=1.0 / 0.1 and solarize with p=0.0 / 0.2 for
view A / view B, then mean/std normalisation.

The work is split in two stages so that the expensive pixel operations run
vectorised over a whole batch while every random choice stays per example:

1. per example (inside ``Dataset.map``): :func:`sample_params` draws all of one
   view's random parameters from a per-example stateless seed, then
   :func:`crop_resize` / :func:`decode_crop_resize` cut and resize the crop
   (for JPEG bytes the crop happens before decoding);
2. per batch (after ``Dataset.batch``): :func:`apply_batch` applies flip,
   jitter, grayscale, blur, solarize and normalisation with the per-example
   parameters carried along in the batch.

Because the parameters are a pure function of (seed, example), the same seed
gives the same views whatever the batch composition or the order in which
parallel workers deliver examples.

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
import math
from dataclasses import dataclass, field
from typing import Optional

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
    "sample_params",
    "crop_resize",
    "decode_crop_resize",
    "apply_batch",
    "augment_pair",
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
# Layout of the uniform draws of one view (one stateless op per view).
_U_AREA, _U_RATIO, _U_TOP, _U_LEFT = (i * _ATTEMPTS for i in range(4))
_U_FLIP = 4 * _ATTEMPTS
_U_JITTER, _U_FACTORS, _U_ORDER = _U_FLIP + 1, _U_FLIP + 2, _U_FLIP + 6
_U_GRAY, _U_BLUR, _U_SIGMA, _U_SOLAR = _U_FLIP + 10, _U_FLIP + 11, _U_FLIP + 12, _U_FLIP + 13
_NUM_UNIFORMS = _U_FLIP + 14


def _crop_box(u, height, width, crop: CropConfig):
    """torchvision ``RandomResizedCrop.get_params`` on uniform draws ``u``."""
    h_f = tf.cast(height, tf.float32)
    w_f = tf.cast(width, tf.float32)
    if not crop.enabled:
        side = tf.minimum(height, width)
        return tf.stack([(height - side) // 2, (width - side) // 2, side, side])
    lo, hi = (float(v) for v in crop.scale)
    log_lo, log_hi = math.log(crop.ratio[0]), math.log(crop.ratio[1])
    area = h_f * w_f * (lo + (hi - lo) * u[_U_AREA : _U_AREA + _ATTEMPTS])
    ratio = tf.exp(log_lo + (log_hi - log_lo) * u[_U_RATIO : _U_RATIO + _ATTEMPTS])
    cw = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    ch = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    ok = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
    cw_i, ch_i = cw[first], ch[first]
    top_i = tf.cast(u[_U_TOP + first] * tf.cast(height - ch_i + 1, tf.float32), tf.int32)
    left_i = tf.cast(u[_U_LEFT + first] * tf.cast(width - cw_i + 1, tf.float32), tf.int32)
    top_i = tf.minimum(top_i, height - ch_i)
    left_i = tf.minimum(left_i, width - cw_i)
    # Fallback when no attempt fits: a central crop with the ratio clamped.
    in_ratio = w_f / h_f
    fw = tf.where(
        in_ratio < crop.ratio[0],
        width,
        tf.where(in_ratio > crop.ratio[1], tf.cast(tf.round(h_f * crop.ratio[1]), tf.int32), width),
    )
    fh = tf.where(
        in_ratio < crop.ratio[0],
        tf.cast(tf.round(w_f / crop.ratio[0]), tf.int32),
        height,
    )
    fw = tf.clip_by_value(fw, 1, width)
    fh = tf.clip_by_value(fh, 1, height)
    fallback = tf.stack([(height - fh) // 2, (width - fw) // 2, fh, fw])
    chosen = tf.stack([top_i, left_i, ch_i, cw_i])
    return tf.where(tf.reduce_any(ok), chosen, fallback)


def sample_params(seed, height, width, config: AugmentConfig, view: int) -> dict:
    """All random parameters of one view of one image, from a stateless seed.

    ``seed`` is a shape-[2] integer tensor; ``height``/``width`` the source
    image's size; ``view`` is 0 (view A) or 1 (view B). Returns scalars and
    small vectors: ``crop`` (top, left, height, width), ``flip``, ``jitter``,
    ``jitter_factors`` (brightness, contrast, saturation, hue),
    ``jitter_order``, ``grayscale``, ``blur``, ``blur_sigma``, ``solarize``.
    Disabled ops give False. Vectorise over seeds with ``tf.vectorized_map``.

    >>> p = sample_params(tf.constant([1, 2]), 32, 32, get_preset("cifar"), view=1)
    >>> sorted(p)[:3]
    ['blur', 'blur_sigma', 'crop']
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    u = tf.random.stateless_uniform([_NUM_UNIFORMS], seed=seed, dtype=tf.float32)
    false = tf.constant(False)
    j = config.color_jitter

    def coin(index, p, enabled):
        return u[index] < p if enabled else false

    def span(k, lo, hi):
        return lo + (hi - lo) * u[_U_FACTORS + k]

    factors = tf.stack(
        [
            span(0, max(0.0, 1 - j.brightness), 1 + j.brightness),
            span(1, max(0.0, 1 - j.contrast), 1 + j.contrast),
            span(2, max(0.0, 1 - j.saturation), 1 + j.saturation),
            span(3, -j.hue, j.hue),
        ]
    )
    if j.random_order:
        order = tf.argsort(u[_U_ORDER : _U_ORDER + 4], stable=True)
    else:
        order = tf.range(4, dtype=tf.int32)
    sig_lo, sig_hi = (float(v) for v in config.blur.sigma)
    return {
        "crop": _crop_box(u, height, width, config.crop),
        "flip": coin(_U_FLIP, config.flip.prob, config.flip.enabled),
        "jitter": coin(_U_JITTER, j.prob, j.enabled),
        "jitter_factors": factors,
        "jitter_order": order,
        "grayscale": coin(_U_GRAY, config.grayscale.prob, config.grayscale.enabled),
        "blur": coin(_U_BLUR, float(config.blur.prob[view]), config.blur.enabled),
        "blur_sigma": sig_lo + (sig_hi - sig_lo) * u[_U_SIGMA],
        "solarize": coin(_U_SOLAR, float(config.solarize.prob[view]), config.solarize.enabled),
    }


def _resize(crop, image_size: int, config: AugmentConfig):
    out = tf.image.resize(
        crop, [image_size, image_size], method=config.crop.method, antialias=bool(config.crop.antialias)
    )
    out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
    out.set_shape([image_size, image_size, 3])
    return out


def crop_resize(image, params: dict, image_size: int, config: AugmentConfig):
    """Cuts ``params["crop"]`` out of a uint8 [H, W, 3] image; uint8 [S, S, 3]."""
    box = params["crop"]
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], 3])
    return _resize(crop, image_size, config)


def decode_crop_resize(jpeg_bytes, params: dict, image_size: int, config: AugmentConfig):
    """JPEG bytes → decode only the crop window (``decode_and_crop_jpeg``) → uint8 [S, S, 3]."""
    crop = tf.io.decode_and_crop_jpeg(jpeg_bytes, params["crop"], channels=3)
    return _resize(crop, image_size, config)


# --------------------------------------------------------------------------- #
# Stage 2: vectorised pixel operations on a batch, per-example parameters.
# --------------------------------------------------------------------------- #

_LUMA = (0.299, 0.587, 0.114)  # torchvision rgb_to_grayscale


def _gray(x):
    return tf.reduce_sum(x * tf.constant(_LUMA, x.dtype), axis=-1, keepdims=True)


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
    hsv = tf.image.rgb_to_hsv(x)
    h = tf.math.floormod(hsv[..., 0] + f[:, None, None], 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([h, hsv[..., 1], hsv[..., 2]], -1)), 0.0, 1.0)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def _color_jitter(x, apply, factors, order):
    """Each example runs its own permutation of the four ops (or none).

    At every one of the four stages the batch is partitioned by the op each
    example needs, so each op runs once per stage on its share of the batch
    (the cost of one sequential jitter, not four).
    """
    n = tf.shape(x)[0]
    ids = tf.range(n)
    for stage in range(4):
        op = tf.where(apply, order[:, stage], 4)
        parts = tf.dynamic_partition(x, op, 5)
        part_ids = tf.dynamic_partition(ids, op, 5)
        outs = [fn(parts[k], tf.gather(factors[:, k], part_ids[k])) for k, fn in enumerate(_JITTER_OPS)]
        outs.append(parts[4])
        x = tf.dynamic_stitch(part_ids, outs)
    return x


def _gaussian_blur(x, sigma, kernel_size: int):
    """Separable Gaussian blur with one σ per example, reflect padding.

    Folding the batch into channels turns per-example kernels into one
    depthwise convolution over the whole batch.
    """
    n = tf.shape(x)[0]
    size_h, size_w = x.shape[1], x.shape[2]
    r = kernel_size // 2
    t = tf.range(-r, r + 1, dtype=tf.float32)
    w = tf.exp(-(t[None, :] ** 2) / (2.0 * sigma[:, None] ** 2))
    w = w / tf.reduce_sum(w, axis=1, keepdims=True)  # [n, k]
    w = tf.reshape(tf.repeat(w, 3, axis=0), [n * 3, kernel_size])  # channel-major per example
    w = tf.transpose(w)  # [k, n*3]
    y = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, size_h, size_w, n * 3])
    y = tf.pad(y, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    y = tf.nn.depthwise_conv2d(y, tf.reshape(w, [1, kernel_size, n * 3, 1]), [1, 1, 1, 1], "VALID")
    y = tf.nn.depthwise_conv2d(y, tf.reshape(w, [kernel_size, 1, n * 3, 1]), [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(y, [size_h, size_w, n, 3]), [2, 0, 1, 3])


def _on_subset(x, mask, fn, *per_example):
    """``fn`` on the examples where ``mask`` holds, scattered back in place."""
    idx = tf.where(mask)
    sub = fn(tf.gather_nd(x, idx), *(tf.gather_nd(a, idx) for a in per_example))
    return tf.tensor_scatter_nd_update(x, idx, sub)


def apply_batch(images, params: dict, config: AugmentConfig, view: int, normalize: bool = True):
    """Flip, jitter, grayscale, blur, solarize and normalise a batch.

    ``images``: uint8 [B, S, S, 3] crops from stage 1; ``params``: the
    batched dict from :func:`sample_params`. Returns float32 [B, S, S, 3],
    ``(x / 255 - mean) / std`` (or on [0, 1] with ``normalize=False``).

    >>> import numpy as np
    >>> cfg = get_preset("cifar")
    >>> seeds = tf.constant([[0, i] for i in range(8)])
    >>> p = tf.vectorized_map(lambda s: sample_params(s, 32, 32, cfg, 0), seeds)
    >>> apply_batch(tf.zeros([8, 32, 32, 3], tf.uint8), p, cfg, view=0).shape
    TensorShape([8, 32, 32, 3])
    """
    static_shape = images.shape
    x = tf.cast(images, tf.float32) / 255.0
    if config.flip.enabled:
        x = tf.where(params["flip"][:, None, None, None], tf.reverse(x, axis=[2]), x)
    if config.color_jitter.enabled:
        x = _color_jitter(x, params["jitter"], params["jitter_factors"], params["jitter_order"])
    if config.grayscale.enabled:
        x = tf.where(params["grayscale"][:, None, None, None], tf.tile(_gray(x), [1, 1, 1, 3]), x)
    if config.blur.enabled and float(config.blur.prob[view]) > 0:
        k = blur_kernel_size(int(static_shape[1]), config.blur.kernel_fraction)
        if k > 1:
            x = _on_subset(x, params["blur"], lambda a, s: _gaussian_blur(a, s, k), params["blur_sigma"])
    if config.solarize.enabled and float(config.solarize.prob[view]) > 0:
        thr = float(config.solarize.threshold)
        x = tf.where(params["solarize"][:, None, None, None] & (x >= thr), 1.0 - x, x)
    if normalize:
        x = (x - tf.constant(config.mean, tf.float32)) / tf.constant(config.std, tf.float32)
    x.set_shape(static_shape)
    return x


def view_seeds(seed):
    """The two views' seeds derived from one example's [2] seed."""
    return (
        tf.random.experimental.stateless_fold_in(seed, 0),
        tf.random.experimental.stateless_fold_in(seed, 1),
    )


def augment_pair(images, seed: int, config=None, image_size: Optional[int] = None, normalize: bool = True):
    """Two augmented views of every image of a uint8 [N, H, W, 3] batch.

    Example ``i`` uses the seed ``(seed, i)``, so results do not depend on
    batching. A convenience for notebooks and tests: training pipelines use
    :func:`bt_keras.data.two_view_dataset`, which runs the same code.
    """
    cfg = _resolved(config)
    images = tf.convert_to_tensor(images, tf.uint8)
    size = int(image_size or images.shape[1])
    n = tf.shape(images)[0]
    seeds = tf.stack([tf.fill([n], tf.cast(seed, tf.int64)), tf.range(n, dtype=tf.int64)], axis=1)
    height, width = tf.shape(images)[1], tf.shape(images)[2]

    def one(args):
        image, s = args
        sa, sb = view_seeds(s)
        pa = sample_params(sa, height, width, cfg, 0)
        pb = sample_params(sb, height, width, cfg, 1)
        return crop_resize(image, pa, size, cfg), crop_resize(image, pb, size, cfg), pa, pb

    spec = sample_params(tf.constant([0, 0], tf.int64), 2, 2, cfg, 0)
    p_sig = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in spec.items()}
    img_sig = tf.TensorSpec([size, size, 3], tf.uint8)
    va, vb, pa, pb = tf.map_fn(one, (images, seeds), fn_output_signature=(img_sig, img_sig, p_sig, p_sig))
    return apply_batch(va, pa, cfg, 0, normalize), apply_batch(vb, pb, cfg, 1, normalize)
