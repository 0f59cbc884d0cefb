"""TF Serving warm-up requests, written without the ``tensorflow-serving-api`` package.

TF Serving replays ``assets.extra/tf_serving_warmup_requests`` (a TFRecord of
``PredictionLog`` protos) when it loads a model version, so the first real
request does not pay for graph tracing. The protos are encoded by hand here:
they need only a few length-delimited fields and ``tf.make_tensor_proto``.

Examples:

>>> import numpy as np
>>> from bt_keras.export.warmup import prediction_log
>>> len(prediction_log("encoder", "serve_float", {"images": np.zeros([1, 2, 2, 3], np.float32)})) > 0
True
"""

from __future__ import annotations

import tensorflow as tf


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(model_name: str, signature_name: str, inputs: dict) -> bytes:
    """Serialized ``tensorflow.serving.PredictionLog`` holding one ``PredictRequest``.

    Encoded by hand (the ``tensorflow-serving-api`` package is not a dependency)
    with the field numbers of ``prediction_log.proto``/``predict.proto``/``model.proto``:
    PredictionLog.predict_log = 6, PredictLog.request = 1, PredictRequest.model_spec = 1,
    PredictRequest.inputs = 2 (map<string, TensorProto>), ModelSpec.name = 1,
    ModelSpec.signature_name = 3.

    Args:
        model_name: the TF Serving model name.
        signature_name: the signature the request calls.
        inputs: ``{input_key: numpy array}``.

    Examples:

    >>> import numpy as np
    >>> prediction_log("encoder", "serve_float", {"images": np.zeros([1, 2, 2, 3], np.float32)})[:1]
    b'2'
    """
    spec = _field(1, model_name.encode()) + _field(3, signature_name.encode())
    request = _field(1, spec)
    for key in sorted(inputs):
        tensor = tf.make_tensor_proto(inputs[key]).SerializeToString()
        request += _field(2, _field(1, key.encode()) + _field(2, tensor))
    return _field(6, _field(1, request))


def write_warmup_requests(path, requests, model_name: str = "encoder") -> None:
    """Writes TF Serving's ``assets.extra/tf_serving_warmup_requests`` (TFRecord of PredictionLogs).

    Args:
        path: the file to write (inside the export's temporary directory).
        requests: a list of ``(signature_name, {input_key: numpy array})``.
        model_name: the TF Serving model name.

    Examples:

    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "tf_serving_warmup_requests")
    >>> write_warmup_requests(p, [("serve_float", {"images": np.zeros([1, 8, 8, 3], np.float32)})])
    """
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature_name, inputs in requests:
            writer.write(prediction_log(model_name, signature_name, inputs))
