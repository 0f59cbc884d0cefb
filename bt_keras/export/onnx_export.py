"""The ONNX model: the ``serve_float`` function converted with tf2onnx, checked, with its contract.

The graph has one input ``images`` (NHWC float32, dynamic batch) and one
output ``embedding``; the preprocessing contract and provenance are in the
model's ``metadata_props``, since ONNX Runtime users preprocess themselves.
Named ``onnx_export`` so that ``import onnx`` always means the library.

Examples:

>>> from bt_keras.contract import make_contract
>>> from bt_keras.export.onnx_export import onnx_metadata
>>> onnx_metadata(make_contract(32), 16, "0" * 64)["input_name"]
'images'
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from bt_keras.contract import VALUE_RANGE
from bt_keras.errors import ExportFailed, one_line
from bt_keras.export.layout import INPUT_FLOAT_KEY, ONNX_OPSET, OUTPUT_KEY
from bt_keras.export.saved_model import float_embedding, serving_functions
from bt_keras.version import __version__


def onnx_metadata(contract, dim: int, weights_sha256: str) -> dict:
    """The ``metadata_props`` of the ONNX model: the contract, names and provenance.

    Args:
        contract: the preprocessing contract.
        dim: the embedding size.
        weights_sha256: the source weights' hash.

    Examples:

    >>> from bt_keras.contract import make_contract
    >>> onnx_metadata(make_contract(32), 16, "0" * 64)["embedding_dim"]
    '16'
    """
    return {
        "image_size": str(contract.image_size),
        "mean": list(contract.mean),
        "std": list(contract.std),
        "crop_fraction": str(contract.crop_fraction),
        "layout": "NHWC",
        "channel_order": "RGB",
        "value_range": VALUE_RANGE,
        "resize": "centre crop of crop_fraction x shorter side, bilinear resize without antialiasing",
        "input_name": INPUT_FLOAT_KEY,
        "output_name": OUTPUT_KEY,
        "embedding_dim": str(dim),
        "bt_keras_version": __version__,
        "source_weights_sha256": weights_sha256,
        "preprocessing": contract.to_json(),
    }


def onnx_artifact(onnx_path: Path, root: Path, contract, dim: int, metadata: dict) -> dict:
    """The report's ``artifacts.onnx`` entry."""
    return {
        "path": str(onnx_path.relative_to(root)),
        "opset": ONNX_OPSET,
        "inputs": {
            INPUT_FLOAT_KEY: {"dtype": "float32", "shape": ["batch", contract.image_size, contract.image_size, 3]}
        },
        "outputs": {OUTPUT_KEY: {"dtype": "float32", "shape": ["batch", dim]}},
        "metadata_props": metadata,
    }


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx handler for TF's ``Erfc`` (exact GELU: ConvNeXt, ViT), which tf2onnx 1.17 leaves unconverted.

    ``erfc(x) = 1 - erf(x)``. The cancellation for large ``x`` costs absolute
    precision only where GELU multiplies ``erfc`` by a vanishing factor.
    """
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]])
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def _convert(function, float_spec):
    import tf2onnx

    handlers = {"Erfc": (_erfc_as_one_minus_erf, [])}
    proto, _ = tf2onnx.convert.from_function(
        function, input_signature=[float_spec], opset=ONNX_OPSET, custom_op_handlers=handlers
    )
    return proto


def write_onnx(model, contract, path: Path, metadata: dict) -> None:
    """Converts the float32 encoder to ONNX at ``path``, after ``onnx.checker``'s full check.

    Args:
        model: the float32 encoder.
        contract: its preprocessing contract (the input size).
        path: the ``.onnx`` file to write.
        metadata: ``metadata_props`` (:func:`onnx_metadata`).

    Raises:
        ExportFailed: the graph's inputs/outputs are not ``images``/``embedding``, or the checker
            rejects the model (unsupported TF ops are emitted as unknown nodes, not errors).
    """
    import onnx

    _, float_spec, _, _ = serving_functions(model, contract)
    embed = float_embedding(model)
    # serve_float without its empty-batch branch (tf2onnx cannot convert it; ONNX Runtime answers [0, dim] itself).
    function = tf.function(lambda images: {OUTPUT_KEY: embed(images)}, input_signature=[float_spec])
    proto = _convert(function, float_spec)
    graph = proto.graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    if inputs != [INPUT_FLOAT_KEY] and len(inputs) > 1:
        # Tensors a layer computed eagerly and keeps (a ViT's position ids) are captured by the
        # traced function, and tf2onnx turns captures into graph inputs. Freezing folds them into
        # constants; the parity gate still checks the result.
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        frozen = convert_variables_to_constants_v2(function.get_concrete_function())
        proto = _convert(
            tf.function(lambda images: {OUTPUT_KEY: frozen(images)[0]}, input_signature=[float_spec]), float_spec
        )
        graph = proto.graph
        inputs = [i.name for i in graph.input]
        outputs = [o.name for o in graph.output]
    if inputs != [INPUT_FLOAT_KEY] or outputs != [OUTPUT_KEY]:
        # tf2onnx turns eagerly captured tensors into extra graph inputs: a silent contract break.
        raise ExportFailed(
            f"ONNX graph has inputs {inputs} and outputs {outputs}, expected ['images'] and ['embedding']"
        )
    for value in (graph.input[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    proto.doc_string = f"bt_keras {__version__} encoder: NHWC float32 preprocessed images -> embedding"
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # unsupported TF ops are emitted as unknown nodes, not conversion errors
        raise ExportFailed(f"ONNX checker rejected the converted encoder: {one_line(e)}") from e
    onnx.save(proto, str(path))
