"""``bt-export``: export a trained encoder as a TF Serving SavedModel and/or ONNX, behind a parity gate.

    bt-export --run runs/cifar --out exports/cifar [--name encoder] [--version 1] [--formats saved_model,onnx]
    bt-export --encoder enc.keras --out exports/enc [--image-size 32]   (size: the encoder's static input)
    bt-export --run runs/cifar --out exports/cifar --quantize int8 [--formats saved_model,onnx,litert]

The preprocessing contract is the run's (or the one next to ``--encoder``)
``preprocessing.json``; ``--image-size/--mean/--std/--crop-fraction`` may
repeat it but not contradict it. Bad arguments: one line, exit code 2; a
failed export (conversion, parity), or an int8 file the retrieval gate
refused (the float32 files are published; one line says which measure
failed and by how much): exit code 1; SIGTERM or Ctrl-C: exit
code 130. Nothing is left behind in any case. See :mod:`bt_keras.export`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bt_keras.cli import ArgumentParser, load_tensorflow, run_command, tensorflow_fault, use_tensorflow_backend
from bt_keras.cli.args import floats, fraction, model_version, pixel_limit, positive_int, unit_interval
from bt_keras.contract import MAX_IMAGE_PIXELS, read_contract, resolve_contract
from bt_keras.errors import ExportArgumentError, ExportFailed, one_line
from bt_keras.export.layout import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_FORMATS,
    DEFAULT_GATE_IMAGES,
    DEFAULT_TOLERANCE,
    INT8_THRESHOLD_FLAGS,
    INT8_THRESHOLDS,
    MIN_GATE_IMAGES,
    ONNX_OPSET,
    QUANTIZE_MODES,
    check_formats,
    check_name,
    require_litert,
)
from bt_keras.export.publish import stop_on_sigterm
from bt_keras.saving import keras_file_image_size

PROG = "bt-export"


def build_parser() -> ArgumentParser:
    """The ``bt-export`` argument parser."""
    p = ArgumentParser(
        prog=PROG,
        description="Export a trained encoder as a TF Serving SavedModel and/or ONNX, behind a parity gate.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_DIR", help="bt-train run directory (encoder.keras + preprocessing.json)")
    src.add_argument("--encoder", metavar="FILE.keras", help="an encoder saved with encoder.save(...)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--name", default="encoder", help="TF Serving model name (default: encoder)")
    p.add_argument("--version", type=model_version, default=1, help="TF Serving model version (default: 1)")
    p.add_argument(
        "--formats",
        default=",".join(DEFAULT_FORMATS),
        help="comma-separated: saved_model,onnx,litert (default: saved_model,onnx; litert needs ai-edge-litert)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace this --name/--version (and its ONNX/LiteRT files) in DIR; other versions stay",
    )
    p.add_argument(
        "--max-image-pixels",
        type=pixel_limit,
        default=MAX_IMAGE_PIXELS,
        help="serving_default refuses a request image whose header announces more pixels (default 100,000,000)",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        help="image side (with --encoder: default the encoder's static input size, or preprocessing.json next to it)",
    )
    p.add_argument("--mean", type=floats, help="RGB mean, e.g. 0.485,0.456,0.406 (default: ImageNet)")
    p.add_argument("--std", type=floats, help="RGB std, e.g. 0.229,0.224,0.225 (default: ImageNet)")
    p.add_argument("--crop-fraction", type=fraction, help="centre crop fraction (default: 0.875 from 64 px, 1.0 below)")
    p.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="parity gate relative tolerance (default: 1e-4)"
    )
    _add_int8_arguments(p)
    return p


def _add_int8_arguments(p) -> None:
    """``--quantize int8`` and its calibration, held-out and threshold flags."""
    g = p.add_argument_group("int8 (--quantize int8: ONNX Runtime QDQ and LiteRT full-integer, retrieval-gated)")
    g.add_argument("--quantize", choices=QUANTIZE_MODES, help="also write int8 ONNX/LiteRT models, retrieval-gated")
    g.add_argument(
        "--calibration-source",
        metavar="SRC",
        help="images to calibrate on (demo:test, folder:PATH, tfrecord:GLOB, tfds:NAME[:SPLIT]); "
        "default with --run: the run's data.source",
    )
    g.add_argument(
        "--calibration-images",
        metavar="N",
        type=positive_int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"calibration images (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    g.add_argument("--gate-source", metavar="SRC", help="held-out images (default: others of --calibration-source)")
    g.add_argument(
        "--gate-images",
        metavar="N",
        type=positive_int,
        default=DEFAULT_GATE_IMAGES,
        help=f"held-out images the gate embeds (default {DEFAULT_GATE_IMAGES}, at least {MIN_GATE_IMAGES})",
    )
    for key, flag in INT8_THRESHOLD_FLAGS.items():
        g.add_argument(
            flag,
            dest=key,
            metavar="X",
            type=unit_interval,
            default=INT8_THRESHOLDS[key],
            help=f"{key.replace('_', ' ')} (default {INT8_THRESHOLDS[key]:g})",
        )


def _int8_settings(args):
    """The :class:`~bt_keras.export.quantize.Int8Settings` of the flags (the run's data.source by default)."""
    from bt_keras.export.quantize import Int8Settings

    source, data_dir = args.calibration_source, None
    config_file = None if args.run is None else Path(args.run) / "config.yaml"
    if config_file is not None and config_file.is_file():
        from bt_keras.config import load_config

        cfg = load_config(str(config_file))
        source, data_dir = source or cfg.data.source, cfg.data.data_dir
    settings = Int8Settings(
        calibration_source=source,
        gate_source=args.gate_source,
        calibration_images=args.calibration_images,
        gate_images=args.gate_images,
        thresholds={key: getattr(args, key) for key in INT8_THRESHOLDS},
        data_dir=data_dir,
    )
    settings.check()
    return settings


def _sources(args) -> tuple:
    """``(encoder file, preprocessing.json or None)`` named by ``--run`` or ``--encoder``."""
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
        return encoder_file, contract_file
    encoder_file = Path(args.encoder)
    if not encoder_file.is_file():
        raise ExportArgumentError(f"encoder file {encoder_file} does not exist")
    contract_file = encoder_file.parent / "preprocessing.json"
    return encoder_file, contract_file if contract_file.is_file() else None


def _resolve(args):
    """Encoder file, contract file and contract from the arguments; checks that need no TensorFlow."""
    encoder_file, contract_file = _sources(args)
    recorded = None if contract_file is None else read_contract(contract_file)
    if recorded is not None and recorded.pixel_shuffle_seed is not None:
        # An ablation's encoder expects pixel-permuted inputs; neither the SavedModel's image_bytes
        # signature nor ONNX clients (which preprocess themselves) would apply the permutation,
        # so every served embedding would be silently wrong. Evaluate it with bt-eval --run instead.
        raise ExportArgumentError(
            f"{contract_file}: the encoder was trained with data.augment.pixel_shuffle (an ablation) and "
            "expects pixel-permuted inputs, which the exported serving contract cannot express; not exported "
            "(evaluate it with bt-eval --run)"
        )
    image_size = args.image_size
    if image_size is None and recorded is None:
        image_size = keras_file_image_size(encoder_file)  # a static input says it (None when it does not)
    contract = resolve_contract(
        recorded,
        image_size=image_size,
        mean=args.mean,
        std=args.std,
        crop_fraction=args.crop_fraction,
        where=str(contract_file or encoder_file.parent),
    )
    return encoder_file, contract_file, contract


def _print_result(result) -> None:
    parity = result.report["parity"]
    print(f"{PROG}: wrote {result.out_dir}")
    if result.saved_model_dir is not None:
        print(f"  SavedModel  {result.saved_model_dir}  (signatures serving_default, serve_float)")
    if result.onnx_path is not None:
        print(f"  ONNX        {result.onnx_path}  (opset {ONNX_OPSET})")
    if result.litert_path is not None:
        sidecar = result.litert_path.with_suffix(".preprocessing.json")
        print(f"  LiteRT      {result.litert_path}  (contract: {sidecar.name} beside it)")
    worst = parity["worst"]
    print(
        f"  parity      worst relative difference {worst['max_rel_diff']:.2e}"
        f" ({worst['target']}, batch {worst['batch']}),"
        f" tolerance {parity['tolerance']:g}"
    )
    for gate in ((result.report.get("int8") or {}).get("targets") or {}).values():
        if gate["published"]:
            ratio = gate["bytes"] / gate["float32_bytes"]
            print(
                f"  int8        {result.out_dir / gate['path']}  ({ratio:.2f}x the float32 size;"
                f" median cosine {gate['median_cosine']:.4f}, top-10 overlap {gate['neighbour_overlap']:.3f})"
            )


def _int8_refusals(result) -> int:
    """Writes one line per int8 file the gate refused; 1 if any was, else 0."""
    from bt_keras.export.quantize import refusal_message

    refused = [(t, g) for t, g in ((result.report.get("int8") or {}).get("targets") or {}).items() if not g["passed"]]
    for target, gate in refused:
        sys.stderr.write(f"{PROG}: {refusal_message(target, gate)} (float32 files published)\n")
    return 1 if refused else 0


def _body(argv) -> int:
    args = build_parser().parse_args(argv)
    use_tensorflow_backend(PROG)
    formats = check_formats(args.formats)
    if "litert" in formats:
        require_litert()
    check_name(args.name, what="--name")
    encoder_file, contract_file, contract = _resolve(args)
    from bt_keras.export import publish

    publish.check_destination(Path(args.out).absolute(), args.overwrite)
    if args.quantize and not ({"onnx", "litert"} & set(formats)):
        raise ExportArgumentError("--quantize int8 writes int8 ONNX/LiteRT models: add onnx or litert to --formats")
    load_tensorflow()
    import tensorflow as tf

    from bt_keras.export import export_encoder

    int8 = _int8_settings(args) if args.quantize else None
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
            max_image_pixels=args.max_image_pixels,
            quantize=args.quantize,
            int8=int8,
        )
    except (ExportFailed, OSError) as e:
        # Not the user's arguments (exit 2) but the export itself; nothing was written.
        sys.stderr.write(f"{PROG}: export failed: {e if isinstance(e, ExportFailed) else one_line(e)}\n")
        return 1
    except tf.errors.OpError as e:  # e.g. a full disk while TensorFlow writes the SavedModel; nothing was published
        return tensorflow_fault(PROG, e)
    _print_result(result)
    return _int8_refusals(result)


def main(argv=None) -> int:
    """``bt-export`` entry point. Example: ``bt-export --run runs/cifar --out exports/cifar``."""
    # SIGTERM (docker stop, kill) unwinds like Ctrl-C so the temporary directory is removed.
    with stop_on_sigterm():
        try:
            return run_command(PROG, _body, argv)
        except SystemExit as e:  # argparse (--help, bad flags): return the code, as for every other outcome
            return e.code if isinstance(e.code, int) else 2


if __name__ == "__main__":
    sys.exit(main())
