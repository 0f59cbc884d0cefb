#!/usr/bin/env python3
"""Serving latency and throughput of exported encoders: Keras vs SavedModel vs ONNX Runtime.

For each encoder (ResNet-18 at 224 px with the ImageNet stem, the CIFAR
ResNet-18 at 32 px, and a tiny CNN that shows each runtime's fixed cost per
call) this exports through ``bt_keras.export.export_encoder``
(so the parity gate runs on the real networks too), then times, at batch 1 and
32, in one process and one run so the numbers are comparable side by side:

- ``keras``: ``encoder(x, training=False)`` (eager call, preprocessed float input)
- ``sm_float``: SavedModel ``serve_float`` signature (preprocessed float input)
- ``sm_bytes``: SavedModel ``serving_default`` (JPEG bytes; decode + crop + resize + normalise in the graph)
- ``ort``: ONNX Runtime on the preprocessed float input
- ``ort_bytes``: ONNX Runtime plus the serving kit's numpy/Pillow preprocessing of the same JPEG bytes
- ``ort_int8`` (``--int8``): ONNX Runtime on the int8 model of ``bt-export --quantize int8``, calibrated on
  256 Imagenette train photos; its retrieval gate runs on 256 Imagenette val photos (never calibrated on),
  and the table adds the file sizes and the gate's measures

Latency is the median wall time of one call, timed in interleaved rounds (a
block of calls of every runtime per round, after a short pause) so that load
from other processes affects all alike and one runtime's spinning thread pool
does not slow the next; throughput is batch / median.
Target (issue 4): ONNX Runtime ≤ 0.5 × SavedModel ``serve_float`` latency at batch 1.
Targets (issue 25, ``--int8``): int8 ≤ 0.5 × float32 ONNX Runtime latency at batch 32, int8 file ≤ 0.3 × the
float32 file, top-10 neighbour overlap ≥ 0.9.

    PYTHONPATH=. python benchmarks/serving.py                 # all three encoders, ≈ 2 minutes on 2 idle cores
    PYTHONPATH=. python benchmarks/serving.py --models cifar --seconds 1 --json out.json
    PYTHONPATH=. python benchmarks/serving.py --models resnet18_224 --int8 --seconds 2   # needs ../shared/data
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bt_keras import encoders, export, preprocess  # noqa: E402

MODELS = {
    "resnet18_224": dict(depth=18, stem="imagenet", size=224, source=(256, 320)),
    "cifar": dict(depth=18, stem="cifar", size=32, source=(32, 32)),
    # Almost no compute: shows each runtime's fixed cost per call.
    "tiny_cnn": dict(depth=None, size=32, source=(32, 32)),
}


def _build(spec: dict, width: int):
    size = spec["size"]
    if spec["depth"] is None:
        return encoders.small_cnn(widths=(8, 16), input_shape=(size, size, 3))
    return encoders.resnet(spec["depth"], stem=spec["stem"], width=width, input_shape=(size, size, 3))


def _kit_onnx_client():
    spec = importlib.util.spec_from_file_location("onnx_client", REPO / "export" / "onnx_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jpegs(count: int, shape, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    h, w = shape
    out = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.float32)
        base = tf.image.resize(coarse[None], [h, w])[0].numpy()
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        out.append(tf.io.encode_jpeg(pixels, quality=90).numpy())
    return out


def _time_interleaved(
    runs: dict, seconds: float, min_rounds: int = 3, block_seconds: float = 0.25, pause: float = 0.05
) -> dict:
    """Median seconds per call of each runtime, timed in interleaved rounds of blocks.

    Each round runs every runtime for a block of calls (rotating the order), so
    load from other processes on a shared machine hits all runtimes alike.
    Blocks, a pause before each and the first call of a block left out: the
    runtimes share this process, and the thread pools of the one that just ran
    (TF's and ONNX Runtime's both spin-wait after work) would otherwise take
    cores from the next; as separate servers they would not.
    """
    per_call = {}
    for name, fn in runs.items():  # warm-up: graph tracing, allocator, thread pools
        for _ in range(3):
            fn()
        t = time.perf_counter()
        fn()
        per_call[name] = time.perf_counter() - t
    calls = {name: max(2, min(200, int(block_seconds / max(dt, 1e-6)))) for name, dt in per_call.items()}
    names = list(runs)
    times = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < seconds * len(names):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(pause)
            for i in range(calls[name] + 1):
                t = time.perf_counter()
                runs[name]()
                if i:
                    times[name].append(time.perf_counter() - t)
        rounds += 1
    return {name: statistics.median(v) for name, v in times.items()}


def _imagenette(data: Path, cache: Path) -> Path:
    """The Imagenette photos (``train/``, ``val/``), extracted once into ``cache`` with the embed benchmark's helper."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from embed import extracted

    archive = data / "imagenette-224-mini.tar.gz"
    if not archive.is_file():
        raise SystemExit(f"--int8 needs {archive} (--data)")
    root = extracted(archive, cache, "train")
    return root if (root / "train").is_dir() else next(p for p in root.iterdir() if (p / "train").is_dir())


