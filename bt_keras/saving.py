"""Saving and loading trained encoders: a ``.keras`` file, a run directory or an exported SavedModel.

:func:`save_portable_encoder` writes the encoder a run ends with: a float32
copy (:func:`portable_encoder`) whose layers are all Keras built-ins, so plain
``keras.saving.load_model`` loads it without ``bt_keras``, and it returns
float32 embeddings whatever precision training used. :func:`load_encoder` is
the one loader of ``.keras`` encoders (safe mode) for every command, old files
with ``FusedBatchNormalization`` layers included; :func:`load_frozen_encoder`
gives a :class:`FrozenEncoder`, an encoder in inference mode together with its
preprocessing contract, from whichever of the three an evaluation starts from.
The contract comes from the recorded ``preprocessing.json``; flags that
contradict it are rejected (:func:`bt_keras.contract.resolve_contract`).

Examples:

>>> from bt_keras.saving import find_saved_model
>>> find_saved_model("/nonexistent")
Traceback (most recent call last):
...
bt_keras.errors.UserError: --saved-model /nonexistent: no saved_model.pb there, ...
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from bt_keras.contract import PreprocessingContract, make_contract, resolve_contract
from bt_keras.errors import ExportArgumentError, UserError, one_line, short_repr
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


# A .keras archive's members, uncompressed: Keras reads config.json and metadata.json whole into memory
# (a 16 MB file can hold a 3.5 GiB config.json); the weights can be large, but not a thousand times
# their compressed size (float weights hardly compress).
MAX_KERAS_JSON_BYTES = 64 * 2**20
MAX_KERAS_TOTAL_BYTES = 64 * 2**30
MAX_KERAS_RATIO = 1000


_H5_SLACK_BYTES = 2**20  # headers and padding: what a weights file may declare beyond its own size


def check_h5_sizes(source, where: str, size: int) -> None:
    """Refuses an HDF5 weights file whose datasets declare more bytes than the file holds, before any is read.

    The one check in front of every weights reader (``.keras`` files, checkpoints,
    ``model.init_weights``, KerasHub presets). Keras writes each variable as a
    plain, uncompressed dataset, so the declared sizes of a file's datasets add
    up to at most the file's own size; a gzip-chunked dataset (or one with no
    storage) can declare gigabytes in a few kilobytes, and reading it allocates
    them all. Only the datasets' shapes and types are read here.

    Args:
        source: a local path or a seekable binary file (a ``.keras`` archive's member).
        where: what to name in the message (``cannot load model.keras: its 'model.weights.h5'``).
        size: the file's size in bytes.

    Raises:
        UserError: a dataset declares more than the file can hold (one line, naming it).

    Examples:

    >>> import h5py, numpy as np, tempfile, os
    >>> path = tempfile.mktemp(suffix=".weights.h5")
    >>> with h5py.File(path, "w") as f:
    ...     _ = f.create_dataset("w", shape=(60000, 60000), dtype="f4", chunks=(100, 100), compression="gzip")
    >>> check_h5_sizes(path, "x.weights.h5", os.path.getsize(path))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: x.weights.h5: its dataset 'w' declares (60000, 60000) float32 (14,400,000,000 bytes)...
    """
    import h5py
    import numpy as np

    try:
        f = h5py.File(source, "r")
    except Exception:  # noqa: BLE001 - not HDF5 / truncated: the reader's own message says so
        return
    total, limit = 0, int(size) + _H5_SLACK_BYTES
    with f:
        datasets = []
        f.visititems(lambda name, obj: datasets.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
        for name, ds in datasets:
            declared = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize if ds.shape else ds.dtype.itemsize
            total += declared
            if total > limit:
                raise UserError(
                    f"{where}: its dataset {short_repr(name, 60)} declares {ds.shape} {ds.dtype} ({declared:,} bytes), "
                    f"more than the file's {size:,} bytes hold; refusing to read it"
                )


def check_keras_archive(path) -> None:
    """Checks a ``.keras`` file's zip directory before Keras reads it: a zip, with bounded member sizes.

    The one guard in front of every ``.keras`` load (:func:`load_encoder`).
    Only the central directory is read, nothing is decompressed.

    Args:
        path: the local ``.keras`` file.

    Raises:
        ExportArgumentError: not a zip archive, or a member larger than the
            limits (JSON members over ``MAX_KERAS_JSON_BYTES``, any member over
            ``MAX_KERAS_RATIO`` times its compressed size, or over
            ``MAX_KERAS_TOTAL_BYTES`` in all).

    Examples:

    >>> import tempfile, zipfile
    >>> bomb = tempfile.mktemp(suffix=".keras")
    >>> with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
    ...     z.writestr("config.json", b" " * (65 * 2**20))
    >>> check_keras_archive(bomb)
    Traceback (most recent call last):
    ...
    bt_keras.errors.ExportArgumentError: cannot load ...: its 'config.json' is 68157440 bytes uncompressed ...
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile:
        raise ExportArgumentError(f"cannot load {path}: not a .keras archive (not a zip file)") from None
    except OSError as e:
        raise ExportArgumentError(f"cannot load {path}: {one_line(e)}") from None
    total = 0
    for m in members:
        total += m.file_size
        too_big = m.filename.endswith(".json") and m.file_size > MAX_KERAS_JSON_BYTES
        if too_big or m.file_size > MAX_KERAS_RATIO * max(m.compress_size, 2**20):
            raise ExportArgumentError(
                f"cannot load {path}: its {short_repr(m.filename, 60)} is {m.file_size} bytes uncompressed "
                f"({m.compress_size} compressed), more than a .keras file holds; refusing to read it"
            )
    if total > MAX_KERAS_TOTAL_BYTES:
        raise ExportArgumentError(f"cannot load {path}: {total} bytes uncompressed, more than a .keras file holds")
    for m in members:
        if m.filename.endswith(".h5"):
            with zipfile.ZipFile(path) as archive, archive.open(m) as member:
                try:
                    check_h5_sizes(member, f"cannot load {path}: {short_repr(m.filename, 60)}", m.file_size)
                except UserError as e:
                    raise ExportArgumentError(str(e)) from None


def keras_file_image_size(path) -> int | None:
    """The image side a ``.keras`` file's model takes when its input is static and square, else ``None``.

    Read from the archive's ``config.json`` without importing Keras or TensorFlow
    (``bt-export --encoder`` uses it when no ``--image-size`` or contract is given).

    Args:
        path: the ``.keras`` file.

    Examples:

    >>> import keras, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "encoder.keras")
    >>> keras.Sequential([keras.Input((24, 24, 3)), keras.layers.Flatten()]).save(path)
    >>> keras_file_image_size(path)
    24
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo("config.json").file_size > MAX_KERAS_JSON_BYTES:
                return None
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    try:  # a best-effort read of any JSON: a shape it does not expect is no size, never a traceback
        return _static_square_side(config)
    except (AttributeError, TypeError, IndexError, KeyError):
        return None


def _static_square_side(config) -> int | None:
    """:func:`keras_file_image_size` of a parsed ``config.json``."""
    model = config.get("config", {}) if isinstance(config, dict) else {}
    layers = model.get("layers") or []
    entries = model.get("input_layers") or []
    if entries and isinstance(entries[0], str):
        entries = [entries]  # a single input is stored flat: [name, 0, 0]
    wanted = {entry[0] for entry in entries if isinstance(entry, list) and entry}
    shapes = [
        layer.get("config", {}).get("batch_shape")
        for layer in layers
        if layer.get("class_name") == "InputLayer" and (not wanted or layer.get("config", {}).get("name") in wanted)
    ]
    if len(shapes) != 1 or not isinstance(shapes[0], list) or len(shapes[0]) != 4:
        return None
    height, width = shapes[0][1:3]
    return height if isinstance(height, int) and height == width else None


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


class FrozenEncoder:
    """A frozen feature extractor with its preprocessing contract.

    ``encoder(images, training=False)`` → float32 features in inference mode,
    whatever the origin: a Keras model (``model`` is set) or an exported
    SavedModel's ``serve_float`` signature.

    Args:
        fn: ``fn(images)`` → features.
        contract: the :class:`~bt_keras.contract.PreprocessingContract` of its inputs.
        origin: where it was loaded from (recorded in reports).
        model: the Keras model, if any.
        keep: an object that must outlive ``fn`` (the loaded SavedModel).

    Examples:

    >>> import keras
    >>> from bt_keras.contract import PreprocessingContract
    >>> enc = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])
    >>> FrozenEncoder.from_keras(enc, PreprocessingContract(image_size=8)).contract.image_size
    8
    """

    def __init__(self, fn, contract, origin: str, model=None, keep=None, numpy_fn=None):
        self._fn = fn
        self.contract = contract
        self.origin = origin
        self.model = model
        self._keep = keep  # the loaded SavedModel must outlive its signature
        # Runtimes outside TensorFlow (ONNX Runtime) take NumPy arrays and cannot be traced.
        self.numpy_fn = numpy_fn

    @classmethod
    def from_keras(cls, model, contract, origin: str = "keras model"):
        return cls(lambda x: model(x, training=False), contract, origin, model=model)

    def __call__(self, images, training=False):
        import tensorflow as tf

        if training:
            raise ValueError("a FrozenEncoder only runs in inference mode")
        return tf.cast(self._fn(images), tf.float32)


def find_saved_model(path: str) -> str:
    """The SavedModel directory under ``path``.

    That is ``path`` itself, the highest version of a TF Serving model base
    path, or ``saved_model/<name>/<version>`` of a ``bt-export`` output directory.

    Args:
        path: local or ``gs://`` directory.

    Examples:

    >>> find_saved_model("/nonexistent")
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: --saved-model /nonexistent: no saved_model.pb there, ...
    """
    import tensorflow as tf

    path = path.rstrip("/")

    def versions(base):
        found = tf.io.gfile.glob(base + "/*/saved_model.pb")
        nums = [(int(p.split("/")[-2]), p.rsplit("/", 1)[0]) for p in found if p.split("/")[-2].isdigit()]
        return max(nums)[1] if nums else None

    if tf.io.gfile.exists(path + "/saved_model.pb"):
        return path
    best = versions(path)
    if best:
        return best
    names = sorted({p.split("/")[-3] for p in tf.io.gfile.glob(path + "/saved_model/*/*/saved_model.pb")})
    if len(names) > 1:
        raise UserError(
            f"--saved-model {path}: several models ({', '.join(names)}); pass one of {path}/saved_model/<name>"
        )
    if names:
        return versions(f"{path}/saved_model/{names[0]}")
    raise UserError(f"--saved-model {path}: no saved_model.pb there, in <version>/ or in saved_model/<name>/<version>/")


def _onnx_encoder(path: str, flags: dict) -> FrozenEncoder:
    """An ONNX model from ``bt-export`` in ONNX Runtime, with the contract in its ``metadata_props``."""
    import numpy as np

    if not os.path.isfile(path):
        raise UserError(f"--onnx {path}: no such file")
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
        raise UserError(f"--onnx {path}: ONNX Runtime cannot load it: {one_line(e)}") from None
    meta = session.get_modelmeta().custom_metadata_map
    recorded = None
    if "preprocessing" in meta:
        try:
            c = PreprocessingContract.from_json(meta["preprocessing"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"--onnx {path}: unreadable preprocessing metadata: {one_line(e)}") from None
        recorded = make_contract(c.image_size, c.mean, c.std, c.crop_fraction, c.pixel_shuffle_seed)
    contract = resolve_contract(recorded, where=f"{path} metadata", **flags)
    input_name = meta.get("input_name", session.get_inputs()[0].name)
    output_name = meta.get("output_name", session.get_outputs()[0].name)
    _check_onnx_shapes(session, input_name, output_name, path)

    def run(images):
        batch = np.ascontiguousarray(np.asarray(images), dtype=np.float32)
        return np.asarray(session.run([output_name], {input_name: batch})[0], np.float32)

    return FrozenEncoder(run, contract, f"onnx:{path}", keep=session, numpy_fn=run)


def _check_onnx_shapes(session, input_name: str, output_name: str, path: str) -> None:
    """Refuses an ONNX model that does not map ``[batch, S, S, 3]`` (any batch) to ``[batch, dim]``.

    Read from the graph's declared shapes, before anything runs: a 4-D output
    or a batch fixed at 1 would otherwise fail later with ONNX Runtime's traceback.

    Args:
        session: the ``onnxruntime.InferenceSession``.
        input_name, output_name: the names the metadata gives (or the first ones).
        path: the model's path, for the message.
    """
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    shape_in, shape_out = inputs.get(input_name), outputs.get(output_name)
    if shape_in is None or shape_out is None:
        raise UserError(f"--onnx {path}: no input {input_name!r} or output {output_name!r} in the model")
    if len(shape_in) != 4 or len(shape_out) != 2 or isinstance(shape_in[0], int):
        raise UserError(
            f"--onnx {path}: expected images [batch, S, S, 3] (any batch) to embeddings [batch, dim], "
            f"the model maps {shape_in} to {shape_out}"
        )


def _recorded_contract(path: str):
    """The contract in a ``preprocessing.json`` (a run's, or an export's with provenance), or ``None``."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            meta = json.loads(f.read())
        c = PreprocessingContract.from_json(json.dumps(meta.get("preprocessing", meta)))
    except KeyError as e:
        raise UserError(f"cannot read {path}: no {e} in it") from None
    except (OSError, ValueError, TypeError, AttributeError, ArithmeticError) as e:
        raise UserError(f"cannot read {path}: {one_line(e)}") from None
    return make_contract(c.image_size, c.mean, c.std, c.crop_fraction, c.pixel_shuffle_seed)


