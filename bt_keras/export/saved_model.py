"""The TF Serving SavedModel: two signatures over one float32 encoder.

``serving_default`` takes encoded image bytes and runs the evaluation
pipeline's own preprocessing (:func:`bt_keras.preprocess.preprocess_for_eval`),
so what is served is what was evaluated; ``serve_float`` takes preprocessed
NHWC float32 images. Both return ``{"embedding": [batch, dim] float32}``.

Hostile requests get the same answer from the SavedModel and the ONNX model
(which converts ``serve_float``): an image whose header announces more than
``max_pixels`` pixels is an ``INVALID_ARGUMENT`` error for that request,
raised in the graph before anything is decoded; an image with a NaN or
infinite value gets an all-NaN embedding row (the other rows are unaffected);
an empty batch gets an empty ``[0, dim]`` answer.
``assets.extra/`` holds the preprocessing contract (with provenance) and TF
Serving's warm-up requests.

Examples:

>>> from bt_keras.export.saved_model import INPUT_BYTES_KEY, INPUT_FLOAT_KEY, OUTPUT_KEY
>>> INPUT_BYTES_KEY, INPUT_FLOAT_KEY, OUTPUT_KEY
('image_bytes', 'images', 'embedding')
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bt_keras import preprocess
from bt_keras.contract import MAX_IMAGE_PIXELS
from bt_keras.export.layout import BATCHING_FILE, INPUT_BYTES_KEY, INPUT_FLOAT_KEY, OUTPUT_KEY, WARMUP_FILE
from bt_keras.export.warmup import write_warmup_requests
from bt_keras.io import atomic_write

SIGNATURES = ("serving_default", "serve_float")


def float_embedding(model):
    """``images -> embedding`` (float32) where a row with a NaN or infinite input is all NaN.

    The one rule for non-finite inputs in every runtime (ONNX Runtime and
    TensorFlow differ on NaN inside max-pooling and ReLU); the ONNX model is
    this function converted.

    Examples:

    >>> import numpy as np
    >>> from bt_keras import encoders
    >>> x = np.zeros([2, 8, 8, 3], np.float32)
    >>> x[1, 0, 0, 0] = np.nan
    >>> np.isnan(float_embedding(encoders.small_cnn(widths=(4,)))(x).numpy()).all(axis=1).tolist()
    [False, True]
    """

    def embed(images):
        embedding = tf.cast(model(images, training=False), tf.float32)
        finite = tf.reduce_all(tf.math.is_finite(tf.reshape(images, [tf.shape(images)[0], -1])), axis=1)
        return tf.where(finite[:, None], embedding, tf.constant(float("nan"), tf.float32))

    return embed


def serving_functions(model, contract, max_pixels: int = MAX_IMAGE_PIXELS):
    """``(serve_float, float_spec, serve_bytes, bytes_spec)``: the functions every format serves.

    Args:
        model: the float32 encoder.
        contract: its :class:`~bt_keras.contract.PreprocessingContract`.
        max_pixels: ``serve_bytes`` refuses images with more pixels (read from
            the header, before decoding).

    Examples:

    >>> import numpy as np
    >>> from bt_keras import encoders
    >>> from bt_keras.contract import make_contract
    >>> serve_float, spec, _, _ = serving_functions(encoders.small_cnn(widths=(8,)), make_contract(32))
    >>> serve_float(np.zeros([1, 32, 32, 3], np.float32))["embedding"].shape
    TensorShape([1, 8])
    """
    size = contract.image_size
    embed = float_embedding(model)
    float_spec = tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_FLOAT_KEY)
    bytes_spec = tf.TensorSpec([None], tf.string, name=INPUT_BYTES_KEY)

    def serve_float(images):
        # TensorFlow's batch norm rejects an empty batch: answer [0, dim] from one blank image's rows, none kept.
        blank = tf.zeros([1, size, size, 3], tf.float32)
        return {OUTPUT_KEY: tf.cond(tf.shape(images)[0] > 0, lambda: embed(images), lambda: embed(blank)[:0])}

    def serve_bytes(image_bytes):
        # The evaluation pipeline's own function, so what is served is what was evaluated.
        images = tf.map_fn(
            lambda b: preprocess.preprocess_for_eval(
                b, size, contract.mean, contract.std, contract.crop_fraction, max_pixels
            ),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return serve_float(images)

    return serve_float, float_spec, serve_bytes, bytes_spec


def write_saved_model(model, contract, path: Path, provenance: dict, warmup, max_pixels: int = MAX_IMAGE_PIXELS):
    """Writes the SavedModel, its ``assets.extra/preprocessing.json`` and its warm-up requests to ``path``.

    Args:
        model: the float32 encoder.
        contract: its preprocessing contract.
        path: the version directory, ``.../saved_model/<name>/<version>`` (must not exist).
        provenance: written as ``assets.extra/preprocessing.json``; ``provenance["name"]``
            is the model name in the warm-up requests.
        warmup: ``(encoded image bytes, its preprocessed pixels)`` for the warm-up requests
            (:func:`bt_keras.export.parity.warmup_example`).
        max_pixels: ``serving_default`` refuses request images with more pixels.
    """
    serve_float, float_spec, serve_bytes, bytes_spec = serving_functions(model, contract, max_pixels)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes, input_signature=[bytes_spec])
    archive.add_endpoint("serve_float", serve_float, input_signature=[float_spec])
    archive.write_out(str(path), verbose=False)
    assets = path / "assets.extra"
    assets.mkdir()
    atomic_write(assets / "preprocessing.json", json.dumps(provenance, indent=2) + "\n")
    encoded, pixels = warmup
    write_warmup_requests(
        assets / WARMUP_FILE,
        [
            ("serving_default", {INPUT_BYTES_KEY: np.array([encoded], dtype=object)}),
            ("serve_float", {INPUT_FLOAT_KEY: pixels[None]}),
        ],
        model_name=provenance["name"],
    )


# TensorFlow Serving's BatchingParameters (text protobuf, "#" comments allowed). The reasoning is in
# docs/export.md ("Batching"): values for a CPU server and an encoder whose batch-32 call costs about
# half as much per image as a batch-1 call (benchmarks/serving.py).
BATCHING_PARAMETERS = """\
# TF Serving request batching for this encoder, written by bt-export. Serve with
#   --enable_batching --batching_parameters_file=/models/{name}/batching_parameters.txt
# (TF Serving loads only the numbered version directories here; this file is ignored as a model.)
# Up to 32 requests per call: on CPU a ResNet-18 embeds about 2x more images per second at batch 32
# than at batch 1; larger batches add latency without more throughput.
max_batch_size {{ value: 32 }}
# Wait at most 2 ms for a batch to fill: a third of one batch-1 call of a ResNet-18 at 224 px, so a
# lone request is delayed little while bursts are batched. Lower it for small encoders.
batch_timeout_micros {{ value: 2000 }}
# One batch thread per core the server gives TensorFlow Serving: set it to your server's cores.
num_batch_threads {{ value: 2 }}
# As many queued batches as threads (online serving, bounded latency): beyond that, requests fail
# fast with UNAVAILABLE instead of waiting, so a load balancer can retry elsewhere.
max_enqueued_batches {{ value: 2 }}
# Inputs are fixed-size images or single strings: nothing to pad.
pad_variable_length_inputs: false
"""


def write_batching_parameters(model_base: Path, name: str) -> Path:
    """Writes TF Serving's batching parameters file into the model base path ``saved_model/<name>/``.

    Args:
        model_base: ``saved_model/<name>`` (the directory holding the versions).
        name: the model name (the path in the serving command the comment shows).

    Returns:
        The file's path.

    Examples:

    >>> import tempfile
    >>> path = write_batching_parameters(Path(tempfile.mkdtemp()), "encoder")
    >>> [ln for ln in path.read_text().splitlines() if ln.startswith("max_batch_size")]
    ['max_batch_size { value: 32 }']
    """
    path = model_base / BATCHING_FILE
    atomic_write(path, BATCHING_PARAMETERS.format(name=name))
    return path


def saved_model_artifact(sm_dir: Path, root: Path) -> dict:
    """The report's ``artifacts.saved_model`` entry: paths relative to ``root`` and the signatures."""
    return {
        "path": str(sm_dir.relative_to(root)),
        "model_base_path": str(sm_dir.parent.relative_to(root)),
        "signatures": signature_summary(sm_dir),
        "warmup_requests": f"assets.extra/{WARMUP_FILE}",
    }


def _describe(infos) -> dict:
    return {
        k: {
            "dtype": tf.dtypes.as_dtype(v.dtype).name,
            "shape": [None if d.size < 0 else d.size for d in v.tensor_shape.dim],
        }
        for k, v in infos.items()
    }


def signature_summary(sm_dir: Path) -> dict:
    """Inputs, outputs and method of both signatures, read back as ``saved_model_cli`` reads them."""
    from tensorflow.python.tools import saved_model_utils  # the reader saved_model_cli uses

    meta = saved_model_utils.get_meta_graph_def(str(sm_dir), "serve")
    out = {}
    for key in SIGNATURES:
        sig = meta.signature_def[key]
        out[key] = {"inputs": _describe(sig.inputs), "outputs": _describe(sig.outputs), "method": sig.method_name}
    return out