def _int8_settings(photos: Path | None):
    if photos is None:
        return {}
    from bt_keras.export.quantize import Int8Settings

    settings = Int8Settings(f"folder:{photos / 'train'}", gate_source=f"folder:{photos / 'val'}")
    return {"quantize": "int8", "int8": settings}


def _sizes(result) -> dict:
    """File sizes in MB of each exported model (SavedModel: its variables)."""
    variables = sum(f.stat().st_size for f in (result.saved_model_dir / "variables").iterdir())
    sizes = {"saved_model_variables": variables, "onnx": result.onnx_path.stat().st_size}
    if result.int8_onnx_path is not None:
        sizes["onnx_int8"] = result.int8_onnx_path.stat().st_size
    return {k: round(v / 1e6, 2) for k, v in sizes.items()}


def _ort_session(path):
    import onnxruntime

    return None if path is None else onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def bench_model(key: str, width: int, batches, seconds: float, workdir: Path, photos: Path | None = None) -> list:
    spec = MODELS[key]
    size = spec["size"]
    encoder = _build(spec, width)
    t = time.perf_counter()
    result = export.export_encoder(encoder, workdir / key, size, **_int8_settings(photos))
    export_seconds = time.perf_counter() - t
    gate = (result.report["int8"] or {}).get("targets", {}).get("onnxruntime")
    contract = export.make_contract(size)
    loaded = tf.saved_model.load(str(result.saved_model_dir))
    serve_float = loaded.signatures["serve_float"]
    serve_bytes = loaded.signatures["serving_default"]
    session, int8_session = (_ort_session(p) for p in (result.onnx_path, result.int8_onnx_path))
    try:
        client = _kit_onnx_client().OnnxEncoder(str(result.onnx_path))
    except ImportError:
        client = None
    rows = []
    for batch in batches:
        encoded = _jpegs(batch, spec["source"], seed=batch)
        pixels = np.stack(
            [
                preprocess.preprocess_for_eval(tf.constant(b), size, crop_fraction=contract.crop_fraction).numpy()
                for b in encoded
            ]
        )
        pixels_t = tf.constant(pixels)
        encoded_t = tf.constant(encoded)
        runs = {
            "keras": lambda: encoder(pixels_t, training=False).numpy(),
            "sm_float": lambda: serve_float(images=pixels_t)["embedding"].numpy(),
            "sm_bytes": lambda: serve_bytes(image_bytes=encoded_t)["embedding"].numpy(),
            "ort": lambda: session.run(["embedding"], {"images": pixels})[0],
        }
        if client is not None:
            runs["ort_bytes"] = lambda: client.embed_bytes(encoded)
        if int8_session is not None:
            runs["ort_int8"] = lambda: int8_session.run(["embedding"], {"images": pixels})[0]
        medians = _time_interleaved(runs, seconds)
        for name, median in medians.items():
            rows.append(
                {
                    "model": key,
                    "width": width,
                    "image_size": size,
                    "batch": batch,
                    "runtime": name,
                    "median_ms": median * 1e3,
                    "images_per_s": batch / median,
                    "export_seconds": round(export_seconds, 1),
                    "parity_worst_rel": result.report["parity"]["worst"]["max_rel_diff"],
                    "sizes_mb": _sizes(result),
                    "int8_gate": gate,
                }
            )
            print(
                f"  {key:13s} batch {batch:3d}  {name:10s} {median * 1e3:9.2f} ms  {batch / median:9.1f} img/s",
                flush=True,
            )
    return rows


LABELS = {
    "keras": "Keras call (eager)",
    "sm_float": "SavedModel `serve_float`",
    "sm_bytes": "SavedModel `serving_default` (JPEG bytes)",
    "ort": "ONNX Runtime",
    "ort_bytes": "ONNX Runtime + client preprocessing (JPEG bytes)",
    "ort_int8": "ONNX Runtime, int8 (QDQ)",
}


