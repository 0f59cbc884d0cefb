"""``export_encoder``: check, rebuild in float32, write each format, gate on parity, publish.

The example of every format at once is :mod:`bt_keras.export`'s; :func:`export_encoder`'s own writes ONNX only.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bt_keras import contract as contract_lib
from bt_keras.errors import ExportArgumentError, UserError
from bt_keras.export import checks, layout, litert_export, onnx_export, parity
from bt_keras.export import quantize as quantize_lib
from bt_keras.export.layout import REPORT_FILE
from bt_keras.export.publish import check_destination, publish, staging_directory
from bt_keras.export.saved_model import saved_model_artifact, write_batching_parameters, write_saved_model
from bt_keras.io import atomic_write
from bt_keras.saving import load_encoder
from bt_keras.version import __version__


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where an export went and what its parity gate measured.

    Args:
        out_dir: the output directory.
        saved_model_dir: ``out_dir/saved_model/<name>/<version>``, or ``None``.
        onnx_path: ``out_dir/onnx/<name>.onnx``, or ``None``.
        report: the content of ``out_dir/export_report.json``.
        litert_path: ``out_dir/litert/<name>.tflite``, or ``None``.
        int8_onnx_path, int8_litert_path: ``<name>.int8.onnx`` / ``<name>.int8.tflite``
            when ``quantize="int8"`` and the retrieval gate passed them, else ``None``.

    Examples:

    >>> ExportResult(Path("/x"), None, None, {}).onnx_path is None
    True
    """

    out_dir: Path
    saved_model_dir: Path | None
    onnx_path: Path | None
    report: dict
    litert_path: Path | None = None
    int8_onnx_path: Path | None = None
    int8_litert_path: Path | None = None


