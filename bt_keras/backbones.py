"""Encoders from the Keras ecosystem: ``keras.applications``, KerasHub presets and ``.keras`` files.

:func:`build_backbone` turns a ``model.encoder`` value of one of these
families (:func:`bt_keras.config.encoder_family`) into an encoder like the
built-in ones: one NHWC input of ``image_size`` images, one ``[batch, dim]``
output. A backbone that ends in a feature map gets global average pooling; a
Vision Transformer with a class token gives that token, one without gives the
mean of its tokens. A backbone whose input size is fixed must match
``data.image_size`` (one-line :class:`~bt_keras.errors.UserError`).

Batch normalisation follows ``model.sync_batchnorm`` / ``model.fused_batchnorm``
wherever the model can be rebuilt from its config (``keras.applications``,
functional ``.keras`` files): its ``BatchNormalization`` layers become the
package's (same variables, same inference maths). KerasHub backbones keep their
own layers. Under mixed precision the model computes in the global policy.

:func:`load_initial_weights` is ``model.init_weights: PATH`` for every family.

Examples:

>>> from bt_keras.backbones import build_backbone
>>> enc = build_backbone("keras.applications.MobileNetV3Small", 32, encoder_args={"minimalistic": True})
>>> enc.output_shape
(None, 576)
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import keras
from keras import layers

from bt_keras.config import encoder_family
from bt_keras.errors import UserError, one_line

_POLICY_CLASSES = ("DTypePolicy", "FloatDTypePolicy")


def build_backbone(
    name: str,
    image_size: int,
    *,
    encoder_args: dict | None = None,
    init_weights: str | None = None,
    sync_batchnorm: bool = True,
    fused_batchnorm: bool = True,
) -> keras.Model:
    """The encoder named by ``name`` (``keras.applications.NAME``, ``keras_hub:PRESET_OR_DIR``, ``file:PATH.keras``).

    Args:
        name: the ``model.encoder`` value.
        image_size: side of the square input images (``data.image_size``).
        encoder_args: keyword arguments of the ``keras.applications`` constructor
            or of KerasHub's ``Backbone.from_preset`` (``model.encoder_args``).
        init_weights: ``None`` (the family's own start: random, or the file's
            weights), ``"none"`` (random), ``"imagenet"`` (published weights) or a
            weights file (:func:`load_initial_weights`; a legacy ``.h5`` goes to
            the ``keras.applications`` constructor).
        sync_batchnorm, fused_batchnorm: how batch normalisation trains.

    Raises:
        UserError: one line naming ``model.encoder`` / ``model.init_weights``.

    Examples:

    >>> build_backbone("keras.applications.MobileNetV3Small", 16).output_shape
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: model.encoder keras.applications.MobileNetV3Small: Input size must be at least 32x32; ...
    """
    family, target = encoder_family(name)
    args = dict(encoder_args or {})
    if family == "keras.applications":
        model = _application(name, target, image_size, args, init_weights)
        model = _with_package_batchnorm(model, sync_batchnorm, fused_batchnorm)
    elif family == "keras_hub":
        model = _keras_hub(name, target, image_size, args, init_weights)
    elif family == "file":
        model = _from_file(name, target, image_size, init_weights, sync_batchnorm, fused_batchnorm)
    else:
        raise ValueError(f"{name!r} is a built-in encoder: use bt_keras.encoders.build_encoder")
    if init_weights not in (None, "none", "imagenet") and not _legacy_h5(init_weights):
        load_initial_weights(model, init_weights, name)
    return model


def _legacy_h5(path) -> bool:
    return isinstance(path, str) and path.endswith(".h5") and not path.endswith(".weights.h5")


def _application(name, target, image_size, args, init_weights) -> keras.Model:
    import inspect

    constructor = getattr(keras.applications, target)
    if "include_preprocessing" in inspect.signature(constructor).parameters:
        # bt_keras feeds (x/255 - mean)/std (the preprocessing contract), not 0..255 pixels.
        args.setdefault("include_preprocessing", False)
    for key in ("include_top", "input_shape", "input_tensor", "pooling", "weights"):
        if key in args:
            raise UserError(f"model.encoder_args: {key} is set by bt_keras (use model.init_weights for weights)")
    weights = "imagenet" if init_weights == "imagenet" else init_weights if _legacy_h5(init_weights) else None
    images = keras.Input((image_size, image_size, 3), name="images")
    try:
        # Keras prints "Downloading data from URL" before it tries: offline, that line would come
        # before our one-line error; a successful download is summarised by the run's start anyway.
        # MobileNet's constructors also warn, in a multi-line Python warning, that ImageNet weights
        # trained at 224 px are loaded at another size: convolutional weights apply at any size, and
        # the run's summary names the initial weights.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`input_shape` is undefined or non-square", category=UserWarning)
            model = constructor(include_top=False, weights=weights, input_tensor=images, pooling="avg", **args)
    except TypeError as e:
        raise UserError(f"model.encoder_args: {one_line(e)}") from None
    except ValueError as e:
        raise UserError(f"model.encoder {name}: {one_line(e)} (data.image_size is {image_size})") from None
    except Exception as e:
        if weights != "imagenet":
            raise
        raise UserError(
            f"model.init_weights: imagenet: cannot get the ImageNet weights of {target} ({one_line(e, 160)}); "
            "offline, copy the file into ~/.keras/models/ or set model.init_weights to a local weights file"
        ) from None
    # Built on input_tensor, the model's inputs are a list of one: called with a tensor, Keras warns
    # about the structure. The same layers with one plain input and output:
    return keras.Model(model.inputs[0], model.outputs[0], name=model.name)


def _check_preset_weights(target: str, where: str) -> None:
    """Checks a local preset directory's ``*.weights.h5`` (:func:`bt_keras.saving.check_h5_sizes`) before KerasHub.

    Args:
        target: the preset name or directory.
        where: the config key and value, for the message.
    """
    if not os.path.isdir(target):
        return  # a named preset: downloaded and read by KerasHub (kagglehub's cache)
    from bt_keras.saving import check_h5_sizes

    for entry in sorted(os.listdir(target)):
        path = os.path.join(target, entry)
        if entry.endswith(".h5") and os.path.isfile(path):
            check_h5_sizes(path, f"{where}: {entry}", os.path.getsize(path))


def _keras_hub(name, target, image_size, args, init_weights) -> keras.Model:
    try:
        import keras_hub
    except ImportError:
        raise UserError(f"model.encoder {name}: KerasHub is not installed; pip install 'bt_keras[keras_hub]'") from None
    policy = keras.config.dtype_policy().name
    if policy != "float32":
        args.setdefault("dtype", policy)
    args.setdefault("load_weights", init_weights == "imagenet")
    where = "model.init_weights: imagenet" if args["load_weights"] else f"model.encoder {name}"
    if args["load_weights"]:
        _check_preset_weights(target, f"{where}: the KerasHub preset {target}")
    try:
        backbone = keras_hub.models.Backbone.from_preset(target, **args)
    except Exception as e:  # noqa: BLE001  (kagglehub/HF download and preset errors have no common base)
        raise UserError(f"{where}: cannot load the KerasHub preset {target!r}: {one_line(e)}") from None
    return _pooled(backbone, name, image_size, getattr(backbone, "use_class_token", False))


def _from_file(name, path, image_size, init_weights, sync, fused) -> keras.Model:
    from bt_keras.saving import load_encoder

    try:
        model = load_encoder(path)
    except UserError as e:
        raise UserError(f"model.encoder {name}: {e}") from None
    if init_weights == "none":
        model = keras.models.clone_model(model)  # same layers, newly initialised weights
    model = _with_package_batchnorm(model, sync, fused)
    if len(model.outputs) == 1 and len(model.outputs[0].shape) == 2:
        _check_input(model, name, image_size)
        return model
    return _pooled(model, name, image_size, class_token=False)


def _check_input(model, name, image_size) -> None:
    inputs = model.inputs
    if isinstance(inputs, dict) or len(inputs) != 1:
        raise UserError(f"model.encoder {name}: the backbone takes {len(inputs)} inputs; an encoder takes one image")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[-1] not in (3, None):
        raise UserError(f"model.encoder {name}: the backbone input must be NHWC with 3 channels, got {shape}")
    fixed = [s for s in shape[1:3] if s is not None]
    if any(s != image_size for s in fixed):
        raise UserError(
            f"model.encoder {name} takes {shape[1]}x{shape[2]} images but data.image_size is {image_size}; "
            f"set data.image_size: {fixed[0]}"
        )


def _pooled(backbone, name, image_size, class_token) -> keras.Model:
    """``images -> backbone -> a vector``: global average pooling, or the class token of a ViT."""
    _check_input(backbone, name, image_size)
    images = keras.Input((image_size, image_size, 3), name="images")
    x = backbone(images)
    if isinstance(x, (dict, list, tuple)):
        raise UserError(f"model.encoder {name}: the backbone has several outputs; an encoder needs one")
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    elif len(x.shape) == 3 and class_token:
        # Built-in layers only (no Lambda), so the .keras file loads in safe mode: keep token 0.
        x = layers.Flatten(name="class_token")(layers.Cropping1D((0, x.shape[1] - 1), name="first_token")(x))
    elif len(x.shape) == 3:
        x = layers.GlobalAveragePooling1D(name="pool")(x)
    elif len(x.shape) != 2:
        raise UserError(f"model.encoder {name}: cannot pool a backbone output of shape {tuple(x.shape)} to a vector")
    return keras.Model(images, x, name=f"{backbone.name}_encoder")


def _batchnorm_config(obj, sync: bool, fused: bool, policy: str):
    """A serialized config with Keras BN as the package's BN and float dtype policies as ``policy``."""
    if isinstance(obj, dict):
        if obj.get("class_name") in _POLICY_CLASSES and isinstance(obj.get("config"), dict):
            return {**obj, "config": {**obj["config"], "name": policy}}
        if obj.get("class_name") == "BatchNormalization" and obj.get("module") == "keras.layers":
            config = {**obj["config"], "synchronized": sync}
            if fused:
                obj = {**obj, "module": "bt_keras.layers", "class_name": "FusedBatchNormalization"}
                obj["registered_name"] = "bt_keras>FusedBatchNormalization"
            else:
                config["synchronized"] = sync and keras.backend.backend() == "tensorflow"
            obj = {**obj, "config": config}
        return {k: _batchnorm_config(v, sync, fused, policy) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_batchnorm_config(v, sync, fused, policy) for v in obj]
    return obj


