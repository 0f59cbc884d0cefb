"""Export a trained encoder for serving: SavedModel (TF Serving) and ONNX (ONNX Runtime).

Only the encoder is exported, always in float32, and every export passes a
parity gate before it becomes visible: the same images go through the Keras
model, both SavedModel signatures and ONNX Runtime at batch 1 and batch 7, and
the export is thrown away unless every embedding agrees within ``tolerance``
(relative). Everything is written into a hidden temporary directory next to
``out_dir`` and renamed into place at the end, so a crash or Ctrl-C never
leaves a half export behind.

One module per step: :mod:`~bt_keras.export.checks` (what is exportable, the
float32 rebuild), :mod:`~bt_keras.export.saved_model`,
:mod:`~bt_keras.export.warmup` (TF Serving warm-up requests),
:mod:`~bt_keras.export.onnx_export`, :mod:`~bt_keras.export.parity`,
:mod:`~bt_keras.export.publish` (the atomic output directory) and
:mod:`~bt_keras.export.api` (:func:`export_encoder`, which runs them in order).
The command line is :mod:`bt_keras.cli.export`.

Layout of ``out_dir``::

    saved_model/<name>/<version>/         TF Serving model base path is saved_model/<name>
        saved_model.pb, variables/
        assets.extra/tf_serving_warmup_requests
        assets.extra/preprocessing.json
    onnx/<name>.onnx
    export_report.json                    parity measurements, versions, shapes

Examples:

>>> from bt_keras import encoders
>>> from bt_keras.export import export_encoder
>>> enc = encoders.small_cnn(widths=(8, 16), input_shape=(32, 32, 3))
>>> result = export_encoder(enc, "/tmp/bt_export_doc", image_size=32, overwrite=True)
>>> result.report["parity"]["passed"]
True

Command line::

    bt-export --run runs/cifar --out exports/cifar --name encoder --version 1
"""

from __future__ import annotations

from bt_keras.contract import VALUE_RANGE, default_crop_fraction
from bt_keras.errors import ExportArgumentError, ExportFailed
from bt_keras.export.api import ExportResult, export_encoder, make_contract
from bt_keras.export.checks import FORMATS, float32_encoder, weights_sha256
from bt_keras.export.onnx_export import ONNX_OPSET
from bt_keras.export.parity import DEFAULT_TOLERANCE, PARITY_BATCHES, parity_images, relative_difference
from bt_keras.export.publish import REPORT_FILE
from bt_keras.export.saved_model import INPUT_BYTES_KEY, INPUT_FLOAT_KEY, OUTPUT_KEY
from bt_keras.export.warmup import WARMUP_FILE, prediction_log, write_warmup_requests
from bt_keras.saving import load_encoder

__all__ = [
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "INPUT_BYTES_KEY",
    "INPUT_FLOAT_KEY",
    "ONNX_OPSET",
    "OUTPUT_KEY",
    "PARITY_BATCHES",
    "REPORT_FILE",
    "VALUE_RANGE",
    "WARMUP_FILE",
    "ExportArgumentError",
    "ExportFailed",
    "ExportResult",
    "default_crop_fraction",
    "export_encoder",
    "float32_encoder",
    "load_encoder",
    "make_contract",
    "parity_images",
    "prediction_log",
    "relative_difference",
    "weights_sha256",
    "write_warmup_requests",
]

# The command line moved to bt_keras.cli.export; these names stay reachable here (imported on
# first use: bt_keras.cli.export imports this package).
_CLI_NAMES = ("build_parser", "main")


def __getattr__(name: str):
    if name in _CLI_NAMES:
        from bt_keras.cli import export as cli

        return getattr(cli, name)
    raise AttributeError(f"module 'bt_keras.export' has no attribute {name!r}")
