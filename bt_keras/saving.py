"""Saving and loading trained encoders as ``.keras`` files, float32 and portable.

:func:`save_portable_encoder` writes the encoder a run ends with: a float32
copy (:func:`portable_encoder`) whose layers are all Keras built-ins, so plain
``keras.saving.load_model`` loads it without ``bt_keras``, and it returns
float32 embeddings whatever precision training used. :func:`load_encoder` is
the one loader of ``.keras`` encoders (safe mode) for every command, old files
with ``FusedBatchNormalization`` layers included; what a file declares is
checked first (:mod:`bt_keras.file_checks`). An encoder with its preprocessing
contract, from a run, a ``.keras`` file, a SavedModel or ONNX, is
:mod:`bt_keras.frozen`'s.

Examples:

>>> from bt_keras.saving import embedding_dim
>>> from bt_keras import encoders
>>> embedding_dim(encoders.small_cnn(widths=(8, 16)), 32)
16
"""

from __future__ import annotations

import logging
from pathlib import Path

from bt_keras.errors import ExportArgumentError, one_line
from bt_keras.file_checks import check_h5_sizes, check_keras_archive, keras_file_image_size  # noqa: F401
from bt_keras.io import atomic_path

logger = logging.getLogger("bt_keras")
_POLICY_CLASSES = ("DTypePolicy", "FloatDTypePolicy")
_REDUCED_DTYPES = ("float16", "bfloat16")


def _all_layers(model) -> list:
    return list(model._flatten_layers(include_self=False, recursive=True))


def is_float32(model) -> bool:
    """Whether every layer computes and stores its variables in float32.

    Examples:

    >>> from bt_keras import encoders
    >>> is_float32(encoders.small_cnn(widths=(8,)))
    True
    """
    for layer in [model, *_all_layers(model)]:
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and (policy.compute_dtype != "float32" or policy.variable_dtype != "float32"):
            return False
    return all(w.dtype == "float32" for w in model.weights if "float" in str(w.dtype))


def non_keras_layers(model) -> list:
    """Class names of the layers (and the model) that ``keras.saving.load_model`` cannot load alone.

    Examples:

    >>> from bt_keras import encoders
    >>> non_keras_layers(encoders.resnet(18, stem="cifar", width=4, input_shape=(32, 32, 3)))
    ['FusedBatchNormalization']
    """
    classes = {type(layer) for layer in [model, *_all_layers(model)]}
    return sorted({c.__name__ for c in classes if not c.__module__.startswith("keras.")})


def _float32_config(obj, plain_batchnorm: bool):
    """A serialized Keras config with every dtype policy float32 (and, if asked, fused BN as Keras BN).

    ``FusedBatchNormalization`` takes exactly Keras ``BatchNormalization``'s
    arguments and variables; ``synchronized`` is dropped (it only changes
    training statistics, and other Keras backends refuse it).
    """
    if isinstance(obj, dict):
        if obj.get("class_name") in _POLICY_CLASSES and isinstance(obj.get("config"), dict):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        if plain_batchnorm and obj.get("class_name") == "FusedBatchNormalization":
            obj = {
                **obj,
                "module": "keras.layers",
                "class_name": "BatchNormalization",
                "registered_name": None,
                "config": {**obj["config"], "synchronized": False},
            }
        out = {}
        for key, value in obj.items():
            reduced = isinstance(value, str) and (value.startswith("mixed_") or value in _REDUCED_DTYPES)
            out[key] = "float32" if key == "dtype" and reduced else _float32_config(value, plain_batchnorm)
        return out
    if isinstance(obj, list):
        return [_float32_config(v, plain_batchnorm) for v in obj]
    return obj


def rebuild_float32(encoder, plain_batchnorm: bool = False):
    """A float32 copy of ``encoder`` rebuilt from its config, with the same weights.

    Every dtype policy becomes float32 (the variables of a mixed-precision
    model are float32 already, so nothing is rounded); with
    ``plain_batchnorm``, ``FusedBatchNormalization`` layers become Keras
    ``BatchNormalization`` layers (same variables, same inference maths).
    The one rebuild used by export (:func:`bt_keras.export.checks.float32_encoder`)
    and by :func:`portable_encoder`.

    Args:
        encoder: a ``keras.Model`` that can be serialized (functional or Sequential).
        plain_batchnorm: also replace the fused BN layers.

    Raises:
        ExportArgumentError: the encoder cannot be rebuilt from its config.

    Examples:

    >>> import keras
    >>> from bt_keras import encoders
    >>> keras.config.set_dtype_policy("mixed_bfloat16")
    >>> enc = encoders.small_cnn(widths=(8,), input_shape=(32, 32, 3))
    >>> keras.config.set_dtype_policy("float32")
    >>> rebuild_float32(enc).compute_dtype
    'float32'
    """
    import keras
    import numpy as np

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        config = _float32_config(keras.saving.serialize_keras_object(encoder), plain_batchnorm)
        rebuilt = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as e:
        raise ExportArgumentError(
            f"cannot rebuild the encoder in float32 from its config ({one_line(e)}); "
            "rebuild it under the float32 policy and load its weights instead"
        ) from e
    finally:
        keras.config.set_dtype_policy(previous)
    weights = encoder.get_weights()
    if len(weights) != len(rebuilt.weights):
        raise ExportArgumentError("the float32 rebuild of the encoder does not have the same weights")
    rebuilt.set_weights(
        [np.asarray(w, np.float32) if np.issubdtype(np.asarray(w).dtype, np.floating) else w for w in weights]
    )
    if not is_float32(rebuilt):
        raise ExportArgumentError("the float32 rebuild of the encoder still computes in reduced precision")
    return rebuilt


