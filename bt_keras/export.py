"""Export a trained encoder for serving: SavedModel (TF Serving) and ONNX (ONNX Runtime).

Only the encoder is exported, always in float32, and every export passes a
parity gate before it becomes visible: the same images go through the Keras
model, both SavedModel signatures and ONNX Runtime at batch 1 and batch 7, and
the export is thrown away unless every embedding agrees within ``tolerance``
(relative). Everything is written into a hidden temporary directory next to
``out_dir`` and renamed into place at the end, so a crash or Ctrl-C never
leaves a half export behind.

Layout of ``out_dir``::

    saved_model/<name>/<version>/         TF Serving model base path is saved_model/<name>
        saved_model.pb, variables/
        assets.extra/tf_serving_warmup_requests
        assets.extra/preprocessing.json
    onnx/<name>.onnx
    export_report.json                    parity measurements, versions, shapes

Example:

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

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bt_keras import preprocess
from bt_keras.cli import ArgumentParser, UserError, run_command
from bt_keras.version import __version__

FORMATS = ("saved_model", "onnx")
ONNX_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 7)
INPUT_BYTES_KEY = "image_bytes"
INPUT_FLOAT_KEY = "images"
OUTPUT_KEY = "embedding"
REPORT_FILE = "export_report.json"
WARMUP_FILE = "tf_serving_warmup_requests"
VALUE_RANGE = "RGB in [0, 1] before (x - mean) / std"
# Temporary siblings of the output directory carry the writer's pid so that a
# later export can tell a crashed writer's leftovers from a running one's.
_TMP_MARK = ".bt-export-tmp-"
_OLD_MARK = ".bt-export-old-"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportArgumentError(UserError, ValueError):
    """Bad arguments to :func:`export_encoder` (the CLI reports them in one line, exit 2)."""


class ExportFailed(RuntimeError):
    """The export was built but failed a check (parity, ONNX conversion); nothing was kept."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where an export went and what its parity gate measured."""

    out_dir: Path
    saved_model_dir: Path | None
    onnx_path: Path | None
    report: dict


# --------------------------------------------------------------------------- contract


def default_crop_fraction(image_size: int) -> float:
    """Centre crop used when none is given: 0.875 from 64 px up, none (1.0) below.

    >>> default_crop_fraction(224), default_crop_fraction(32)
    (0.875, 1.0)
    """
    return 0.875 if image_size >= 64 else 1.0


