"""Which encoder families export to which format: the parity gate decides, per family and format.

For each family (built-in ResNet, ``keras.applications`` models, a KerasHub
Vision Transformer from a local preset, a user ``.keras`` file) the encoder
is built through ``model.encoder`` at random init, once in float32 and once
under ``mixed_bfloat16`` (rebuilt in float32 by the exporter), and exported
to each format on its own with ``bt_keras.export.export_encoder``; the table
gives the worst relative difference of the gate, or the one-line reason the
export was refused. Everything stays on this machine (no weights download).

Usage:

    PYTHONPATH=. python benchmarks/backbones_export.py [--size 32] [--json out.json]
    PYTHONPATH=. python benchmarks/backbones_export.py --only keras.applications.ConvNeXtTiny --formats onnx
    PYTHONPATH=. python benchmarks/backbones_export.py --quantize int8 --formats onnx,litert --precisions float32

With ``--quantize int8`` each cell is the int8 retrieval gate instead (``bt-export --quantize int8``,
calibrated on 128 digits of ``demo:train``, gated on 128 of ``demo:test``): median cosine / top-10
neighbour overlap / kNN top-1 drop, and whether the default thresholds publish the int8 file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402

from bt_keras.config import config_from_dict  # noqa: E402
from bt_keras.errors import ExportFailed, UserError  # noqa: E402
from bt_keras.export import export_encoder  # noqa: E402
from bt_keras.export.quantize import Int8Settings  # noqa: E402
from bt_keras.training import build_model  # noqa: E402

FORMATS = ("saved_model", "onnx", "litert")
FAMILIES = (
    "resnet18_cifar",
    "keras.applications.MobileNetV3Small",
    "keras.applications.EfficientNetV2B0",
    "keras.applications.ConvNeXtTiny",
    "keras.applications.ResNet50V2",
    "keras_hub:VIT",
    "file:KERAS",
)


def _vit_preset(tmp: Path, size: int) -> str:
    import keras_hub

    vit = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    path = tmp / "vit_preset"
    vit.save_to_preset(str(path))
    return f"keras_hub:{path}"


def _user_file(tmp: Path, size: int) -> str:
    # A user's own functional model ending in a feature map (pooled by bt_keras).
    images = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(images)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="gelu")(x)
    path = tmp / "user_model.keras"
    keras.Model(images, x).save(path)
    return f"file:{path}"


def _int8_cell(result, fmt: str) -> dict:
    gate = result.report["int8"]["targets"]["onnxruntime" if fmt == "onnx" else "litert"]
    keys = ("median_cosine", "p5_cosine", "neighbour_overlap", "knn_top1_drop", "bytes", "float32_bytes", "failures")
    return {"passed": gate["published"], "worst": gate["median_cosine"], **{k: gate[k] for k in keys}}


def export_row(encoder_name: str, size: int, tmp: Path, precision: str, formats=FORMATS, quantize=None) -> dict:
    keras.config.set_dtype_policy(precision)
    try:
        cfg = config_from_dict({"model": {"encoder": encoder_name, "width": 16, "projector_dims": [16, 16]}})
        encoder = build_model(cfg, size).encoder
    finally:
        keras.config.set_dtype_policy("float32")
    row = {"encoder": encoder_name, "precision": precision, "params": encoder.count_params()}
    for fmt in formats:
        started = time.perf_counter()
        try:
            int8 = {}
            if quantize:
                settings = Int8Settings("demo:train", gate_source="demo:test", calibration_images=128, gate_images=128)
                int8 = {"quantize": quantize, "int8": settings}
            result = export_encoder(encoder, tmp / f"out_{fmt}", size, formats=(fmt,), overwrite=True, **int8)
            row[fmt] = {"passed": True, "worst": result.report["parity"]["worst"]["max_rel_diff"]}
            if quantize:
                row[fmt] = _int8_cell(result, fmt)
        except (ExportFailed, UserError) as e:
            row[fmt] = {"passed": False, "reason": str(e)}
        row[fmt]["seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps({"encoder": encoder_name, "precision": precision, fmt: row[fmt]}), flush=True)
    return row


def _cell(cell: dict) -> str:
    if "reason" in cell:
        return f"refused: {cell['reason'][:90]}"
    if "neighbour_overlap" in cell:
        verdict = "published" if cell["passed"] else "refused"
        return (
            f"{cell['median_cosine']:.4f} / {cell['neighbour_overlap']:.3f} / {cell['knn_top1_drop']:+.3f}"
            f" ({cell['bytes'] / cell['float32_bytes']:.2f}x size, {verdict})"
        )
    return f"ok {cell['worst']:.1e}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--only", action="append", help="encoder(s) to run (default: all)")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--quantize", choices=["int8"], help="measure the int8 retrieval gate instead of parity")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.only or FAMILIES:
            shown = name
            if name == "keras_hub:VIT":
                name = _vit_preset(tmp, args.size)
                shown = "keras_hub:<ViT preset dir>"
            elif name == "file:KERAS":
                name = _user_file(tmp, args.size)
                shown = "file:<user model>.keras"
            for precision in args.precisions.split(","):
                row = export_row(name, args.size, tmp, precision, args.formats.split(","), args.quantize)
                row["encoder"] = shown
                rows.append(row)
    formats = args.formats.split(",")
    print(f"\n| encoder | precision | params | {' | '.join(formats)} |")
    print("| --- | --- | ---: |" + " --- |" * len(formats))
    for row in rows:
        cells = [_cell(row[f]) for f in formats]
        print(f"| `{row['encoder']}` | {row['precision']} | {row['params']:,} | {' | '.join(cells)} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
