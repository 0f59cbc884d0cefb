"""The preprocessing contract: what an encoder expects, built and checked in one place.

Every command that needs a contract (``bt-train`` writing ``preprocessing.json``,
``bt-eval`` and ``bt-export`` reading it, ``DataConfig.eval_dataset``) gets it
from :func:`make_contract` or :func:`resolve_contract`, so there is one set of
defaults (one :func:`default_crop_fraction`) and one policy for command-line
flags that disagree with a recorded contract: they are rejected with a
one-line error, never silently applied. No TensorFlow import here: configs are
checked before TensorFlow loads.

Examples:

>>> from bt_keras.contract import make_contract, resolve_contract
>>> c = make_contract(32)
>>> c.crop_fraction, c.mean == IMAGENET_MEAN
(1.0, True)
>>> resolve_contract(c, image_size=32).image_size
32
>>> resolve_contract(c, image_size=64, where="run/preprocessing.json")
Traceback (most recent call last):
...
bt_keras.errors.UserError: wrong image size: --image-size 64 conflicts with run/preprocessing.json (32); ...
"""

from __future__ import annotations

import dataclasses
import json
import math

from bt_keras.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
VALUE_RANGE = "RGB in [0, 1] before (x - mean) / std"
MAX_IMAGE_PIXELS = 100_000_000
"""Default limit on an image's pixels (height × width), read from its header before decoding.

100 MP holds any real photo (a 61 MP full-frame camera, a 108 MP phone in
binned mode aside) and bounds one decode at 300 MB of uint8 RGB, where a
389 KB PNG of 20000 × 20000 would otherwise need 1.2 GB of pixels and several
GB in flight. The training and evaluation pipelines take it from
``data.max_image_pixels``; the exported ``serving_default`` signature from
``bt-export`` (this default).
"""


def default_crop_fraction(image_size: int) -> float:
    """Centre crop used when none is given: 0.875 from 64 px up, none (1.0) below.

    0.875 (224 of 256) is the standard ImageNet evaluation crop; at CIFAR sizes a
    crop would throw away a large share of a tiny image.

    >>> default_crop_fraction(224), default_crop_fraction(32)
    (0.875, 1.0)
    """
    return 0.875 if image_size >= 64 else 1.0