def _median(sub, runtime: str, batch: int) -> float | None:
    found = [r["median_ms"] for r in sub if r["runtime"] == runtime and r["batch"] == batch]
    return found[0] if found else None


def int8_lines(sub) -> list:
    """The int8 rows' verdicts: latency and size against float32, and the retrieval gate's measures."""
    gate, sizes = sub[0]["int8_gate"], sub[0]["sizes_mb"]
    if gate is None:
        return []
    lines = []
    for batch in sorted({r["batch"] for r in sub}):
        int8, f32 = _median(sub, "ort_int8", batch), _median(sub, "ort", batch)
        if int8 is not None and f32 is not None:
            target = " (target ≤ 0.5×)" if batch == 32 else ""
            lines.append(f"- int8 / float32 ONNX Runtime latency at batch {batch}: {int8 / f32:.2f}×{target}")
    lines.append(
        f"- files: ONNX float32 {sizes['onnx']} MB, int8 {sizes['onnx_int8']} MB"
        f" ({sizes['onnx_int8'] / sizes['onnx']:.2f}×, target ≤ 0.3×); SavedModel variables"
        f" {sizes['saved_model_variables']} MB"
    )
    knn = (
        f", kNN top-1 {gate['knn_top1_float32']:.3f} (float32) vs {gate['knn_top1_int8']:.3f} (int8)"
        if "knn_top1_int8" in gate
        else ""
    )
    lines.append(
        f"- gate on {gate['images']} held-out photos: median cosine {gate['median_cosine']:.4f}, 5th percentile"
        f" {gate['p5_cosine']:.4f}, top-10 neighbour overlap {gate['neighbour_overlap']:.3f} (target ≥ 0.9){knn};"
        f" {'published' if gate['published'] else 'refused'}"
    )
    return lines


def table(rows) -> str:
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == model]
        batches = sorted({r["batch"] for r in sub})
        head = sub[0]
        arch = "small CNN, widths 8-16" if MODELS[model]["depth"] is None else f"ResNet-18, width {head['width']}"
        lines.append(
            f"**{model}** ({arch}, {head['image_size']} px; export {head['export_seconds']} s,"
            f" parity worst relative difference {head['parity_worst_rel']:.1e})\n"
        )
        lines.append("| runtime | " + " | ".join(f"batch {b}: median ms | batch {b}: img/s" for b in batches) + " |")
        lines.append("|---|" + "---:|---:|" * len(batches))
        for runtime in dict.fromkeys(r["runtime"] for r in sub):
            cells = []
            for b in batches:
                (r,) = [x for x in sub if x["runtime"] == runtime and x["batch"] == b]
                cells += [f"{r['median_ms']:.2f}", f"{r['images_per_s']:.0f}"]
            lines.append(f"| {LABELS[runtime]} | " + " | ".join(cells) + " |")
        if 1 in batches:
            ort = [r for r in sub if r["runtime"] == "ort" and r["batch"] == 1][0]["median_ms"]
            sm = [r for r in sub if r["runtime"] == "sm_float" and r["batch"] == 1][0]["median_ms"]
            verdict = "meets" if ort <= 0.5 * sm else "misses"
            lines.append(
                f"\nONNX Runtime / SavedModel latency at batch 1: {ort / sm:.2f}× ({verdict} the ≤ 0.5× target)\n"
            )
        lines += int8_lines(sub)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet18_224,cifar,tiny_cnn", help=f"comma-separated from {', '.join(MODELS)}")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--width", type=int, default=64, help="ResNet first-stage width (64 = standard ResNet-18)")
    p.add_argument("--seconds", type=float, default=3.0, help="timing budget per cell")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--int8", action="store_true", help="add the int8 ONNX model (bt-export --quantize int8)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="directory with the .tar.gz archives")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "bt_keras" / "bench-data"))
    args = p.parse_args(argv)
    photos = _imagenette(Path(args.data), Path(args.cache)) if args.int8 else None
    batches = [int(b) for b in args.batches.split(",")]
    import keras
    import onnxruntime

    print(
        f"TF {tf.__version__}, Keras {keras.__version__}, ONNX Runtime {onnxruntime.__version__},"
        f" {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} (other processes share the cores)",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            rows += bench_model(key, args.width, batches, args.seconds, Path(tmp), photos)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
