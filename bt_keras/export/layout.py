"""What an export is made of, as names: formats, tensor keys, files and defaults.

No TensorFlow here: ``bt-export --help`` and argument checks read these
without loading it.
"""

import re

from bt_keras.errors import ExportArgumentError, short_repr

FORMATS = ("saved_model", "onnx", "litert")
DEFAULT_FORMATS = ("saved_model", "onnx")  # litert needs an optional extra (ai-edge-litert)
ONNX_OPSET = 17  # tf2onnx 1.17 converts up to opset 18; 17 is what ONNX Runtime and LiteRT tooling all take
DEFAULT_TOLERANCE = 1e-4  # relative, embeddings of Keras vs each exported runtime
PARITY_BATCHES = (1, 7)  # batch 1 (serving) and an odd batch (no accidental batch-size specialisation)
INPUT_BYTES_KEY = "image_bytes"  # TF Serving's convention for encoded images (REST: {"b64": ...})
INPUT_FLOAT_KEY = "images"
OUTPUT_KEY = "embedding"
REPORT_FILE = "export_report.json"
WARMUP_FILE = "tf_serving_warmup_requests"
BATCHING_FILE = "batching_parameters.txt"  # saved_model/<name>/, beside the versions: TF Serving's --enable_batching

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # the whole name: fullmatch ("$" lets "x\n" in)
MAX_VERSION = 2**63 - 1  # TF Serving's versions are int64


def check_formats(formats) -> tuple:
    """The requested formats as a tuple without repeats; a string may list them with commas.

    Args:
        formats: an iterable of ``"saved_model"``/``"onnx"``/``"litert"``, or ``"saved_model,onnx"``.

    Examples:

    >>> check_formats("onnx,saved_model,onnx")
    ('onnx', 'saved_model')
    """
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportArgumentError(f"unknown format {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    return formats


def require_litert() -> None:
    """A one-line :class:`ExportArgumentError` naming the extra unless the LiteRT runtime is installed.

    Examples:

    >>> require_litert()
    """
    import importlib.util

    if importlib.util.find_spec("ai_edge_litert") is None:
        raise ExportArgumentError(
            "format litert needs the LiteRT runtime for its parity gate: pip install 'bt_keras[litert]' "
            "(ai-edge-litert)"
        )


MAX_NAME_LENGTH = 200


def check_name(name, what: str = "model name") -> str:
    """A TF Serving model name: letters, digits, ``_.-``, not starting with a separator.

    Args:
        name: the name to check.
        what: how the message calls it (``--name`` on the command line).

    Examples:

    >>> check_name("../evil")
    Traceback (most recent call last):
    ...
    bt_keras.errors.ExportArgumentError: model name must match [A-Za-z0-9][A-Za-z0-9_.-]*, got '../evil'
    >>> check_name("enc\\n")
    Traceback (most recent call last):
    ...
    bt_keras.errors.ExportArgumentError: model name must match [A-Za-z0-9][A-Za-z0-9_.-]*, got 'enc\\n'
    """
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise ExportArgumentError(f"{what} must match [A-Za-z0-9][A-Za-z0-9_.-]*, got {short_repr(name)}")
    if len(name) > MAX_NAME_LENGTH:  # file names are at most 255 bytes: <name>.preprocessing.json must fit
        raise ExportArgumentError(f"{what} must be at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    return name


# Int8 quantisation (``--quantize int8``): a retrieval gate, not a numeric one. The defaults are
# justified by measurement in docs/export.md ("Int8 encoders").
QUANTIZE_MODES = ("int8",)
DEFAULT_CALIBRATION_IMAGES = 256  # ONNX Runtime's and LiteRT's guides: a few hundred representative images
DEFAULT_GATE_IMAGES = 256  # held-out images the gate embeds in float32 and int8
MIN_GATE_IMAGES = 22  # top-10 neighbours need more than 10 other images; kNN needs two halves
INT8_NEIGHBOURS = 10
INT8_THRESHOLDS = {
    "min_median_cosine": 0.98,
    "min_p5_cosine": 0.95,
    "min_neighbour_overlap": 0.9,
    "max_knn_top1_drop": 0.02,
}
INT8_THRESHOLD_FLAGS = {
    "min_median_cosine": "--int8-min-cosine",
    "min_p5_cosine": "--int8-min-p5-cosine",
    "min_neighbour_overlap": "--int8-min-overlap",
    "max_knn_top1_drop": "--int8-max-knn-drop",
}
