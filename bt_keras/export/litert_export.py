"""The LiteRT (TFLite) model: the ``serve_float`` function converted for mobile and edge runtimes.

The ``.tflite`` file has one signature, ``serve_float``, with input ``images``
(NHWC float32, batch resizable at run time) and output ``embedding``, made of
LiteRT built-in ops only (no Flex/Select TF ops, which mobile runtimes
usually lack). Like ONNX, LiteRT cannot decode JPEG: the app preprocesses
itself, following the contract, which travels twice: as
``<name>.preprocessing.json`` beside the model (the file a mobile developer
bundles and reads) and inside the flatbuffer's metadata under
:data:`METADATA_NAME` (so a model file found alone still says what it expects).
The parity gate runs it through ``ai-edge-litert``'s interpreter, the runtime
Android and iOS builds embed; that package is an optional extra
(``pip install 'bt_keras[litert]'``).

Examples:

>>> from bt_keras.contract import make_contract
>>> from bt_keras.export.litert_export import litert_metadata
>>> litert_metadata(make_contract(32), 16, "0" * 64)["signature"]
'serve_float'
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from bt_keras.errors import ExportFailed, one_line
from bt_keras.export.layout import INPUT_FLOAT_KEY, OUTPUT_KEY, require_litert
from bt_keras.export.onnx_export import onnx_metadata
from bt_keras.export.saved_model import serving_functions
from bt_keras.io import atomic_write

SIGNATURE = "serve_float"
METADATA_NAME = "bt_keras.preprocessing"  # a Model.metadata entry: the contract as UTF-8 JSON


def require_interpreter():
    """The LiteRT ``Interpreter`` class, or a one-line :class:`ExportArgumentError` naming the extra.

    Examples:

    >>> callable(require_interpreter())
    True
    """
    require_litert()
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


def litert_metadata(contract, dim: int, weights_sha256: str) -> dict:
    """The contract and names written beside (and into) the ``.tflite`` file: ONNX's metadata plus the signature.

    Args:
        contract: the preprocessing contract.
        dim: the embedding size.
        weights_sha256: the source weights' hash.

    Examples:

    >>> from bt_keras.contract import make_contract
    >>> litert_metadata(make_contract(32), 16, "0" * 64)["preprocessing"]["image_size"]
    32
    """
    meta = onnx_metadata(contract, dim, weights_sha256)
    meta.update(
        signature=SIGNATURE,
        image_size=contract.image_size,
        crop_fraction=contract.crop_fraction,
        embedding_dim=dim,
        preprocessing=json.loads(contract.to_json()),
        runtime="LiteRT (TFLite) built-in ops",
    )
    return meta


def _convert(model, contract, configure=None) -> bytes:
    serve_float, float_spec, _, _ = serving_functions(model, contract)
    # Through a SavedModel, as Keras' own LiteRT export does: the converter then freezes the
    # variables (a concrete function of a Keras 3 model keeps them as resource reads).
    with tempfile.TemporaryDirectory(prefix="bt_litert_") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE, serve_float, input_signature=[float_spec])
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if configure is not None:
            configure(converter)  # int8: quantisation settings (bt_keras.export.quantize)
        try:
            return converter.convert()
        except Exception as e:
            raise ExportFailed(f"LiteRT conversion failed: {_conversion_reason(e)}") from e


def _conversion_reason(e: Exception) -> str:
    """The ops the LiteRT converter could not lower, else its first line."""
    text = str(e)
    ops = sorted({ln.split("'")[1] for ln in text.splitlines() if "op '" in ln and "'" in ln.split("op '", 1)[1]})
    if ops:
        return f"ops not in LiteRT's built-in set: {', '.join(ops[:6])}"
    return one_line(e)[:300]


def _with_metadata(flatbuffer: bytes, metadata: dict) -> bytes:
    """The model with ``metadata`` as JSON in its ``Model.metadata`` list (name :data:`METADATA_NAME`)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(metadata, indent=2).encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(path) -> dict:
    """The contract stored in a ``.tflite`` file by :func:`write_litert` (for checks and tools).

    Args:
        path: the ``.tflite`` file.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == METADATA_NAME:
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    raise KeyError(f"{path}: no {METADATA_NAME} metadata")


def write_litert(model, contract, path: Path, metadata: dict, configure=None) -> Path:
    """Converts the float32 encoder to ``path`` (``.tflite``) and writes ``<name>.preprocessing.json`` beside it.

    Args:
        model: the float32 encoder.
        contract: its preprocessing contract.
        path: the ``.tflite`` file to write.
        metadata: :func:`litert_metadata`.
        configure: called with the ``TFLiteConverter`` before converting (the int8 settings), or ``None``.

    Returns:
        The path of the ``.preprocessing.json`` file.

    Raises:
        ExportFailed: the converter could not lower an op to LiteRT's built-ins.
    """
    data = _with_metadata(_convert(model, contract, configure), metadata)
    path.write_bytes(data)
    sidecar = path.with_suffix(".preprocessing.json")
    atomic_write(sidecar, json.dumps(metadata, indent=2) + "\n")
    return sidecar


def litert_artifact(path: Path, sidecar: Path, root: Path, contract, dim: int) -> dict:
    """The report's ``artifacts.litert`` entry."""
    size = contract.image_size
    return {
        "path": str(path.relative_to(root)),
        "preprocessing": str(sidecar.relative_to(root)),
        "metadata_name": METADATA_NAME,
        "signature": SIGNATURE,
        "ops": "TFLITE_BUILTINS",
        "inputs": {INPUT_FLOAT_KEY: {"dtype": "float32", "shape": ["batch", size, size, 3]}},
        "outputs": {OUTPUT_KEY: {"dtype": "float32", "shape": ["batch", dim]}},
    }


def litert_runner(path: Path, what: str = "converted encoder"):
    """``run(pixels) -> embeddings`` through the LiteRT interpreter, resizing the batch as needed."""
    interpreter_class = require_interpreter()
    try:
        interpreter = interpreter_class(model_path=str(path))
        runner = interpreter.get_signature_runner(SIGNATURE)
    except Exception as e:
        raise ExportFailed(f"the LiteRT interpreter cannot load the {what}: {one_line(e)}") from e
    return lambda pixels: runner(**{INPUT_FLOAT_KEY: pixels})[OUTPUT_KEY]