def export_encoder(
    encoder,
    out_dir,
    image_size: int,
    formats=layout.DEFAULT_FORMATS,
    name: str = "encoder",
    version: int = 1,
    *,
    mean=None,
    std=None,
    crop_fraction: float | None = None,
    overwrite: bool = False,
    tolerance: float = layout.DEFAULT_TOLERANCE,
    source: dict | None = None,
    max_image_pixels: int = contract_lib.MAX_IMAGE_PIXELS,
    quantize: str | None = None,
    int8: quantize_lib.Int8Settings | None = None,
) -> ExportResult:
    """Exports an encoder as a TF Serving SavedModel, an ONNX and/or a LiteRT model, behind a parity gate.

    Args:
      encoder: a ``keras.Model`` (one NHWC input, one ``[B, D]`` output) or a
        path to a ``.keras`` file (loaded with ``safe_mode=True``).
      out_dir: output directory; created, or when it holds an export and
        ``overwrite`` is set, updated: only this export's version directory,
        ONNX file and report are replaced (other versions and names stay).
      image_size: side of the square images the encoder takes.
      formats: any of ``"saved_model"``, ``"onnx"``, ``"litert"`` (needs ``ai-edge-litert``).
      name, version: TF Serving model name and integer version.
      mean, std, crop_fraction: the preprocessing contract (defaults: ImageNet
        mean/std, crop 0.875 from 64 px up and 1.0 below).
      tolerance: largest relative embedding difference the gate accepts.
      source: extra provenance recorded in the report (e.g. the run directory).
      max_image_pixels: the SavedModel's ``serving_default`` refuses a request
        image whose header announces more pixels, before decoding it.
      quantize: ``"int8"`` also writes ``onnx/<name>.int8.onnx`` (with ``"onnx"``)
        and ``litert/<name>.int8.tflite`` (with ``"litert"``), each published only if
        the retrieval gate passes it (:mod:`bt_keras.export.quantize`); the float32
        files are written as without it. ``None``: float32 only.
      int8: :class:`~bt_keras.export.quantize.Int8Settings` (calibration and held-out
        images, thresholds); required with ``quantize``.

    Returns:
      :class:`ExportResult`; ``report`` is also written to ``out_dir/export_report.json``.

    Raises:
      ExportArgumentError: bad arguments or an existing export without ``overwrite``.
      ExportFailed: conversion or parity failed; nothing is written.

    Examples:

    >>> import os, tempfile
    >>> from bt_keras import encoders
    >>> enc = encoders.small_cnn(widths=(8, 16), input_shape=(32, 32, 3))
    >>> r = export_encoder(enc, os.path.join(tempfile.mkdtemp(), "enc"), 32, formats=("onnx",))
    >>> r.onnx_path.name, r.report["parity"]["passed"]
    ('encoder.onnx', True)
    """
    started = datetime.datetime.now(datetime.timezone.utc)
    formats = _check_arguments(formats, name, version, tolerance, max_image_pixels, quantize, int8)
    try:
        contract = contract_lib.make_contract(image_size, mean, std, crop_fraction)
    except UserError as e:
        raise ExportArgumentError(str(e)) from None
    if not contract.image_size**2 <= int(max_image_pixels) <= 2**63 - 1:
        # Below the encoder's own input the parity gate's images would be refused; above int64 the graph overflows.
        raise ExportArgumentError(
            f"max_image_pixels must be from {contract.image_size**2:,} (the encoder's {contract.image_size}x"
            f"{contract.image_size} input) to 2**63-1, got {max_image_pixels}"
        )
    out_dir = Path(out_dir).absolute()
    check_destination(out_dir, overwrite)
    encoder, source = _load(encoder, dict(source or {}))
    checks.check_encoder(encoder, contract.image_size)
    model = _float32(encoder, source)
    dim = checks.embedding_dim(model, contract.image_size)
    # Read before anything is written: a bad calibration source is a one-line argument error.
    int8_images = None if quantize is None else quantize_lib.quantization_images(int8, contract)
    with staging_directory(out_dir) as tmp:
        sm_dir, onnx_path, litert_path, artifacts = _write_formats(
            model, contract, tmp, formats, name, int(version), dim, source, int(max_image_pixels)
        )
        gate = parity.measure_parity(
            model, contract, sm_dir, onnx_path, tolerance, source_model=encoder, litert_path=litert_path
        )
        parity.require_parity(gate)
        int8_report, int8_files = (None, [])
        if int8_images is not None:
            int8_report, int8_files = _write_int8(
                model, contract, tmp, onnx_path, litert_path, dim, source, int8, int8_images
            )
        report = {
            "bt_keras_version": __version__,
            "created_utc": started.isoformat(timespec="seconds"),
            "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 2),
            **{"name": name, "version": int(version), "formats": list(formats), "embedding_dim": dim},
            "preprocessing": json.loads(contract.to_json()),
            **{"source": source, "artifacts": artifacts, "parity": gate, "int8": int8_report},
            "versions": _versions(onnx="onnx" in formats, litert="litert" in formats),
        }
        atomic_write(tmp / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        publish(tmp, out_dir, overwrite, entries=[*_entries(name, sm_dir and sm_dir.relative_to(tmp)), REPORT_FILE])
    int8_paths = {f.suffix: out_dir / f for f in int8_files}
    return ExportResult(
        out_dir=out_dir,
        saved_model_dir=None if sm_dir is None else out_dir / sm_dir.relative_to(tmp),
        onnx_path=None if onnx_path is None else out_dir / onnx_path.relative_to(tmp),
        report=report,
        litert_path=None if litert_path is None else out_dir / litert_path.relative_to(tmp),
        int8_onnx_path=int8_paths.get(".onnx"),
        int8_litert_path=int8_paths.get(".tflite"),
    )


def _entries(name: str, saved_model_version) -> list:
    """What an export called ``name`` replaces in an existing output directory (``--overwrite``).

    Every ONNX and LiteRT file of this name, float32 and int8, whether this export wrote it or not:
    one it lacks (fewer ``--formats``, no ``--quantize``, an int8 file the gate refused) is removed,
    so no file of the previous model stays beside a report naming the new one; int8 files were
    quantised from the replaced weights. SavedModel versions are kept side by side (TF Serving
    serves each); the batching file goes with the version written.
    """
    onnx, litert = Path("onnx") / f"{name}.onnx", Path("litert") / f"{name}.tflite"
    int8_onnx, int8_litert = onnx.with_name(f"{name}.int8.onnx"), litert.with_name(f"{name}.int8.tflite")
    entries = [onnx, int8_onnx, litert, litert.with_suffix(".preprocessing.json")]
    entries += [int8_litert, int8_litert.with_suffix(".preprocessing.json")]
    if saved_model_version is not None:
        entries = [saved_model_version, saved_model_version.parent / layout.BATCHING_FILE, *entries]
    return entries


def _check_arguments(formats, name, version, tolerance, max_image_pixels, quantize, int8) -> tuple:
    """The checked formats; a one-line :class:`ExportArgumentError` for any bad argument, before any work."""
    formats = layout.check_formats(formats)
    if "litert" in formats:
        litert_export.require_interpreter()  # a one-line error naming the extra
    layout.check_name(name)
    checks.check_version_and_tolerance(version, tolerance)
    if int(max_image_pixels) < 1:
        raise ExportArgumentError(f"max_image_pixels must be >= 1, got {max_image_pixels}")
    _check_quantize(quantize, int8, formats)
    return formats


def _check_quantize(quantize, int8, formats) -> None:
    """Refuses a bad ``quantize`` / ``int8`` pair before any work (one line)."""
    if quantize is None:
        return
    if quantize not in layout.QUANTIZE_MODES:
        raise ExportArgumentError(f"--quantize must be one of {', '.join(layout.QUANTIZE_MODES)}, got {quantize!r}")
    if not ({"onnx", "litert"} & set(formats)):
        raise ExportArgumentError("--quantize int8 writes int8 ONNX/LiteRT models: add onnx or litert to --formats")
    if not isinstance(int8, quantize_lib.Int8Settings):
        raise ExportArgumentError("quantize='int8' needs int8=Int8Settings(calibration_source, ...)")
    int8.check()


def _write_int8(model, contract, tmp: Path, onnx_path, litert_path, dim: int, source: dict, settings, images):
    """Writes the int8 models next to the float32 ones and gates them; ``(report entry, files to publish)``.

    A file the gate refuses is deleted from ``tmp`` at once: a new output
    directory is ``tmp`` renamed, so whatever stays there is published.
    """
    calibration, gate_pixels, gate_labels = images
    extra = {"precision": "int8", "quantization": quantize_lib.QUANTIZATION_NOTE}
    runners, files = {}, {}
    if onnx_path is not None:
        path = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
        quantize_lib.write_int8_onnx(onnx_path, path, calibration, extra)
        runners["onnxruntime"], files["onnxruntime"] = quantize_lib.onnx_runner(path), [path]
    if litert_path is not None:
        path = litert_path.with_name(litert_path.stem + ".int8.tflite")
        metadata = {**litert_export.litert_metadata(contract, dim, source["weights_sha256"]), **extra}
        sidecar = quantize_lib.write_int8_litert(model, contract, path, metadata, calibration)
        runners["litert"], files["litert"] = litert_export.litert_runner(path, "int8 encoder"), [path, sidecar]
    thresholds = settings.gate_thresholds()
    report = quantize_lib.measure_int8(model, gate_pixels, gate_labels, runners, thresholds, len(calibration))
    published = []
    for target, paths in files.items():
        entry = report["targets"][target]
        float_path = onnx_path if target == "onnxruntime" else litert_path
        entry.update(
            path=str(paths[0].relative_to(tmp)),
            bytes=paths[0].stat().st_size,
            float32_bytes=float_path.stat().st_size,
            published=entry["passed"],
        )
        for path in paths:
            if entry["passed"]:
                published.append(path.relative_to(tmp))
            else:
                path.unlink()
    return report, published


def _load(encoder, source: dict):
    """The encoder (loaded if it is a path) and the provenance, with the file's path and hash."""
    if isinstance(encoder, (str, os.PathLike)):
        path = Path(encoder)
        source.setdefault("encoder_file", str(path.absolute()))
        source.setdefault("encoder_file_sha256", checks.file_sha256(path) if path.is_file() else None)
        encoder = load_encoder(path)
    return encoder, source


def _float32(encoder, source: dict):
    """The float32 model to export; records the source's weights hash and dtype policies."""
    source["weights_sha256"] = checks.weights_sha256(encoder)
    source["dtype_policies"] = checks.policy_names(encoder)
    model = checks.float32_encoder(encoder)
    source["exported_dtype"] = "float32"
    source["rebuilt_in_float32"] = model is not encoder
    return model


def _write_formats(
    model, contract, tmp: Path, formats, name: str, version: int, dim: int, source: dict, max_pixels: int
):
    """Writes each requested format under ``tmp``; ``(sm_dir, onnx_path, litert_path, artifacts)``."""
    sm_dir = onnx_path = litert_path = None
    artifacts = {}
    if "saved_model" in formats:
        provenance = {
            "name": name,
            "version": version,
            "embedding_dim": dim,
            "preprocessing": json.loads(contract.to_json()),
            "bt_keras_version": __version__,
            "tensorflow_version": tf.__version__,
            "source_weights_sha256": source["weights_sha256"],
            "max_image_pixels": max_pixels,
        }
        sm_dir = tmp / "saved_model" / name / str(version)
        sm_dir.parent.mkdir(parents=True)
        write_saved_model(model, contract, sm_dir, provenance, parity.warmup_example(contract), max_pixels=max_pixels)
        artifacts["saved_model"] = saved_model_artifact(sm_dir, tmp)
        batching = write_batching_parameters(sm_dir.parent, name)
        artifacts["saved_model"]["batching_parameters"] = str(batching.relative_to(tmp))
    if "onnx" in formats:
        onnx_path = tmp / "onnx" / f"{name}.onnx"
        onnx_path.parent.mkdir()
        metadata = onnx_export.onnx_metadata(contract, dim, source["weights_sha256"])
        metadata["max_image_pixels"] = str(max_pixels)  # the ONNX client's limit, as the SavedModel's
        onnx_export.write_onnx(model, contract, onnx_path, metadata)
        artifacts["onnx"] = onnx_export.onnx_artifact(onnx_path, tmp, contract, dim, metadata)
    if "litert" in formats:
        litert_path = tmp / "litert" / f"{name}.tflite"
        litert_path.parent.mkdir()
        metadata = litert_export.litert_metadata(contract, dim, source["weights_sha256"])
        sidecar = litert_export.write_litert(model, contract, litert_path, metadata)
        artifacts["litert"] = litert_export.litert_artifact(litert_path, sidecar, tmp, contract, dim)
    return sm_dir, onnx_path, litert_path, artifacts


def _versions(onnx: bool, litert: bool = False) -> dict:
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
    if litert:
        from importlib.metadata import version

        versions["ai_edge_litert"] = version("ai-edge-litert")
    return versions
