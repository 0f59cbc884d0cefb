"""Which encoder a ``model.encoder`` name means, and which ``model.init_weights`` fit it, without Keras.

Config checks (:mod:`bt_keras.config`) and the model builders (:mod:`bt_keras.encoders`,
:mod:`bt_keras.backbones`) read the same names from here, so checking a config never imports
Keras, and a name means one thing everywhere.
"""

from __future__ import annotations

import difflib
import os

from bt_keras.errors import ConfigError
from bt_keras.io import is_remote

# The built-in encoders (``bt_keras.encoders.build_encoder``). Listed here, not
# imported from there, so that checking a config does not import Keras.
ENCODER_NAMES = ("small_cnn", "resnet18_cifar", "resnet18", "resnet34_cifar", "resnet34", "resnet50")
# The models of ``keras.applications`` (Keras 3.10-3.15), for the same reason; tests/test_backbones.py
# checks the list against the installed Keras.
KERAS_APPLICATIONS = (
    *(f"ConvNeXt{s}" for s in ("Base", "Large", "Small", "Tiny", "XLarge")),
    "DenseNet121",
    "DenseNet169",
    "DenseNet201",
    *(f"EfficientNetB{i}" for i in range(8)),
    *(f"EfficientNetV2{s}" for s in ("B0", "B1", "B2", "B3", "L", "M", "S")),
    "InceptionResNetV2",
    "InceptionV3",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Large",
    "MobileNetV3Small",
    "NASNetLarge",
    "NASNetMobile",
    *(f"ResNet{d}{v}" for d in (101, 152, 50) for v in ("", "V2")),
    "VGG16",
    "VGG19",
    "Xception",
)
ENCODER_FAMILIES = ("builtin", "keras.applications", "keras_hub", "file")
_APPLICATIONS_PREFIX = "keras.applications."
_WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".keras")


def encoder_family(name: str) -> tuple[str, str]:
    """``(family, target)`` of a ``model.encoder`` value, checked without importing Keras.

    Families: ``builtin`` (:data:`ENCODER_NAMES`), ``keras.applications``
    (``keras.applications.NAME``, target ``NAME``), ``keras_hub``
    (``keras_hub:PRESET_OR_DIR``) and ``file`` (``file:PATH.keras``).

    Raises:
        ConfigError: ``model.encoder: ...`` naming what is wrong, on one line.

    Examples:

    >>> encoder_family("keras.applications.ConvNeXtTiny")
    ('keras.applications', 'ConvNeXtTiny')
    >>> encoder_family("keras_hub:vit_base_patch16_224_imagenet")
    ('keras_hub', 'vit_base_patch16_224_imagenet')
    >>> encoder_family("keras.applications.ConvNextTiny")
    Traceback (most recent call last):
    ...
    bt_keras.errors.ConfigError: model.encoder: keras.applications has no model 'ConvNextTiny'; did you mean ...?
    """
    if name in ENCODER_NAMES:
        return "builtin", name
    if name.startswith(_APPLICATIONS_PREFIX):
        target = name[len(_APPLICATIONS_PREFIX) :]
        if target not in KERAS_APPLICATIONS:
            close = difflib.get_close_matches(target, KERAS_APPLICATIONS, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see the list in docs/training.md#backbones"
            raise ConfigError(f"model.encoder: keras.applications has no model {target!r}; {hint}")
        return "keras.applications", target
    if name.startswith("keras_hub:"):
        target = name[len("keras_hub:") :]
        if not target:
            raise ConfigError("model.encoder: keras_hub: needs a preset name or a preset directory after the colon")
        local_dir = _looks_like_path(target) and not is_remote(target)
        if local_dir and not os.path.isfile(os.path.join(target, "config.json")):
            raise ConfigError(f"model.encoder: {name}: no KerasHub preset there (no config.json)")
        return "keras_hub", target
    if name.startswith("file:"):
        target = name[len("file:") :]
        if not target.endswith(".keras"):
            raise ConfigError(f"model.encoder: {name}: expected a .keras model file")
        if not is_remote(target) and not os.path.isfile(target):
            raise ConfigError(f"model.encoder: {name}: no such file")
        return "file", target
    raise ConfigError(
        f"model.encoder: unknown encoder {name!r}; choose one of {', '.join(ENCODER_NAMES)}, "
        "keras.applications.NAME, keras_hub:PRESET_OR_DIR or file:PATH.keras"
    )


def _looks_like_path(text: str) -> bool:
    return "/" in text or text.startswith(("~", "."))


def check_init_weights(family: str, init_weights: str | None) -> None:
    """Refuses an initialisation the encoder family cannot take: a one-line ``ConfigError``.

    ``null``: the family's own start (random, or the file's weights for
    ``file:``); ``none``: random; ``imagenet``: the published weights of a
    ``keras.applications`` model or of a KerasHub preset; else a local
    ``.weights.h5``, ``.h5`` (``keras.applications`` only) or ``.keras`` file.

    Examples:

    >>> check_init_weights("builtin", "imagenet")
    Traceback (most recent call last):
    ...
    bt_keras.errors.ConfigError: model.init_weights: imagenet: no published weights for a built-in encoder; ...
    """
    if init_weights in (None, "none"):
        return
    if init_weights == "imagenet":
        if family in ("builtin", "file"):
            what = "a built-in encoder" if family == "builtin" else "a file: encoder (it has its own weights)"
            raise ConfigError(
                f"model.init_weights: imagenet: no published weights for {what}; "
                "use keras.applications.NAME or keras_hub:PRESET, or a weights file"
            )
        return
    if not init_weights.endswith(_WEIGHTS_SUFFIXES):
        raise ConfigError(
            f"model.init_weights: {init_weights!r}: expected imagenet, none, or a .weights.h5 / .keras file"
        )
    if init_weights.endswith(".h5") and not init_weights.endswith(".weights.h5") and family != "keras.applications":
        raise ConfigError(
            f"model.init_weights: {init_weights}: a legacy .h5 file loads into keras.applications models only; "
            "use a .weights.h5 or .keras file"
        )
    if not is_remote(init_weights) and not os.path.isfile(init_weights):
        raise ConfigError(f"model.init_weights: {init_weights}: no such file")