def portable_encoder(encoder):
    """A float32 copy of ``encoder`` that plain Keras loads: fused BN layers become ``BatchNormalization``.

    The copy computes in float32 whatever policy the encoder was trained
    under (a ``mixed_bfloat16`` encoder's own outputs are bfloat16, about
    0.6% off), and holds the same weights. ``encoder`` is left alone; if it
    is float32 and already made of Keras layers only, it is returned itself.

    Args:
        encoder: the trained backbone.

    Raises:
        ExportArgumentError: the encoder cannot be rebuilt from its config.

    Examples:

    >>> from bt_keras import encoders
    >>> enc = encoders.resnet(18, stem="cifar", width=4, input_shape=(32, 32, 3))
    >>> non_keras_layers(portable_encoder(enc)), portable_encoder(enc).compute_dtype
    ([], 'float32')
    """
    if is_float32(encoder) and not non_keras_layers(encoder):
        return encoder
    return rebuild_float32(encoder, plain_batchnorm=True)


def save_portable_encoder(encoder, path) -> str:
    """Writes :func:`portable_encoder` of ``encoder`` to the ``.keras`` file ``path``, atomically.

    An encoder that cannot be rebuilt from its config is saved as it is,
    with a warning (training must not lose its result to this step); so is
    one with custom layers of its own, which then needs their code to load.

    Args:
        encoder: the trained backbone.
        path: the ``.keras`` file (local or ``gs://``).

    Examples:

    >>> import keras, os, tempfile
    >>> from bt_keras import encoders
    >>> enc = encoders.resnet(18, stem="cifar", width=4, input_shape=(32, 32, 3))
    >>> path = save_portable_encoder(enc, os.path.join(tempfile.mkdtemp(), "encoder.keras"))
    >>> type(keras.saving.load_model(path).get_layer("stem_bn")).__name__
    'BatchNormalization'
    """
    path = str(path)
    try:
        model = portable_encoder(encoder)
    except ExportArgumentError as e:
        logger.warning(f"{path}: saved as trained, not as a portable float32 copy: {e}")
        model = encoder
    custom = non_keras_layers(model)
    if custom:
        logger.warning(f"{path} holds layers that are not Keras built-ins ({', '.join(custom)}): loading needs them")
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path


def load_encoder(path):
    """Loads an encoder saved with ``encoder.save("x.keras")`` in safe mode.

    Args:
        path: the ``.keras`` file.

    Raises:
        ExportArgumentError: the file is missing, not a ``.keras`` file or cannot be loaded.

    Examples:

    >>> import os, tempfile
    >>> from bt_keras import encoders
    >>> path = os.path.join(tempfile.mkdtemp(), "encoder.keras")
    >>> encoders.small_cnn(widths=(8,)).save(path)
    >>> load_encoder(path).output_shape
    (None, 8)
    """
    import keras

    import bt_keras.layers
    import bt_keras.model  # noqa: F401  (registers BarlowTwins)

    path = Path(path)
    if not path.is_file():
        raise ExportArgumentError(f"encoder file {path} does not exist")
    if path.suffix != ".keras":
        raise ExportArgumentError(f"{path} is not a .keras file")
    check_keras_archive(path)
    if _mentions_keras_hub(path):
        try:
            import keras_hub  # noqa: F401  (registers the KerasHub backbone classes the file holds)
        except ImportError:
            raise ExportArgumentError(
                f"{path} holds a KerasHub backbone: pip install 'bt_keras[keras_hub]' to load it"
            ) from None
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as e:
        raise ExportArgumentError(f"cannot load {path}: {one_line(e)}") from e


def _mentions_keras_hub(path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return b'"keras_hub' in archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


def embedding_dim(model, image_size: int) -> int:
    """The embedding size, from a trial call on zeros (before any file is written).

    Catches encoders that do not map ``[B, S, S, 3]`` to ``[B, D]``.

    Examples:

    >>> from bt_keras import encoders
    >>> embedding_dim(encoders.small_cnn(widths=(8, 16)), 32)
    16
    """
    import keras
    import numpy as np

    trial = keras.ops.convert_to_numpy(model(np.zeros([2, image_size, image_size, 3], np.float32), training=False))
    if trial.ndim != 2 or trial.shape[0] != 2:
        raise ExportArgumentError(f"the encoder maps [2, S, S, 3] to {list(trial.shape)}, expected [2, dim]")
    return int(trial.shape[1])
