"""The parity gate: an export is kept only if every runtime gives the Keras model's embeddings.

The same images (PNG and JPEG, odd sizes, grayscale and RGBA, so every decode
path runs) go through the Keras model and each exported target (both
SavedModel signatures, ONNX Runtime, the LiteRT interpreter) at every batch size of
:data:`PARITY_BATCHES`; the export is refused unless each target's largest
relative difference is within the tolerance.

Examples:

>>> from bt_keras.export.parity import relative_difference
>>> relative_difference([[1.0, 0.0]], [[0.0, 1.0]])[0] > 1
True
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from bt_keras import preprocess
from bt_keras.errors import ExportFailed, one_line
from bt_keras.export.checks import policy_names
from bt_keras.export.layout import INPUT_FLOAT_KEY, OUTPUT_KEY, PARITY_BATCHES


def parity_images(contract, count: int, seed: int = 0) -> list:
    """``count`` deterministic test images as encoded bytes.

    They mix PNG and JPEG, odd sizes and aspect ratios, grayscale and RGBA,
    so every decode path is exercised.

    Args:
        contract: gives the image size the test images are built around.
        count: how many images.
        seed: the NumPy seed.

    Examples:

    >>> from bt_keras.contract import make_contract
    >>> [b[:4] for b in parity_images(make_contract(16), 2)]
    [b'\\xff\\xd8\\xff\\xe0', b'\\x89PNG']
    """
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


def preprocess_eager(encoded, contract) -> np.ndarray:
    """Encoded images preprocessed by the contract, stacked as ``[N, S, S, 3]`` float32."""
    return np.stack(
        [
            preprocess.preprocess_for_eval(
                tf.constant(b), contract.image_size, contract.mean, contract.std, contract.crop_fraction
            ).numpy()
            for b in encoded
        ]
    )


def warmup_example(contract) -> tuple:
    """One ``(encoded bytes, preprocessed pixels)`` example for TF Serving's warm-up requests."""
    encoded = parity_images(contract, 1, seed=1)[0]
    return encoded, preprocess_eager([encoded], contract)[0]


def relative_difference(got, want) -> tuple[float, float]:
    """(max over rows of ‖got − want‖₂ / ‖want‖₂, max absolute difference).

    Args:
        got: the target's embeddings ``[N, D]``.
        want: the reference embeddings ``[N, D]``; a shape mismatch gives ``inf``.

    Examples:

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


def _targets(sm_dir, onnx_path, litert_path=None) -> list:
    """``(name, run(pixels, encoded) -> embeddings, takes_bytes)`` for every exported runtime."""
    targets = []
    if sm_dir is not None:
        loaded = tf.saved_model.load(str(sm_dir))
        serve_float, serve_bytes = loaded.signatures["serve_float"], loaded.signatures["serving_default"]
        targets.append(
            ("saved_model:serve_float", lambda px, _: serve_float(images=tf.constant(px))[OUTPUT_KEY].numpy(), False)
        )
        targets.append(
            (
                "saved_model:serving_default",
                lambda _, enc: serve_bytes(image_bytes=tf.constant(enc, tf.string))[OUTPUT_KEY].numpy(),
                True,
            )
        )
    if onnx_path is not None:
        import onnxruntime

        try:
            session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ExportFailed(f"ONNX Runtime cannot load the converted encoder: {one_line(e)}") from e
        targets.append(("onnxruntime", lambda px, _: session.run([OUTPUT_KEY], {INPUT_FLOAT_KEY: px})[0], False))
    if litert_path is not None:
        from bt_keras.export.litert_export import litert_runner

        run_litert = litert_runner(litert_path)
        targets.append(("litert", lambda px, _: run_litert(px), False))
    return targets


def _check(target, batch, inputs, got, want, tolerance) -> dict:
    rel, abs_ = relative_difference(got, want)
    return {
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


def measure_parity(model, contract, sm_dir, onnx_path, tolerance, source_model=None, litert_path=None) -> dict:
    """Runs the parity images through the Keras model and every export; the report's ``parity`` entry.

    Args:
        model: the exported (float32) Keras encoder, the reference.
        contract: the preprocessing contract.
        sm_dir, onnx_path: the written SavedModel and ONNX file, or ``None``.
        litert_path: the written ``.tflite`` file, or ``None``.
        tolerance: the largest relative difference a check passes with.
        source_model: the encoder as given, when it was rebuilt in float32: its
            difference from ``model`` is recorded, not gated.

    Raises:
        ExportFailed: a runtime could not load or run the export.
    """
    encoded_all = parity_images(contract, max(PARITY_BATCHES))
    targets = _targets(sm_dir, onnx_path, litert_path)
    checks = []
    for batch in PARITY_BATCHES:
        encoded = encoded_all[:batch]
        pixels = preprocess_eager(encoded, contract)
        want = keras.ops.convert_to_numpy(model(pixels, training=False)).astype(np.float32)
        for target, run, takes_bytes in targets:
            try:
                got = np.asarray(run(pixels, encoded))
            except Exception as e:
                raise ExportFailed(f"{target} failed on the parity images at batch {batch}: {one_line(e)}") from e
            inputs = np.array(encoded, dtype=object) if takes_bytes else pixels
            checks.append(_check(target, batch, inputs, got, want, tolerance))
    worst = max(checks, key=lambda c: c["max_rel_diff"]) if checks else None
    return {
        "tolerance": tolerance,
        "metric": "max over images of ||target - keras||_2 / ||keras||_2",
        "batches": list(PARITY_BATCHES),
        "checks": checks,
        "worst": None if worst is None else {k: worst[k] for k in ("target", "batch", "max_rel_diff")},
        "passed": all(c["passed"] for c in checks),
        "source_precision": source_precision(model, source_model, contract, encoded_all),
    }


def source_precision(model, source_model, contract, encoded) -> dict | None:
    """How far a reduced-precision source is from its float32 export (informational, not gated)."""
    if source_model is None or source_model is model:
        return None
    pixels = preprocess_eager(encoded, contract)
    rel, abs_ = relative_difference(
        keras.ops.convert_to_numpy(source_model(pixels, training=False)).astype(np.float32),
        keras.ops.convert_to_numpy(model(pixels, training=False)),
    )
    return {
        "note": "source model in its own dtype policy vs the exported float32 model (informational)",
        "dtype_policies": policy_names(source_model),
        "batch": len(encoded),
        "max_rel_diff": rel,
        "max_abs_diff": abs_,
    }


def require_parity(parity: dict) -> None:
    """Raises :class:`ExportFailed` naming the worst failing checks unless the gate passed."""
    if parity["passed"]:
        return
    bad = [c for c in parity["checks"] if not c["passed"]]
    summary = "; ".join(f"{c['target']} at batch {c['batch']}: {c['max_rel_diff']:.3g}" for c in bad[:3])
    raise ExportFailed(
        f"parity gate failed (relative tolerance {parity['tolerance']:g}): {summary}; nothing was written"
    )