def _with_package_batchnorm(model, sync: bool, fused: bool) -> keras.Model:
    """``model`` rebuilt with the package's BN and the global dtype policy, same weights; itself if nothing changes."""
    import bt_keras.layers  # noqa: F401  (registers FusedBatchNormalization)

    policy = keras.config.dtype_policy().name
    has_bn = any(type(layer) is layers.BatchNormalization for layer in model._flatten_layers(include_self=False))
    if not (has_bn and (sync or fused)) and model.dtype_policy.name == policy:
        return model
    try:
        config = _batchnorm_config(keras.saving.serialize_keras_object(model), sync, fused, policy)
        rebuilt = keras.saving.deserialize_keras_object(config, safe_mode=True)
        rebuilt.set_weights(model.get_weights())
    except Exception:  # noqa: BLE001  (a model that does not round-trip through its config trains as it is)
        return model
    return rebuilt


def _load_all_weights(model, path: str) -> None:
    """``model.load_weights(path)``, where a part of the model the file does not cover is an error.

    Keras only warns ("Skipping nested container ... Affected layers will retain their
    freshly-initialized weights") and goes on: a run would start from partly random weights.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Skipping nested container", category=UserWarning)
        model.load_weights(path)


def load_initial_weights(encoder, path: str, name: str = "the encoder") -> None:
    """``model.init_weights: PATH``: loads a ``.weights.h5`` or a ``.keras`` file's weights into ``encoder``.

    A ``.weights.h5`` is what ``encoder.save_weights`` writes (of this encoder,
    or of the bare ``keras.applications`` model inside it); a ``.keras`` file
    (a run's ``encoder.keras``) gives its weights in order, which must match
    the encoder's in number and shapes.

    Args:
        encoder: the freshly built encoder.
        path: the weights file.
        name: the ``model.encoder`` value (for messages).

    Raises:
        UserError: the file does not fit the encoder, on one line.

    Examples:

    >>> import os, tempfile
    >>> from bt_keras import encoders
    >>> a, b = encoders.small_cnn(widths=(4,)), encoders.small_cnn(widths=(4,))
    >>> path = os.path.join(tempfile.mkdtemp(), "init.weights.h5")
    >>> a.save_weights(path)
    >>> load_initial_weights(b, path)
    >>> all((x == y).all() for x, y in zip(a.get_weights(), b.get_weights()))
    True
    """
    where = f"model.init_weights: {path}"
    if not path.endswith(".keras"):
        if os.path.isfile(path):  # local (a remote file is read by Keras as it comes)
            from bt_keras.saving import check_h5_sizes

            check_h5_sizes(path, where, os.path.getsize(path))
        nested = [layer for layer in encoder.layers if isinstance(layer, keras.Model)]
        try:
            _load_all_weights(encoder, path)
            return
        except Exception as e:  # noqa: BLE001  (h5py, shape and structure errors alike)
            first = e
        if len(nested) == 1:
            try:
                _load_all_weights(nested[0], path)
                return
            except Exception:  # noqa: BLE001
                pass
        raise UserError(f"{where} does not fit model.encoder {name}: {one_line(first)[:200]}") from None
    from bt_keras.saving import load_encoder

    try:
        source = load_encoder(path).get_weights()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    target = encoder.weights
    shapes = [tuple(w.shape) for w in target]
    if [tuple(w.shape) for w in source] != shapes:
        raise UserError(
            f"{where} does not fit model.encoder {name}: {len(source)} weights in the file, {len(target)} in "
            "the encoder (or different shapes)"
        )
    encoder.set_weights(source)


def describe_init(model_cfg) -> dict:
    """Where an encoder's first weights came from (a ``ModelConfig``), as recorded in ``summary.json``.

    Examples:

    >>> from bt_keras.config import ModelConfig
    >>> describe_init(ModelConfig(encoder="small_cnn"))
    {'init_weights': None, 'source': 'random'}
    """
    from bt_keras.export.checks import file_sha256

    family, target = encoder_family(model_cfg.encoder)
    init = model_cfg.init_weights
    if init is None:
        source = "file" if family == "file" else "random"
        path = target if family == "file" else None
    else:
        source = {"none": "random", "imagenet": "imagenet"}.get(init, "file")
        path = init if source == "file" else None
    out = {"init_weights": init, "source": source}
    if path is not None and os.path.isfile(path):
        out.update(file=os.path.abspath(path), file_sha256=file_sha256(path))
    return out
