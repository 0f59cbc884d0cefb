"""Export a trained encoder for serving: SavedModel (TF Serving), ONNX (ONNX Runtime) and LiteRT (mobile).

Only the encoder is exported, always in float32, and every export passes a
parity gate before it becomes visible: the same images go through the Keras
model, both SavedModel signatures, ONNX Runtime and the LiteRT interpreter at batch 1 and batch 7, and
the export is thrown away unless every embedding agrees within ``tolerance``
(relative). Everything is written into a hidden temporary directory next to
``out_dir`` and renamed into place at the end, so a crash or Ctrl-C never
leaves a half export behind.

One module per step: :mod:`~bt_keras.export.checks` (what is exportable, the
float32 rebuild), :mod:`~bt_keras.export.saved_model`,
:mod:`~bt_keras.export.warmup` (TF Serving warm-up requests),
:mod:`~bt_keras.export.onnx_export`, :mod:`~bt_keras.export.litert_export`, :mod:`~bt_keras.export.parity`,
:mod:`~bt_keras.export.quantize` (int8 models and their retrieval gate),
:mod:`~bt_keras.export.publish` (the atomic output directory) and
:mod:`~bt_keras.export.api` (:func:`export_encoder`, which runs them in order).
The command line is :mod:`bt_keras.cli.export`.

Layout of ``out_dir``::

    saved_model/<name>/<version>/         TF Serving model base path is saved_model/<name>
        saved_model.pb, variables/
        assets.extra/tf_serving_warmup_requests
        assets.extra/preprocessing.json
    saved_model/<name>/batching_parameters.txt   TF Serving --enable_batching
    onnx/<name>.onnx
    litert/<name>.tflite, litert/<name>.preprocessing.json   (--formats ...,litert)
    onnx/<name>.int8.onnx, litert/<name>.int8.tflite   (--quantize int8, if the retrieval gate passed them)
    export_report.json                    parity and int8 gate measurements, versions, shapes

Examples:

>>> import os, tempfile
>>> from bt_keras import encoders
>>> from bt_keras.export import export_encoder
>>> enc = encoders.small_cnn(widths=(8, 16), input_shape=(32, 32, 3))
>>> result = export_encoder(enc, os.path.join(tempfile.mkdtemp(), "enc"), image_size=32)
>>> result.report["parity"]["passed"]
True

Command line::

    bt-export --run runs/cifar --out exports/cifar --name encoder --version 1
"""

from __future__ import annotations

from bt_keras._lazy import lazy_namespace

_LAYOUT = (
    "DEFAULT_FORMATS",
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "INPUT_BYTES_KEY",
    "INPUT_FLOAT_KEY",
    "ONNX_OPSET",
    "OUTPUT_KEY",
    "PARITY_BATCHES",
    "REPORT_FILE",
    "WARMUP_FILE",
)
# Name -> the module that defines it (imported on first use: the CLI's checks run without TensorFlow).
_EXPORTS = {
    **{name: "bt_keras.export.layout" for name in _LAYOUT},
    **{name: "bt_keras.contract" for name in ("VALUE_RANGE", "default_crop_fraction")},
    **{name: "bt_keras.errors" for name in ("ExportArgumentError", "ExportFailed")},
    **{name: "bt_keras.export.api" for name in ("ExportResult", "export_encoder")},
    "make_contract": "bt_keras.contract",  # the one constructor of contracts, here for export callers
    **{name: "bt_keras.export.checks" for name in ("float32_encoder", "weights_sha256")},
    **{name: "bt_keras.export.parity" for name in ("parity_images", "relative_difference")},
    **{name: "bt_keras.export.warmup" for name in ("prediction_log", "write_warmup_requests")},
    "Int8Settings": "bt_keras.export.quantize",
    "load_encoder": "bt_keras.saving",
    # The command line moved to bt_keras.cli.export; these stay reachable here.
    **{name: "bt_keras.cli.export" for name in ("build_parser", "main")},
}
_SUBMODULES = (
    "api",
    "checks",
    "layout",
    "litert_export",
    "onnx_export",
    "parity",
    "publish",
    "quantize",
    "saved_model",
    "warmup",
)

__all__ = sorted(n for n in _EXPORTS if n not in ("build_parser", "main"))
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS, submodules=_SUBMODULES)
