"""Barlow Twins view augmentations in pure, stateless TensorFlow.

The recipe is the paper's (official PyTorch code): random resized crop (area
scale (0.08, 1), aspect ratio (3/4, 4/3), bicubic), horizontal flip p=0.5,
colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, the four
in random order) with p=0.8, grayscale p=0.2, Gaussian blur (σ ~ U(0.1, 2),
kernel ≈ 10% of the side) with p=1.0 / 0.1 and solarize with p=0.0 / 0.2 for
view A / view B, then mean/std normalisation.

One module per concern:

- :mod:`~bt_keras.augment.config`: the settings, presets and validation (no TensorFlow);
- :mod:`~bt_keras.augment.rng`: counter-based per-example keys and uniform draws;
- :mod:`~bt_keras.augment.params`: every random parameter of a view, from its key;
- :mod:`~bt_keras.augment.crop`: stage 1, the crop and resize;
- :mod:`~bt_keras.augment.pixel`: stage 2, the per-image XLA pixel program;
- :mod:`~bt_keras.augment.shuffle`: the pixel-shuffle ablation (one fixed permutation);
- :mod:`~bt_keras.augment.views`: :class:`TwoViews`, which the data pipeline
  calls to turn images or bytes into two views.

Names are imported on first use (PEP 562): ``import bt_keras.augment.config``
does not import TensorFlow.

Examples:

>>> import numpy as np
>>> from bt_keras import augment
>>> cfg = augment.AugmentConfig.from_preset("cifar")
>>> images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
>>> view_a, view_b = augment.augment_pair(images, seed=0, config=cfg, image_size=32)
>>> view_a.shape
TensorShape([4, 32, 32, 3])
"""

from __future__ import annotations

from bt_keras._lazy import lazy_namespace
from bt_keras.augment.config import __all__ as _config_names

_CONFIG = tuple(_config_names)  # config.py is TensorFlow-free: importing it here costs nothing
_PIXEL = ("apply_batch", "blur_kernel_size")
# Name -> the submodule that defines it.
_EXPORTS = {
    **{name: "bt_keras.augment.config" for name in _CONFIG},
    **{name: "bt_keras.augment.rng" for name in ("example_keys", "fold_key", "uniforms", "view_key")},
    **{name: "bt_keras.augment.params" for name in ("sample_params", "PIXEL_PARAMS")},
    **{name: "bt_keras.augment.crop" for name in ("crop_resize", "crop_resize_batch", "decode_crop_resize")},
    **{name: "bt_keras.augment.pixel" for name in _PIXEL},
    **{name: "bt_keras.augment.shuffle" for name in ("maybe_shuffle_pixels", "pixel_permutation", "shuffle_pixels")},
    **{name: "bt_keras.augment.views" for name in ("TwoViews", "VECTORISED_MAX_SIDE", "augment_pair", "augment_views")},
}

__all__ = sorted(_EXPORTS)


_SUBMODULES = ("config", "crop", "params", "pixel", "rng", "shuffle", "views")
__getattr__, __dir__ = lazy_namespace(
    __name__,
    _EXPORTS,
    submodules=_SUBMODULES,
)
