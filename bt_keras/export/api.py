"""``export_encoder``: check, rebuild in float32, write each format, gate on parity, publish.

Examples:

>>> from bt_keras import encoders
>>> from bt_keras.export import export_encoder
>>> enc = encoders.small_cnn(widths=(8, 16), input_shape=(32, 32, 3))
>>> result = export_encoder(enc, "/tmp/bt_export_doc", image_size=32, overwrite=True)
>>> result.report["parity"]["passed"]
True
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
from bt_keras.export.layout import REPORT_FILE
from bt_keras.export.publish import check_destination, publish, staging_directory
from bt_keras.export.saved_model import saved_model_artifact, write_saved_model
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

    Examples:

    >>> ExportResult(Path("/x"), None, None, {}).onnx_path is None
    True
    """

    out_dir: Path
    saved_model_dir: Path | None
    onnx_path: Path | None
    report: dict
    litert_path: Path | None = None


def make_contract(image_size, mean=None, std=None, crop_fraction=None) -> contract_lib.PreprocessingContract:
    """:func:`bt_keras.contract.make_contract`, its errors as :class:`ExportArgumentError`.

    Args:
        image_size, mean, std, crop_fraction: as for :func:`bt_keras.contract.make_contract`.

    Examples:

    >>> make_contract(32).crop_fraction
    1.0
    >>> make_contract(0)
    Traceback (most recent call last):
    ...
    bt_keras.errors.ExportArgumentError: image size must be a positive integer, got 0
    """
    try:
        return contract_lib.make_contract(image_size, mean, std, crop_fraction)
    except UserError as e:
        raise ExportArgumentError(str(e)) from None


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

    Returns:
      :class:`ExportResult`; ``report`` is also written to ``out_dir/export_report.json``.

    Raises:
      ExportArgumentError: bad arguments or an existing export without ``overwrite``.
      ExportFailed: conversion or parity failed; nothing is written.

    Examples:

    >>> from bt_keras import encoders
    >>> enc = encoders.small_cnn(widths=(8, 16), input_shape=(32, 32, 3))
    >>> r = export_encoder(enc, "/tmp/bt_doc_export", 32, formats=("onnx",), overwrite=True)
    >>> r.onnx_path.name, r.report["parity"]["passed"]
    ('encoder.onnx', True)
    """
    started = datetime.datetime.now(datetime.timezone.utc)
    formats = layout.check_formats(formats)
    if "litert" in formats:
        litert_export.require_interpreter()  # before any work: a one-line error naming the extra
    layout.check_name(name)
    checks.check_version_and_tolerance(version, tolerance)
    if int(max_image_pixels) < 1:
        raise ExportArgumentError(f"max_image_pixels must be >= 1, got {max_image_pixels}")
    contract = make_contract(image_size, mean, std, crop_fraction)
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
    with staging_directory(out_dir) as tmp:
        sm_dir, onnx_path, litert_path, artifacts = _write_formats(
            model, contract, tmp, formats, name, int(version), dim, source, int(max_image_pixels)
        )
        gate = parity.measure_parity(
            model, contract, sm_dir, onnx_path, tolerance, source_model=encoder, litert_path=litert_path
        )
        parity.require_parity(gate)
        report = {
            "bt_keras_version": __version__,
            "created_utc": started.isoformat(timespec="seconds"),
            "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 2),
            "name": name,
            "version": int(version),
            "formats": list(formats),
            "embedding_dim": dim,
            "preprocessing": json.loads(contract.to_json()),
            "source": source,
            "artifacts": artifacts,
            "parity": gate,
            "versions": _versions(onnx="onnx" in formats, litert="litert" in formats),
        }
        atomic_write(tmp / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        # The ONNX and LiteRT files of this name, written or not: one this export lacks (fewer --formats
        # than the export it replaces) is removed, so no file of the previous model stays beside the
        # report. SavedModel versions are kept side by side (TF Serving serves each), as before.
        litert = Path("litert") / f"{name}.tflite"
        entries = [Path("onnx") / f"{name}.onnx", litert, litert.with_suffix(".preprocessing.json")]
        if sm_dir is not None:
            entries.insert(0, sm_dir.relative_to(tmp))
        publish(tmp, out_dir, overwrite, entries=[*entries, REPORT_FILE])
    return ExportResult(
        out_dir=out_dir,
        saved_model_dir=None if sm_dir is None else out_dir / sm_dir.relative_to(tmp),
        onnx_path=None if onnx_path is None else out_dir / onnx_path.relative_to(tmp),
        report=report,
        litert_path=None if litert_path is None else out_dir / litert_path.relative_to(tmp),
    )


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