def load_frozen_encoder(
    run: str | None = None,
    encoder: str | None = None,
    saved_model: str | None = None,
    *,
    onnx: str | None = None,
    image_size=None,
    mean=None,
    std=None,
    crop_fraction=None,
) -> FrozenEncoder:
    """Loads exactly one of a run directory, a ``.keras`` encoder, an exported SavedModel or ONNX model.

    A run is ``RUN/encoder.keras`` + ``RUN/preprocessing.json``; a ``.keras``
    encoder takes the contract from a ``preprocessing.json`` next to it, or
    from the keyword arguments; a SavedModel from ``bt-export`` is used
    through its ``serve_float`` signature with the contract in
    ``assets.extra/preprocessing.json``; an ONNX model from ``bt-export``
    runs in ONNX Runtime with the contract of its ``metadata_props``
    (``numpy_fn`` is set: it takes NumPy arrays). Keyword arguments may repeat a
    recorded contract but not contradict it (a one-line :class:`UserError`).

    Args:
        run, encoder, saved_model, onnx: where to load from (exactly one).
        image_size, mean, std, crop_fraction: the contract, when none is recorded.

    Examples:

    >>> load_frozen_encoder(run="/nonexistent")
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: --run /nonexistent: no encoder.keras there (is the run finished?)
    """
    import tensorflow as tf

    if sum(v is not None for v in (run, encoder, saved_model, onnx)) != 1:
        raise UserError("give exactly one of --run, --encoder, --saved-model" + (", --onnx" if onnx else ""))
    flags = dict(image_size=image_size, mean=mean, std=std, crop_fraction=crop_fraction)
    if onnx is not None:
        return _onnx_encoder(onnx, flags)
    if saved_model is not None:
        sm_dir = find_saved_model(saved_model)
        try:
            loaded = tf.saved_model.load(sm_dir)
        except (OSError, ValueError, tf.errors.OpError) as e:  # a corrupt or truncated saved_model.pb
            raise UserError(f"--saved-model {sm_dir}: cannot load it: {one_line(e)}") from None
        if "serve_float" not in loaded.signatures:
            raise UserError(f"--saved-model {sm_dir}: no 'serve_float' signature (export it with bt-export)")
        sig = loaded.signatures["serve_float"]
        out_key = next(iter(sig.structured_outputs))
        where = sm_dir + "/assets.extra/preprocessing.json"
        contract = resolve_contract(_recorded_contract(where), where=where, **flags)
        frozen = FrozenEncoder(lambda x: sig(images=x)[out_key], contract, f"saved_model:{sm_dir}", keep=loaded)
        return _checked_embedding(frozen)

    path = encoder
    if run is not None:
        path = run.rstrip("/") + "/encoder.keras"
        if not tf.io.gfile.exists(path):
            raise UserError(f"--run {run}: no encoder.keras there (is the run finished?)")
    elif not tf.io.gfile.exists(path):
        raise UserError(f"--encoder {path}: no such file")
    where = os.path.join(os.path.dirname(path), "preprocessing.json")
    contract = resolve_contract(_recorded_contract(where), where=where, **flags)
    return _checked_embedding(FrozenEncoder.from_keras(load_encoder(path), contract, origin=path))


def _checked_embedding(frozen: FrozenEncoder) -> FrozenEncoder:
    """``frozen``, after the check ``bt-export`` makes: ``[B, S, S, 3]`` images map to ``[B, dim]``."""
    from bt_keras.export.checks import embedding_dim

    try:
        embedding_dim(frozen, frozen.contract.image_size)
    except UserError as e:
        raise UserError(f"{frozen.origin}: {e}") from None
    return frozen