@dataclasses.dataclass(frozen=True)
class PreprocessingContract:
    """What an encoder expects: written next to every trained encoder.

    Images are RGB, scaled to [0, 1], centre-cropped to a square covering
    ``crop_fraction`` of the shorter side, resized to ``image_size`` and
    normalised with ``(x - mean) / std``; layout NHWC float32.

    Args:
        image_size: side of the square input, in pixels.
        mean: per-channel RGB mean on [0, 1].
        std: per-channel RGB standard deviation on [0, 1].
        crop_fraction: share of the shorter side kept by the centre crop;
            ``None`` takes :func:`default_crop_fraction` of ``image_size``.
        pixel_shuffle_seed: set only for encoders trained with the
            ``data.augment.pixel_shuffle`` ablation: the normalised image's
            pixel positions are then permuted by
            :func:`bt_keras.augment.shuffle.pixel_permutation` of this seed
            (written to JSON only when set, so other contracts are unchanged).

    Examples:

    >>> PreprocessingContract(image_size=224).crop_fraction
    0.875
    """

    image_size: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    crop_fraction: float | None = None
    pixel_shuffle_seed: int | None = None

    def __post_init__(self):
        if self.crop_fraction is None:
            object.__setattr__(self, "crop_fraction", default_crop_fraction(self.image_size))

    def eval_kwargs(self) -> dict:
        """The contract as :func:`~bt_keras.data.eval_dataset`'s keyword arguments (the one mapping)."""
        return {
            "image_size": self.image_size,
            "mean": self.mean,
            "std": self.std,
            "crop_fraction": self.crop_fraction,
            "pixel_shuffle_seed": self.pixel_shuffle_seed,
        }

    def to_json(self) -> str:
        d = {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_fraction": self.crop_fraction,
            "layout": "NHWC",
            "value_range": VALUE_RANGE,
        }
        if self.pixel_shuffle_seed is not None:
            d["pixel_shuffle_seed"] = self.pixel_shuffle_seed
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> PreprocessingContract:
        d = json.loads(text)
        return cls(
            image_size=int(d["image_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            crop_fraction=float(d["crop_fraction"]),
            pixel_shuffle_seed=None if d.get("pixel_shuffle_seed") is None else int(d["pixel_shuffle_seed"]),
        )


def make_contract(
    image_size, mean=None, std=None, crop_fraction=None, pixel_shuffle_seed=None
) -> PreprocessingContract:
    """A validated contract; ``None`` takes the default (ImageNet statistics, :func:`default_crop_fraction`).

    Raises :class:`~bt_keras.errors.UserError` naming the bad value.

    >>> make_contract(32, crop_fraction=2)
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: crop fraction must be in (0, 1], got 2.0
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) and not _is_integer(image_size):
        raise UserError(f"image size must be a positive integer, got {image_size!r}")
    image_size = int(image_size)
    if image_size < 1:
        raise UserError(f"image size must be a positive integer, got {image_size!r}")
    mean = tuple(float(v) for v in (IMAGENET_MEAN if mean is None else mean))
    std = tuple(float(v) for v in (IMAGENET_STD if std is None else std))
    if len(mean) != 3 or len(std) != 3:
        raise UserError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise UserError(f"mean must be finite and std positive, got mean={mean} std={std}")
    crop = default_crop_fraction(image_size) if crop_fraction is None else float(crop_fraction)
    if not 0.0 < crop <= 1.0:
        raise UserError(f"crop fraction must be in (0, 1], got {crop}")
    if pixel_shuffle_seed is not None and (isinstance(pixel_shuffle_seed, bool) or int(pixel_shuffle_seed) < 0):
        raise UserError(f"pixel shuffle seed must be an integer >= 0, got {pixel_shuffle_seed!r}")
    seed = None if pixel_shuffle_seed is None else int(pixel_shuffle_seed)
    return PreprocessingContract(image_size=image_size, mean=mean, std=std, crop_fraction=crop, pixel_shuffle_seed=seed)


def _is_integer(value) -> bool:
    return hasattr(value, "__index__")  # numpy integers


def read_contract(path) -> PreprocessingContract:
    """Loads a ``preprocessing.json`` (local or ``gs://``), as a one-line error if it is unreadable."""
    try:
        if "://" in str(path):
            import tensorflow as tf

            with tf.io.gfile.GFile(str(path)) as f:
                text = f.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        c = PreprocessingContract.from_json(text)
        return make_contract(c.image_size, c.mean, c.std, c.crop_fraction, c.pixel_shuffle_seed)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as e:
        raise UserError(f"cannot read {path}: {' '.join(str(e).split())[:200]}") from None


def resolve_contract(
    recorded: PreprocessingContract | None,
    *,
    image_size=None,
    mean=None,
    std=None,
    crop_fraction=None,
    where: str = "",
) -> PreprocessingContract:
    """The contract to use, from a recorded one (or none) and command-line flags.

    With a recorded contract (a run's or an export's ``preprocessing.json``),
    flags may repeat it but not contradict it: evaluating or exporting an
    encoder with other preprocessing than it was trained with gives wrong
    numbers without any error, so a conflict is a one-line error naming the
    flag and ``where``. Without one, the flags build a contract
    (``image_size`` is then required).

    Args:
        recorded: the contract found next to the encoder, or ``None``.
        image_size, mean, std, crop_fraction: values given on the command
            line (``None`` when not given).
        where: the recorded contract's location, for messages.
    """
    flags = {"image_size": image_size, "mean": mean, "std": std, "crop_fraction": crop_fraction}
    if recorded is None:
        if image_size is None:
            raise UserError(
                f"no preprocessing contract found{' in ' + where if where else ''}; pass --image-size "
                "(and --mean/--std/--crop-fraction if they differ from the defaults)"
            )
        return make_contract(**flags)
    for key, value in flags.items():
        if value is None:
            continue
        have = getattr(recorded, key)
        if key in ("mean", "std"):
            same = len(value) == len(have) and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(value, have))
        else:
            same = float(value) == float(have)
        if not same:
            shown = " ".join(f"{v:g}" for v in value) if key in ("mean", "std") else f"{value:g}"
            was = " ".join(f"{v:g}" for v in have) if key in ("mean", "std") else f"{have:g}"
            what = "wrong image size: " if key == "image_size" else ""
            raise UserError(
                f"{what}--{key.replace('_', '-')} {shown} conflicts with {where or 'the recorded contract'} ({was}); "
                "drop the flag or re-export"
            )
    return recorded
