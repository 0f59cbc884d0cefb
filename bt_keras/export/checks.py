"""What is checked before an encoder is exported, and its float32 rebuild.

An export serves one NHWC float32 input and one ``[batch, dim]`` output. These
checks refuse what would serve the wrong thing (a pretraining model with its
projector, augmentation layers, a wrong input size) before any file is
written, and :func:`float32_encoder` turns a mixed-precision encoder into the
float32 model that is exported.

Examples:

>>> from bt_keras import encoders
>>> from bt_keras.export.checks import check_encoder
>>> check_encoder(encoders.small_cnn(widths=(8,), input_shape=(32, 32, 3)), 32)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np

from bt_keras.errors import ExportArgumentError, short_repr
from bt_keras.export.layout import MAX_VERSION
from bt_keras.saving import embedding_dim, is_float32, rebuild_float32  # noqa: F401 (embedding_dim: re-exported)

_AUGMENTATION_CLASSES = {"AugMix", "RandAugment", "MixUp", "CutMix", "Solarization"}


def check_version_and_tolerance(version, tolerance) -> None:
    """A positive integer version and a non-negative tolerance, or an :class:`ExportArgumentError`.

    Examples:

    >>> check_version_and_tolerance(1, 1e-4)
    """
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or not 1 <= version <= MAX_VERSION:
        raise ExportArgumentError(f"version must be an integer from 1 to 2**63-1 (int64), got {short_repr(version)}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ExportArgumentError(f"tolerance must be a non-negative number, got {short_repr(tolerance)}")


def _all_layers(model):
    return model._flatten_layers(include_self=False, recursive=True)


def check_encoder(encoder, image_size: int) -> None:
    """Refuses what is not an exportable encoder of ``image_size`` images, naming the reason.

    A pretraining model (encoder + projector) would serve projector outputs,
    augmentation layers would be served too, and the input must be NHWC with
    3 channels of side ``image_size`` (``None`` sides are accepted).

    Args:
        encoder: the model to export.
        image_size: the contract's image side.

    Examples:

    >>> import keras
    >>> check_encoder(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten()]), 16)
    Traceback (most recent call last):
    ...
    bt_keras.errors.ExportArgumentError: wrong image size: the encoder takes 8x8 images, image size is 16
    """
    if not isinstance(encoder, keras.Model):
        raise ExportArgumentError(f"expected a keras.Model encoder, got {type(encoder).__name__}")
    inner = getattr(encoder, "encoder", None)
    if isinstance(inner, keras.Model) and inner is not encoder:
        raise ExportArgumentError(
            f"{type(encoder).__name__} is a pretraining model (encoder + projector); export its .encoder"
        )
    augment = [
        layer.name
        for layer in _all_layers(encoder)
        if type(layer).__name__.startswith("Random") or type(layer).__name__ in _AUGMENTATION_CLASSES
    ]
    if augment:
        raise ExportArgumentError(
            f"the encoder contains augmentation layers ({', '.join(augment)}); export the backbone only"
        )
    _check_signature(encoder, image_size)


def _check_signature(encoder, image_size: int) -> None:
    try:
        inputs, outputs = encoder.inputs, encoder.outputs
    except AttributeError:  # subclassed model never called: checked by the trial call instead
        return
    hint = " (pass the encoder, not the whole pretraining model)" if hasattr(encoder, "projector") else ""
    if inputs is not None:
        if len(inputs) != 1:
            raise ExportArgumentError(f"an encoder has one input, this model has {len(inputs)}{hint}")
        shape = tuple(inputs[0].shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise ExportArgumentError(f"the encoder input must be NHWC with 3 channels, got shape {shape}")
        for side in shape[1:3]:
            if side is not None and side != image_size:
                raise ExportArgumentError(
                    f"wrong image size: the encoder takes {shape[1]}x{shape[2]} images, image size is {image_size}"
                )
    if outputs is not None and (len(outputs) != 1 or len(outputs[0].shape) != 2):
        got = [tuple(o.shape) for o in outputs]
        raise ExportArgumentError(f"an encoder has one output [batch, dim], this model has {got}{hint}")


def policy_names(model) -> list:
    """The dtype policies of the layers that hold weights (recorded in the export report).

    Examples:

    >>> from bt_keras import encoders
    >>> policy_names(encoders.small_cnn(widths=(8,)))
    ['float32']
    """
    names = {
        layer.dtype_policy.name
        for layer in _all_layers(model)
        if getattr(layer, "dtype_policy", None) is not None and layer.weights
    }
    return sorted(names or {model.dtype_policy.name})


def float32_encoder(encoder):
    """The encoder itself if it computes in float32, else a float32 copy with the same weights.

    Mixed-precision encoders (``mixed_float16`` / ``mixed_bfloat16``) are rebuilt
    from their config with every dtype policy set to float32
    (:func:`bt_keras.saving.rebuild_float32`, the same rebuild that makes the
    portable ``encoder.keras`` of a run); the weights (float32 variables under
    mixed precision) are copied over.

    Args:
        encoder: a ``keras.Model``.

    Examples:

    >>> import keras
    >>> from bt_keras import encoders
    >>> keras.config.set_dtype_policy("mixed_bfloat16")
    >>> enc = encoders.small_cnn(widths=(8,), input_shape=(32, 32, 3))
    >>> keras.config.set_dtype_policy("float32")
    >>> float32_encoder(enc).compute_dtype
    'float32'
    """
    if is_float32(encoder):
        return encoder
    return rebuild_float32(encoder)


def weights_sha256(model) -> str:
    """SHA-256 over the model's weights (dtype, shape and bytes, in ``model.weights`` order).

    Args:
        model: a built Keras model.

    Examples:

    >>> from bt_keras import encoders
    >>> len(weights_sha256(encoders.small_cnn(widths=(8,))))
    64
    """
    h = hashlib.sha256()
    for w in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(w.value))
        h.update(f"{value.dtype.str}{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