def make_contract(image_size, mean=None, std=None, crop_fraction=None) -> preprocess.PreprocessingContract:
    """Validated :class:`~bt_keras.preprocess.PreprocessingContract` with export defaults.

    >>> make_contract(32).crop_fraction
    1.0
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ExportArgumentError(f"image size must be a positive integer, got {image_size!r}")
    image_size = int(image_size)
    mean = tuple(float(v) for v in (preprocess.IMAGENET_MEAN if mean is None else mean))
    std = tuple(float(v) for v in (preprocess.IMAGENET_STD if std is None else std))
    if len(mean) != 3 or len(std) != 3:
        raise ExportArgumentError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
    if not all(np.isfinite(mean)) or not all(np.isfinite(s) and s > 0 for s in std):
        raise ExportArgumentError(f"mean must be finite and std positive, got mean={mean} std={std}")
    crop = default_crop_fraction(image_size) if crop_fraction is None else float(crop_fraction)
    if not 0.0 < crop <= 1.0:
        raise ExportArgumentError(f"crop fraction must be in (0, 1], got {crop}")
    return preprocess.PreprocessingContract(image_size=image_size, mean=mean, std=std, crop_fraction=crop)


# --------------------------------------------------------------------------- encoder checks


def _all_layers(model):
    return model._flatten_layers(include_self=False, recursive=True)


_AUGMENTATION_CLASSES = {"AugMix", "RandAugment", "MixUp", "CutMix", "Solarization"}


def _check_encoder(encoder, image_size: int) -> None:
    if not isinstance(encoder, keras.Model):
        raise ExportArgumentError(f"expected a keras.Model encoder, got {type(encoder).__name__}")
    inner = getattr(encoder, "encoder", None)
    if isinstance(inner, keras.Model) and inner is not encoder:
        # BarlowTwins(...) calls encoder + projector: exporting it would serve projector outputs.
        raise ExportArgumentError(
            f"{type(encoder).__name__} is a pretraining model (encoder + projector); export its .encoder"
        )
    augment = [
        layer.name
        for layer in _all_layers(encoder)
        if type(layer).__name__.startswith("Random") or type(layer).__name__ in _AUGMENTATION_CLASSES
    ]
    if augment:
        raise ExportArgumentError(
            f"the encoder contains augmentation layers ({', '.join(augment)}); export the backbone only"
        )
    try:
        inputs, outputs = encoder.inputs, encoder.outputs
    except AttributeError:  # subclassed model never called: checked by the trial call below
        inputs = outputs = None
    hint = " (pass the encoder, not the whole pretraining model)" if hasattr(encoder, "projector") else ""
    if inputs is not None:
        if len(inputs) != 1:
            raise ExportArgumentError(f"an encoder has one input, this model has {len(inputs)}{hint}")
        shape = tuple(inputs[0].shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise ExportArgumentError(f"the encoder input must be NHWC with 3 channels, got shape {shape}")
        for side in shape[1:3]:
            if side is not None and side != image_size:
                raise ExportArgumentError(
                    f"wrong image size: the encoder takes {shape[1]}x{shape[2]} images, image size is {image_size}"
                )
    if outputs is not None:
        if len(outputs) != 1 or len(outputs[0].shape) != 2:
            got = [tuple(o.shape) for o in outputs]
            raise ExportArgumentError(f"an encoder has one output [batch, dim], this model has {got}{hint}")


def _is_float32(model) -> bool:
    for layer in [model, *_all_layers(model)]:
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and (policy.compute_dtype != "float32" or policy.variable_dtype != "float32"):
            return False
    return all(w.dtype == "float32" for w in model.weights if "float" in str(w.dtype))


def _policy_names(model) -> list:
    names = {
        layer.dtype_policy.name
        for layer in _all_layers(model)
        if getattr(layer, "dtype_policy", None) is not None and layer.weights
    }
    return sorted(names or {model.dtype_policy.name})


def _to_float32_config(obj):
    """Rewrites every dtype policy in a serialized Keras config to float32."""
    if isinstance(obj, dict):
        if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(obj.get("config"), dict):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        out = {}
        for key, value in obj.items():
            if key == "dtype" and isinstance(value, str) and (
                value.startswith("mixed_") or value in ("float16", "bfloat16")
            ):
                out[key] = "float32"
            else:
                out[key] = _to_float32_config(value)
        return out
    if isinstance(obj, list):
        return [_to_float32_config(v) for v in obj]
    return obj


def float32_encoder(encoder):
    """The encoder itself if it computes in float32, else a float32 copy with the same weights.

    Mixed-precision encoders (``mixed_float16`` / ``mixed_bfloat16``) are rebuilt
    from their config with every dtype policy set to float32; the weights
    (float32 variables under mixed precision) are copied over.

    >>> import keras
    >>> from bt_keras import encoders
    >>> keras.config.set_dtype_policy("mixed_bfloat16")
    >>> enc = encoders.small_cnn(widths=(8,), input_shape=(32, 32, 3))
    >>> keras.config.set_dtype_policy("float32")
    >>> float32_encoder(enc).compute_dtype
    'float32'
    """
    if _is_float32(encoder):
        return encoder
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        config = _to_float32_config(keras.saving.serialize_keras_object(encoder))
        rebuilt = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as e:
        raise ExportArgumentError(
            f"cannot rebuild the mixed-precision encoder in float32 from its config ({_one_line(e)}); "
            "rebuild it under the float32 policy and load its weights before exporting"
        ) from e
    finally:
        keras.config.set_dtype_policy(previous)
    weights = encoder.get_weights()
    if len(weights) != len(rebuilt.weights):
        raise ExportArgumentError("the float32 rebuild of the encoder does not have the same weights")
    rebuilt.set_weights([np.asarray(w, np.float32) if np.issubdtype(np.asarray(w).dtype, np.floating) else w for w in weights])
    if not _is_float32(rebuilt):
        raise ExportArgumentError("the float32 rebuild of the encoder still computes in reduced precision")
    return rebuilt


def weights_sha256(model) -> str:
    """SHA-256 over the model's weights (dtype, shape and bytes, in ``model.weights`` order).

    >>> from bt_keras import encoders
    >>> len(weights_sha256(encoders.small_cnn(widths=(8,))))
    64
    """
    h = hashlib.sha256()
    for w in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(w.value))
        h.update(f"{value.dtype.str}{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- serving graphs


def _serving_functions(model, contract):
    size = contract.image_size
    float_spec = tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_FLOAT_KEY)
    bytes_spec = tf.TensorSpec([None], tf.string, name=INPUT_BYTES_KEY)

    def serve_float(images):
        return {OUTPUT_KEY: tf.cast(model(images, training=False), tf.float32)}

    def serve_bytes(image_bytes):
        # The evaluation pipeline's own function, so what is served is what was evaluated.
        images = tf.map_fn(
            lambda b: preprocess.preprocess_for_eval(
                b, size, contract.mean, contract.std, contract.crop_fraction
            ),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return serve_float(images)

    return serve_float, float_spec, serve_bytes, bytes_spec


def _write_saved_model(model, contract, path: Path, extra: dict, warmup_images) -> None:
    serve_float, float_spec, serve_bytes, bytes_spec = _serving_functions(model, contract)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes, input_signature=[bytes_spec])
    archive.add_endpoint("serve_float", serve_float, input_signature=[float_spec])
    archive.write_out(str(path), verbose=False)
    assets = path / "assets.extra"
    assets.mkdir()
    (assets / "preprocessing.json").write_text(json.dumps(extra, indent=2) + "\n")
    encoded, pixels = warmup_images
    write_warmup_requests(
        assets / WARMUP_FILE,
        [
            ("serving_default", {INPUT_BYTES_KEY: np.array([encoded], dtype=object)}),
            ("serve_float", {INPUT_FLOAT_KEY: pixels[None]}),
        ],
        model_name=extra["name"],
    )


def _write_onnx(model, contract, path: Path, metadata: dict) -> None:
    import onnx
    import tf2onnx

    serve_float, float_spec, _, _ = _serving_functions(model, contract)
    function = tf.function(serve_float, input_signature=[float_spec])
    proto, _ = tf2onnx.convert.from_function(function, input_signature=[float_spec], opset=ONNX_OPSET)
    graph = proto.graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    if inputs != [INPUT_FLOAT_KEY] or outputs != [OUTPUT_KEY]:
        # tf2onnx turns eagerly captured tensors into extra graph inputs: a silent contract break.
        raise ExportFailed(f"ONNX graph has inputs {inputs} and outputs {outputs}, expected ['images'] and ['embedding']")
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
        raise ExportFailed(f"ONNX checker rejected the converted encoder: {_one_line(e)}") from e
    onnx.save(proto, str(path))


# --------------------------------------------------------------------------- TF Serving warm-up


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
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(model_name: str, signature_name: str, inputs: dict) -> bytes:
    """Serialized ``tensorflow.serving.PredictionLog`` holding one ``PredictRequest``.

    Encoded by hand (the ``tensorflow-serving-api`` package is not a dependency)
    with the field numbers of ``prediction_log.proto``/``predict.proto``/``model.proto``:
    PredictionLog.predict_log = 6, PredictLog.request = 1, PredictRequest.model_spec = 1,
    PredictRequest.inputs = 2 (map<string, TensorProto>), ModelSpec.name = 1,
    ModelSpec.signature_name = 3.

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

    ``requests`` is a list of ``(signature_name, {input_key: numpy array})``.

    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "tf_serving_warmup_requests")
    >>> write_warmup_requests(p, [("serve_float", {"images": np.zeros([1, 8, 8, 3], np.float32)})])
    """
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature_name, inputs in requests:
            writer.write(prediction_log(model_name, signature_name, inputs))


# --------------------------------------------------------------------------- parity gate


def parity_images(contract, count: int, seed: int = 0):
    """``count`` deterministic test images as encoded bytes, mixing PNG and JPEG,
    odd sizes and aspect ratios, grayscale and RGBA, so every decode path is exercised."""
    rng = np.random.default_rng(seed)
    size = contract.image_size
    out = []
    for i in range(count):
        height = max(4, int(size * (1.0 + 0.37 * (i % 4))) + i)
        width = max(4, int(size * (1.0 + 0.21 * ((i + 2) % 5))) + 2 * i)
        # Smooth structure plus noise: resizing then has something to interpolate.
        coarse = rng.uniform(0, 255, size=(5, 7, 3)).astype(np.float32)
        base = tf.image.resize(coarse[None], [height, width], method="bilinear")[0].numpy()
        pixels = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
        kind = i % 4
        if kind == 0:
            data = tf.io.encode_jpeg(pixels, quality=90).numpy()
        elif kind == 1:
            data = tf.io.encode_png(pixels).numpy()
        elif kind == 2:
            data = tf.io.encode_png(pixels[..., :1]).numpy()
        else:
            alpha = np.full(pixels.shape[:2] + (1,), 255, np.uint8)
            data = tf.io.encode_png(np.concatenate([pixels, alpha], axis=-1)).numpy()
        out.append(data)
    return out


def _preprocess_eager(encoded, contract) -> np.ndarray:
    return np.stack(
        [
            preprocess.preprocess_for_eval(
                tf.constant(b), contract.image_size, contract.mean, contract.std, contract.crop_fraction
            ).numpy()
            for b in encoded
        ]
    )


def relative_difference(got, want) -> tuple[float, float]:
    """(max over rows of ‖got − want‖₂ / ‖want‖₂, max absolute difference).

    >>> relative_difference([[1.0, 0.0]], [[1.0, 0.0]])
    (0.0, 0.0)
    """
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf"), float("inf")
    if got.size == 0:
        return 0.0, 0.0
    err = np.linalg.norm(got - want, axis=-1)
    norm = np.maximum(np.linalg.norm(want, axis=-1), 1e-12)
    with np.errstate(invalid="ignore"):
        rel = float(np.max(np.where(err == 0, 0.0, err / norm)))
    return rel, float(np.max(np.abs(got - want)))


def _parity(model, contract, sm_dir, onnx_path, tolerance, source_model=None):
    encoded_all = parity_images(contract, max(PARITY_BATCHES))
    checks = []
    loaded = tf.saved_model.load(str(sm_dir)) if sm_dir is not None else None
    session = None
    if onnx_path is not None:
        import onnxruntime

        try:
            session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ExportFailed(f"ONNX Runtime cannot load the converted encoder: {_one_line(e)}") from e
    for batch in PARITY_BATCHES:
        encoded = encoded_all[:batch]
        pixels = _preprocess_eager(encoded, contract)
        want = keras.ops.convert_to_numpy(model(pixels, training=False)).astype(np.float32)
        runs = []
        if loaded is not None:
            runs.append(
                ("saved_model:serve_float", pixels,
                 lambda: loaded.signatures["serve_float"](images=tf.constant(pixels))[OUTPUT_KEY].numpy())
            )
            runs.append(
                ("saved_model:serving_default", np.array(encoded, dtype=object),
                 lambda: loaded.signatures["serving_default"](
                     image_bytes=tf.constant(encoded, tf.string))[OUTPUT_KEY].numpy())
            )
        if session is not None:
            runs.append(("onnxruntime", pixels, lambda: session.run([OUTPUT_KEY], {INPUT_FLOAT_KEY: pixels})[0]))
        for target, inputs, run in runs:
            try:
                got = np.asarray(run())
            except Exception as e:
                raise ExportFailed(f"{target} failed on the parity images at batch {batch}: {_one_line(e)}") from e
            rel, abs_ = relative_difference(got, want)
            checks.append(
                {
                    "batch": batch,
                    "max_abs_diff": abs_,
                    "max_rel_diff": rel,
                    "reference": "keras",
                    "target": target,
                    "input_shape": list(inputs.shape),
                    "output_shape": list(got.shape),
                    "output_dtype": str(got.dtype),
                    "passed": bool(rel <= tolerance and got.dtype == np.float32),
                }
            )
    worst = max(checks, key=lambda c: c["max_rel_diff"]) if checks else None
    source_precision = None
    if source_model is not None and source_model is not model:
        # Not gated: a reduced-precision source is expected to differ from its float32 export.
        pixels = _preprocess_eager(encoded_all, contract)
        rel, abs_ = relative_difference(
            keras.ops.convert_to_numpy(source_model(pixels, training=False)).astype(np.float32),
            keras.ops.convert_to_numpy(model(pixels, training=False)),
        )
        source_precision = {
            "note": "source model in its own dtype policy vs the exported float32 model (informational)",
            "dtype_policies": _policy_names(source_model),
            "batch": len(encoded_all),
            "max_rel_diff": rel,
            "max_abs_diff": abs_,
        }
    return {
        "tolerance": tolerance,
        "metric": "max over images of ||target - keras||_2 / ||keras||_2",
        "batches": list(PARITY_BATCHES),
        "checks": checks,
        "worst": None if worst is None else {k: worst[k] for k in ("target", "batch", "max_rel_diff")},
        "passed": all(c["passed"] for c in checks),
        "source_precision": source_precision,
    }


# --------------------------------------------------------------------------- atomic output


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Removes temporaries a killed export left next to ``out_dir`` (their pid is gone)."""
    prefix = f".{out_dir.name}"
    for entry in out_dir.parent.glob(f"{prefix}.bt-export-*"):
        match = re.fullmatch(re.escape(prefix) + r"\.bt-export-(tmp|old)-(\d+)-\w+", entry.name)
        if match and entry.is_dir() and not _pid_alive(int(match.group(2))):
            if match.group(1) == "old" and not out_dir.exists():
                continue  # the previous export, moved aside by a writer killed mid-swap: keep it
            shutil.rmtree(entry, ignore_errors=True)


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportArgumentError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / REPORT_FILE).is_file():
            raise ExportArgumentError(
                f"{out_dir} is not empty and is not a bt-export output; choose another output directory"
            )
        if not overwrite:
            raise ExportArgumentError(f"{out_dir} already holds an export; pass --overwrite (overwrite=True) to replace it")


