"""Augmentation settings: frozen dataclasses, presets and validation, without TensorFlow.

An :class:`AugmentConfig` is validated and resolved (every ``None`` replaced
by its preset's value) once, when it is built, into an immutable, hashable
value: everything downstream (the pixel program's cache, the data pipeline,
``DataConfig.mean``) reads the resolved fields and never resolves again. No
TensorFlow or NumPy import here, so a typo in a YAML file is reported before
TensorFlow loads.

Examples:

>>> from bt_keras.augment.config import AugmentConfig, BlurConfig, get_preset
>>> cfg = AugmentConfig(preset="imagenet", blur=BlurConfig(prob=(1.0, 0.5)))
>>> cfg.blur.prob, cfg.blur.sigma, cfg == get_preset("imagenet", blur={"prob": (1.0, 0.5)})
((1.0, 0.5), (0.1, 2.0), True)
>>> len({cfg, get_preset("imagenet", blur={"prob": [1.0, 0.5]})})  # hashable, equal by value
1
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bt_keras.contract import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from bt_keras.errors import AugmentConfigError

__all__ = [
    "AugmentConfig",
    "AugmentConfigError",
    "BlurConfig",
    "ColorJitterConfig",
    "CropConfig",
    "FlipConfig",
    "GrayscaleConfig",
    "PRESETS",
    "PixelShuffleConfig",
    "PRESETS_NAMES",
    "RESIZE_METHODS",
    "SolarizeConfig",
    "get_preset",
    "resolve_augment",
]

RESIZE_METHODS = ("bicubic", "bilinear", "area", "lanczos3", "nearest")
PRESETS_NAMES = ("cifar", "imagenet", "none")
OPS = ("crop", "flip", "color_jitter", "grayscale", "blur", "solarize", "pixel_shuffle")


# Every leaf defaults to None, meaning "the preset's value": a YAML file can
# then name a preset and override single fields without restating the rest.
@dataclass(frozen=True)
class CropConfig:
    """Random resized crop. Disabled: the central square, resized."""

    enabled: bool | None = None
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    method: str | None = None
    antialias: bool | None = None


@dataclass(frozen=True)
class FlipConfig:
    """Horizontal flip."""

    enabled: bool | None = None
    prob: float | None = None


@dataclass(frozen=True)
class ColorJitterConfig:
    """torchvision ``ColorJitter`` semantics, applied as a whole with ``prob``."""

    enabled: bool | None = None
    prob: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    random_order: bool | None = None


@dataclass(frozen=True)
class GrayscaleConfig:
    """Grayscale (ITU-R 601 luma), replicated to three channels."""

    enabled: bool | None = None
    prob: float | None = None


@dataclass(frozen=True)
class BlurConfig:
    """Gaussian blur; ``prob`` is (view A, view B)."""

    enabled: bool | None = None
    prob: tuple[float, float] | None = None
    sigma: tuple[float, float] | None = None
    kernel_fraction: float | None = None


@dataclass(frozen=True)
class SolarizeConfig:
    """Invert values ≥ ``threshold`` (on [0, 1]); ``prob`` is (view A, view B)."""

    enabled: bool | None = None
    prob: tuple[float, float] | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class PixelShuffleConfig:
    """An ablation, off in every preset: one fixed permutation of pixel positions, from ``seed``.

    Applied to the finished views (both, the same permutation) and to every
    evaluation image of the run (:mod:`bt_keras.augment.shuffle`): spatial
    structure is gone, each image's colour histogram is kept exactly.
    """

    enabled: bool | None = None
    seed: int | None = None


@dataclass(frozen=True)
class AugmentConfig:
    """All augmentation settings, resolved against the preset when built.

    Fields given as ``None`` take the preset's value, so the object always
    holds complete, validated settings (frozen and hashable: it keys caches).
    Presets: ``imagenet`` (the paper's recipe, ImageNet mean/std), ``cifar``
    (the same without blur, CIFAR-10 mean/std) and ``none`` (central square
    resized, no augmentation, ImageNet mean/std).

    Args:
        preset: ``cifar``, ``imagenet`` or ``none``.
        crop, flip, color_jitter, grayscale, blur, solarize: the ops' settings
            (unset fields from the preset).
        pixel_shuffle: the pixel-permutation ablation (off in every preset).
        mean, std: RGB normalisation statistics on [0, 1].

    Raises:
        AugmentConfigError: a bad value, as one line naming the field.

    Examples:

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
    pixel_shuffle: PixelShuffleConfig = field(default_factory=PixelShuffleConfig)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        _validate(self)
        # Lists (from Python callers) become tuples: the value must be hashable.
        for name in ("mean", "std"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in OPS:
            object.__setattr__(self, name, _tupled(getattr(self, name)))
        base = PRESETS.get(self.preset) if "PRESETS" in globals() else None
        if base is not None:  # None while the presets themselves are built
            for name, value in _filled(self, base).items():
                object.__setattr__(self, name, value)

    @classmethod
    def from_preset(cls, name: str = "cifar", **overrides) -> AugmentConfig:
        """A preset with overrides: dataclasses, dicts or values.

        >>> AugmentConfig.from_preset("cifar", grayscale={"enabled": False}).grayscale.enabled
        False
        """
        return get_preset(name, **overrides)

    def resolve(self) -> AugmentConfig:
        """The config itself: it was resolved and validated when built (kept for callers).

        >>> cfg = AugmentConfig()
        >>> cfg.resolve() is cfg
        True
        """
        return self


def _tupled(op):
    if not dataclasses.is_dataclass(op):
        return op
    lists = {f.name: tuple(v) for f in dataclasses.fields(op) if isinstance(v := getattr(op, f.name), list)}
    return dataclasses.replace(op, **lists) if lists else op


def _filled(cfg: AugmentConfig, base: AugmentConfig) -> dict:
    """Fields of ``cfg`` with every None taken from ``base``."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name == "preset":
            continue
        mine, theirs = getattr(cfg, f.name), getattr(base, f.name)
        if dataclasses.is_dataclass(theirs):
            sub = {g.name: getattr(mine, g.name) for g in dataclasses.fields(theirs)}
            out[f.name] = type(theirs)(**{k: getattr(theirs, k) if v is None else v for k, v in sub.items()})
        else:
            out[f.name] = theirs if mine is None else mine
    return out


def get_preset(name: str = "cifar", **overrides) -> AugmentConfig:
    """Preset ``name`` with ``overrides`` applied, resolved.

    An override of a nested op is a dataclass or a dict of its fields; unknown
    fields are errors naming them.

    Args:
        name: a preset name (or an :class:`AugmentConfig`, returned as is
            without overrides).
        **overrides: top-level fields of :class:`AugmentConfig`.

    Examples:

    >>> get_preset("imagenet", blur={"enabled": False}, mean=(0.5, 0.5, 0.5)).blur.enabled
    False
    """
    if isinstance(name, AugmentConfig):
        return name if not overrides else get_preset(name.preset, **overrides)
    if name not in PRESETS_NAMES:
        AugmentConfig(preset=name)  # raises the error naming augment.preset
    known = {f.name for f in dataclasses.fields(AugmentConfig)}
    kwargs = {}
    for key, value in overrides.items():
        if key not in known or key == "preset":
            raise AugmentConfigError(f"augment.{key}: unknown field")
        current = _FIELD_TYPES.get(key)
        if current is not None and isinstance(value, dict):
            names = {g.name for g in dataclasses.fields(current)}
            for k in value:
                if k not in names:
                    raise AugmentConfigError(f"augment.{key}.{k}: unknown field")
            value = current(**value)
        kwargs[key] = value
    return AugmentConfig(preset=name, **kwargs)


def resolve_augment(config) -> AugmentConfig:
    """An :class:`AugmentConfig` from a config, a preset name or None (``cifar``).

    >>> resolve_augment("none").flip.enabled, resolve_augment(None).preset
    (False, 'cifar')
    """
    if config is None:
        return get_preset("cifar")
    if isinstance(config, str):
        return get_preset(config)
    if isinstance(config, AugmentConfig):
        return config
    raise AugmentConfigError(f"augment: expected a preset name or AugmentConfig, got {type(config).__name__}")


def _validate(cfg: AugmentConfig) -> None:
    """Checks every field that is set (None = from the preset) and the preset name."""
    if not isinstance(cfg.preset, str) or cfg.preset not in PRESETS_NAMES:
        raise AugmentConfigError(
            f"augment.preset: unknown preset {cfg.preset!r} (choose from {', '.join(PRESETS_NAMES)})"
        )
    for name in OPS:
        op = getattr(cfg, name)
        if op is None or not dataclasses.is_dataclass(op):
            _fail(name, f"expected a mapping of settings, got {op!r}")
        _check(f"{name}.enabled", op.enabled, _is_bool, "must be true or false")
    for name, check, msg in _CHECKS:
        section, _, leaf = name.rpartition(".")
        _check(name, getattr(getattr(cfg, section) if section else cfg, leaf), check, msg)


def _fail(name, msg):
    raise AugmentConfigError(f"augment.{name}: {msg}")


def _check(name, value, ok, msg):
    if value is not None and not ok(value):
        _fail(name, f"{msg}, got {value!r}")


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_bool(v):
    return isinstance(v, bool)


def _is_prob(v):
    return _number(v) and 0.0 <= v <= 1.0


def _is_pair(v):
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_number(a) for a in v) and v[0] <= v[1]


def _is_view_probs(v):
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_prob(a) for a in v)


def _is_rgb(v):
    return isinstance(v, (tuple, list)) and len(v) == 3 and all(_number(a) for a in v)


_PROB = "must be a probability in [0, 1]"
_BOOL = "must be true or false"
_VIEW_PROBS = "must be [p_view_a, p_view_b], each in [0, 1]"
_POSITIVE_PAIR = "must be [low, high] with 0 < low <= high"
# (field, check, message), in the order they are reported.
_CHECKS = (
    ("crop.scale", lambda v: _is_pair(v) and 0 < v[0] and v[1] <= 1, "must be [low, high] with 0 < low <= high <= 1"),
    ("crop.ratio", lambda v: _is_pair(v) and 0 < v[0], _POSITIVE_PAIR),
    ("crop.method", lambda v: v in RESIZE_METHODS, f"must be one of {', '.join(RESIZE_METHODS)}"),
    ("crop.antialias", _is_bool, _BOOL),
    ("flip.prob", _is_prob, _PROB),
    ("color_jitter.prob", _is_prob, _PROB),
    ("color_jitter.brightness", lambda v: _number(v) and v >= 0, "must be >= 0"),
    ("color_jitter.contrast", lambda v: _number(v) and v >= 0, "must be >= 0"),
    ("color_jitter.saturation", lambda v: _number(v) and v >= 0, "must be >= 0"),
    ("color_jitter.hue", lambda v: _number(v) and 0 <= v <= 0.5, "must be in [0, 0.5]"),
    ("color_jitter.random_order", _is_bool, _BOOL),
    ("grayscale.prob", _is_prob, _PROB),
    ("blur.prob", _is_view_probs, _VIEW_PROBS),
    ("blur.sigma", lambda v: _is_pair(v) and 0 < v[0], _POSITIVE_PAIR),
    ("blur.kernel_fraction", lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1]"),
    ("solarize.prob", _is_view_probs, _VIEW_PROBS),
    ("solarize.threshold", lambda v: _number(v) and 0 <= v <= 1, "must be in [0, 1]"),
    ("pixel_shuffle.seed", lambda v: _number(v) and isinstance(v, int) and v >= 0, "must be an integer >= 0"),
    ("mean", _is_rgb, "must have 3 numbers (R, G, B)"),
    ("std", lambda v: _is_rgb(v) and all(a > 0 for a in v), "must have 3 numbers > 0 (R, G, B)"),
)

_FIELD_TYPES = {
    "crop": CropConfig,
    "flip": FlipConfig,
    "color_jitter": ColorJitterConfig,
    "grayscale": GrayscaleConfig,
    "blur": BlurConfig,
    "solarize": SolarizeConfig,
    "pixel_shuffle": PixelShuffleConfig,
}


def _preset(name, mean, std, blur: bool, enabled: bool = True) -> AugmentConfig:
    on = enabled
    return AugmentConfig(
        preset=name,
        crop=CropConfig(enabled=on, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), method="bicubic", antialias=True),
        flip=FlipConfig(enabled=on, prob=0.5),
        color_jitter=ColorJitterConfig(
            enabled=on, prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, random_order=True
        ),
        grayscale=GrayscaleConfig(enabled=on, prob=0.2),
        blur=BlurConfig(enabled=blur and on, prob=(1.0, 0.1), sigma=(0.1, 2.0), kernel_fraction=0.1),
        solarize=SolarizeConfig(enabled=on, prob=(0.0, 0.2), threshold=0.5),
        pixel_shuffle=PixelShuffleConfig(enabled=False, seed=0),
        mean=tuple(mean),
        std=tuple(std),
    )


PRESETS = {
    "imagenet": _preset("imagenet", IMAGENET_MEAN, IMAGENET_STD, blur=True),
    "cifar": _preset("cifar", CIFAR10_MEAN, CIFAR10_STD, blur=False),
    "none": _preset("none", IMAGENET_MEAN, IMAGENET_STD, blur=False, enabled=False),
}