def _publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    _check_destination(out_dir, overwrite)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        old = out_dir.parent / f".{out_dir.name}{_OLD_MARK}{os.getpid()}-{os.urandom(4).hex()}"
        os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            os.rename(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)  # replaces an empty directory; fails if one appeared meanwhile


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


# --------------------------------------------------------------------------- public API


def load_encoder(path) -> keras.Model:
    """Loads an encoder saved with ``encoder.save("x.keras")`` in safe mode.

    >>> from bt_keras import encoders
    >>> enc = encoders.small_cnn(widths=(8,)); enc.save("/tmp/doc_enc.keras")
    >>> load_encoder("/tmp/doc_enc.keras").output_shape
    (None, 8)
    """
    import bt_keras  # noqa: F401  (registers the package's serializable layers)

    path = Path(path)
    if not path.is_file():
        raise ExportArgumentError(f"encoder file {path} does not exist")
    if path.suffix != ".keras":
        raise ExportArgumentError(f"{path} is not a .keras file")
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as e:
        raise ExportArgumentError(f"cannot load {path}: {_one_line(e)}") from e


def export_encoder(
    encoder,
    out_dir,
    image_size: int,
    formats=FORMATS,
    name: str = "encoder",
    version: int = 1,
    *,
    mean=None,
    std=None,
    crop_fraction: float | None = None,
    overwrite: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    source: dict | None = None,
) -> ExportResult:
    """Exports an encoder as a TF Serving SavedModel and/or an ONNX model, behind a parity gate.

    Args:
      encoder: a ``keras.Model`` (one NHWC input, one ``[B, D]`` output) or a
        path to a ``.keras`` file (loaded with ``safe_mode=True``).
      out_dir: output directory; created, or replaced only when ``overwrite``.
      image_size: side of the square images the encoder takes.
      formats: any of ``"saved_model"``, ``"onnx"``.
      name, version: TF Serving model name and integer version.
      mean, std, crop_fraction: the preprocessing contract (defaults: ImageNet
        mean/std, crop 0.875 from 64 px up and 1.0 below).
      tolerance: largest relative embedding difference the gate accepts.
      source: extra provenance recorded in the report (e.g. the run directory).

    Returns:
      :class:`ExportResult`; ``report`` is also written to ``out_dir/export_report.json``.

    Raises:
      ExportArgumentError: bad arguments or an existing export without ``overwrite``.
      ExportFailed: conversion or parity failed; nothing is written.

    Example:

    >>> from bt_keras import encoders
    >>> enc = encoders.small_cnn(widths=(8, 16), input_shape=(32, 32, 3))
    >>> r = export_encoder(enc, "/tmp/bt_doc_export", 32, formats=("onnx",), overwrite=True)
    >>> r.onnx_path.name, r.report["parity"]["passed"]
    ('encoder.onnx', True)
    """
    started = datetime.datetime.now(datetime.timezone.utc)
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f]
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportArgumentError(f"unknown format {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise ExportArgumentError(f"model name must match [A-Za-z0-9][A-Za-z0-9_.-]*, got {name!r}")
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ExportArgumentError(f"version must be a positive integer, got {version!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ExportArgumentError(f"tolerance must be a non-negative number, got {tolerance!r}")
    contract = make_contract(image_size, mean, std, crop_fraction)
    out_dir = Path(out_dir).absolute()
    _check_destination(out_dir, overwrite)
    source = dict(source or {})
    if isinstance(encoder, (str, os.PathLike)):
        source.setdefault("encoder_file", str(Path(encoder).absolute()))
        source.setdefault("encoder_file_sha256", _file_sha256(Path(encoder)) if Path(encoder).is_file() else None)
        encoder = load_encoder(encoder)
    _check_encoder(encoder, contract.image_size)
    source["weights_sha256"] = weights_sha256(encoder)
    source["dtype_policies"] = _policy_names(encoder)
    model = float32_encoder(encoder)
    source["exported_dtype"] = "float32"
    source["rebuilt_in_float32"] = model is not encoder

    # Trial call: catches encoders that do not map [B, S, S, 3] to [B, D] before any file is written.
    trial = keras.ops.convert_to_numpy(model(np.zeros([2, contract.image_size, contract.image_size, 3], np.float32), training=False))
    if trial.ndim != 2 or trial.shape[0] != 2:
        raise ExportArgumentError(f"the encoder maps [2, S, S, 3] to {list(trial.shape)}, expected [2, dim]")
    dim = int(trial.shape[1])

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{_TMP_MARK}{os.getpid()}-", dir=out_dir.parent))
    except OSError as e:
        raise ExportArgumentError(f"cannot write next to {out_dir}: {_one_line(e)}") from None
    try:
        contract_dict = json.loads(contract.to_json())
        provenance = {
            "name": name,
            "version": int(version),
            "embedding_dim": dim,
            "preprocessing": contract_dict,
            "bt_keras_version": __version__,
            "tensorflow_version": tf.__version__,
            "source_weights_sha256": source["weights_sha256"],
        }
        sm_dir = onnx_path = None
        artifacts = {}
        if "saved_model" in formats:
            sm_dir = tmp / "saved_model" / name / str(int(version))
            sm_dir.parent.mkdir(parents=True)
            warm = parity_images(contract, 1, seed=1)[0]
            _write_saved_model(model, contract, sm_dir, provenance, (warm, _preprocess_eager([warm], contract)[0]))
            artifacts["saved_model"] = {
                "path": str(sm_dir.relative_to(tmp)),
                "model_base_path": str(sm_dir.parent.relative_to(tmp)),
                "signatures": _signature_summary(sm_dir),
                "warmup_requests": f"assets.extra/{WARMUP_FILE}",
            }
        if "onnx" in formats:
            onnx_path = tmp / "onnx" / f"{name}.onnx"
            onnx_path.parent.mkdir()
            metadata = {
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
                "source_weights_sha256": source["weights_sha256"],
                "preprocessing": contract.to_json(),
            }
            _write_onnx(model, contract, onnx_path, metadata)
            artifacts["onnx"] = {
                "path": str(onnx_path.relative_to(tmp)),
                "opset": ONNX_OPSET,
                "inputs": {INPUT_FLOAT_KEY: {"dtype": "float32", "shape": ["batch", contract.image_size, contract.image_size, 3]}},
                "outputs": {OUTPUT_KEY: {"dtype": "float32", "shape": ["batch", dim]}},
                "metadata_props": metadata,
            }
        parity = _parity(model, contract, sm_dir, onnx_path, tolerance, source_model=encoder)
        if not parity["passed"]:
            bad = [c for c in parity["checks"] if not c["passed"]]
            summary = "; ".join(
                f"{c['target']} at batch {c['batch']}: {c['max_rel_diff']:.3g}" for c in bad[:3]
            )
            raise ExportFailed(f"parity gate failed (relative tolerance {tolerance:g}): {summary}; nothing was written")
        report = {
            "bt_keras_version": __version__,
            "created_utc": started.isoformat(timespec="seconds"),
            "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 2),
            "name": name,
            "version": int(version),
            "formats": list(formats),
            "embedding_dim": dim,
            "preprocessing": contract_dict,
            "source": source,
            "artifacts": artifacts,
            "parity": parity,
            "versions": _versions(onnx="onnx" in formats),
        }
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        _publish(tmp, out_dir, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(
        out_dir=out_dir,
        saved_model_dir=None if sm_dir is None else out_dir / sm_dir.relative_to(tmp),
        onnx_path=None if onnx_path is None else out_dir / onnx_path.relative_to(tmp),
        report=report,
    )


def _signature_summary(sm_dir: Path) -> dict:
    from tensorflow.python.tools import saved_model_utils  # the reader saved_model_cli uses

    meta = saved_model_utils.get_meta_graph_def(str(sm_dir), "serve")
    out = {}
    for key in ("serving_default", "serve_float"):
        sig = meta.signature_def[key]

        def describe(infos):
            return {
                k: {
                    "dtype": tf.dtypes.as_dtype(v.dtype).name,
                    "shape": [None if d.size < 0 else d.size for d in v.tensor_shape.dim],
                }
                for k, v in infos.items()
            }

        out[key] = {"inputs": describe(sig.inputs), "outputs": describe(sig.outputs), "method": sig.method_name}
    return out


def _versions(onnx: bool) -> dict:
    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "bt_keras": __version__,
    }
    if onnx:
        import onnx as onnx_module
        import onnxruntime
        import tf2onnx

        versions.update(tf2onnx=tf2onnx.__version__, onnx=onnx_module.__version__, onnxruntime=onnxruntime.__version__)
    return versions


# --------------------------------------------------------------------------- CLI


def _floats(text: str):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ExportArgumentError(f"expected three comma-separated numbers, got {text!r}") from None
    return values


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> ArgumentParser:
    """The ``bt-export`` argument parser."""
    p = ArgumentParser(
        prog="bt-export",
        description="Export a trained encoder as a TF Serving SavedModel and/or ONNX, behind a parity gate.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_DIR", help="bt-train run directory (encoder.keras + preprocessing.json)")
    src.add_argument("--encoder", metavar="FILE.keras", help="an encoder saved with encoder.save(...)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--name", default="encoder", help="TF Serving model name (default: encoder)")
    p.add_argument("--version", type=_positive_int, default=1, help="TF Serving model version (default: 1)")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: saved_model,onnx (default: both)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in DIR")
    p.add_argument("--image-size", type=_positive_int, help="image side (needed with --encoder unless a preprocessing.json is next to it)")
    p.add_argument("--mean", help="RGB mean, e.g. 0.485,0.456,0.406 (default: ImageNet)")
    p.add_argument("--std", help="RGB std, e.g. 0.229,0.224,0.225 (default: ImageNet)")
    p.add_argument("--crop-fraction", type=float, help="centre crop fraction (default: 0.875 from 64 px, 1.0 below)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="parity gate relative tolerance (default: 1e-4)")
    return p


def _read_contract(path: Path) -> preprocess.PreprocessingContract:
    try:
        return preprocess.PreprocessingContract.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportArgumentError(f"cannot read {path}: {_one_line(e)}") from None


def _resolve(args):
    """Encoder file and contract from the arguments; checks that need no TensorFlow work."""
    overrides = {
        "image_size": args.image_size,
        "mean": None if args.mean is None else _floats(args.mean),
        "std": None if args.std is None else _floats(args.std),
        "crop_fraction": args.crop_fraction,
    }
    if args.run is not None:
        run = Path(args.run)
        if not run.is_dir():
            raise ExportArgumentError(f"run directory {run} does not exist")
        encoder_file = run / "encoder.keras"
        if not encoder_file.is_file():
            raise ExportArgumentError(f"{run} has no encoder.keras (is it a finished bt-train run?)")
        contract_file = run / "preprocessing.json"
        if not contract_file.is_file():
            raise ExportArgumentError(f"{run} has no preprocessing.json")
    else:
        encoder_file = Path(args.encoder)
        if not encoder_file.is_file():
            raise ExportArgumentError(f"encoder file {encoder_file} does not exist")
        contract_file = encoder_file.parent / "preprocessing.json"
        if not contract_file.is_file():
            contract_file = None
            if args.image_size is None:
                raise ExportArgumentError("--encoder needs --image-size (no preprocessing.json next to the file)")
    if contract_file is not None:
        contract = _read_contract(contract_file)
        recorded = dataclasses.asdict(contract)
        for key, value in overrides.items():
            if value is None:
                continue
            same = np.allclose(value, recorded[key]) if key in ("mean", "std") else value == recorded[key]
            if not same:
                flag = "--" + key.replace("_", "-")
                what = "wrong image size" if key == "image_size" else f"{flag} conflicts"
                raise ExportArgumentError(f"{what}: {flag} {value} but {contract_file} says {recorded[key]}")
        contract = make_contract(contract.image_size, contract.mean, contract.std, contract.crop_fraction)
    else:
        contract = make_contract(**overrides)
    return encoder_file, contract_file, contract


def _body(argv):
    args = build_parser().parse_args(argv)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportArgumentError(f"unknown format {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if not _MODEL_NAME.match(args.name):
        raise ExportArgumentError(f"--name must match [A-Za-z0-9][A-Za-z0-9_.-]*, got {args.name!r}")
    encoder_file, contract_file, contract = _resolve(args)
    _check_destination(Path(args.out).absolute(), args.overwrite)
    source = {
        "run_dir": None if args.run is None else str(Path(args.run).absolute()),
        "preprocessing_file": None if contract_file is None else str(contract_file.absolute()),
    }
    try:
        result = export_encoder(
            str(encoder_file),
            args.out,
            contract.image_size,
            formats=formats,
            name=args.name,
            version=args.version,
            mean=contract.mean,
            std=contract.std,
            crop_fraction=contract.crop_fraction,
            overwrite=args.overwrite,
            tolerance=args.tolerance,
            source=source,
        )
    except (ExportFailed, OSError) as e:
        # Not the user's arguments (exit 2) but the export itself; nothing was written.
        sys.stderr.write(f"bt-export: export failed: {e if isinstance(e, ExportFailed) else _one_line(e)}\n")
        return 1
    parity = result.report["parity"]
    print(f"bt-export: wrote {result.out_dir}")
    if result.saved_model_dir is not None:
        print(f"  SavedModel  {result.saved_model_dir}  (signatures serving_default, serve_float)")
    if result.onnx_path is not None:
        print(f"  ONNX        {result.onnx_path}  (opset {ONNX_OPSET})")
    worst = parity["worst"]
    print(
        f"  parity      worst relative difference {worst['max_rel_diff']:.2e} ({worst['target']}, batch {worst['batch']}),"
        f" tolerance {parity['tolerance']:g}"
    )
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """``bt-export`` entry point. Example: ``bt-export --run runs/cifar --out exports/cifar``."""
    previous = signal.getsignal(signal.SIGTERM)
    # SIGTERM (docker stop, kill) unwinds like Ctrl-C so the temporary directory is removed.
    in_main_thread = True
    try:
        signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread
        in_main_thread = False
    try:
        return run_command("bt-export", _body, argv)
    except SystemExit as e:  # argparse (--help, bad flags): return the code, as for every other outcome
        return e.code if isinstance(e.code, int) else 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
