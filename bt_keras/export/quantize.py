"""Int8 encoders (``--quantize int8``): ONNX Runtime static and LiteRT full-integer quantisation, retrieval-gated.

Quantisation changes values by design, so the float32 parity gate does not
apply. An int8 file is published only when it still finds the same images:
on held-out images (never the calibration ones) its embeddings are compared
with the float32 model's by cosine similarity (median and 5th percentile),
by the overlap of each image's top-10 neighbours and, when the images have
labels, by the kNN top-1 accuracy of each. Calibration and held-out images
come through the preprocessing contract (:func:`quantization_images`), so
calibration sees exactly what serving sees.

- ONNX: :func:`write_int8_onnx`, ONNX Runtime's static quantisation in QDQ
  format, per-channel int8 weights, uint8 activations calibrated by min/max
  (the U8S8 path its CPU kernels accelerate), the float model's
  ``metadata_props`` kept so the same client serves it.
- LiteRT: :func:`write_int8_litert`, full-integer post-training quantisation
  (``TFLITE_BUILTINS_INT8`` only) with the calibration images as the
  representative dataset; input and output stay float32, so the app feeds the
  same preprocessed pixels as to the float32 model.

Examples:

>>> import numpy as np
>>> from bt_keras.export.quantize import retrieval_measures
>>> x = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
>>> m = retrieval_measures(x, x + 1e-4, labels=None)
>>> round(m["median_cosine"], 4), m["neighbour_overlap"]
(1.0, 1.0)
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from bt_keras.errors import ExportArgumentError, ExportFailed, UserError, one_line
from bt_keras.export.layout import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_GATE_IMAGES,
    INPUT_FLOAT_KEY,
    INT8_NEIGHBOURS,
    INT8_THRESHOLD_FLAGS,
    INT8_THRESHOLDS,
    MIN_GATE_IMAGES,
    OUTPUT_KEY,
)

_BATCH = 32


@dataclasses.dataclass(frozen=True)
class Int8Settings:
    """Where the calibration and held-out images come from, how many, and the gate's thresholds.

    Args:
        calibration_source: a data source (``demo:test``, ``folder:PATH``,
            ``tfrecord:GLOB``, ``tfds:NAME[:SPLIT]``) or uint8 image arrays
            (``images`` or ``(images, labels)``).
        gate_source: where the held-out images come from; ``None``: images of
            ``calibration_source`` that calibration does not see.
        calibration_images, gate_images: how many of each.
        thresholds: overrides of :data:`~bt_keras.export.layout.INT8_THRESHOLDS`.
        data_dir: TensorFlow Datasets directory for ``tfds:`` sources.
        seed: which images are drawn.

    Examples:

    >>> Int8Settings("demo:test", thresholds={"min_median_cosine": 0.99}).gate_thresholds()["min_median_cosine"]
    0.99
    """

    calibration_source: object
    gate_source: object = None
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    gate_images: int = DEFAULT_GATE_IMAGES
    thresholds: dict | None = None
    data_dir: str | None = None
    seed: int = 0

    def gate_thresholds(self) -> dict:
        """The defaults with this run's overrides; a one-line error names a bad key or value."""
        merged = dict(INT8_THRESHOLDS)
        for key, value in (self.thresholds or {}).items():
            if key not in INT8_THRESHOLDS:
                raise ExportArgumentError(f"unknown int8 threshold {key!r}; choose from {', '.join(INT8_THRESHOLDS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ExportArgumentError(f"{INT8_THRESHOLD_FLAGS[key]} must be a number in [0, 1], got {value!r}")
            merged[key] = float(value)
        return merged

    def check(self) -> None:
        """Refuses bad counts or thresholds before any work (one line)."""
        self.gate_thresholds()
        if self.calibration_source is None:
            raise ExportArgumentError(
                "--quantize int8 needs calibration images: pass --calibration-source (or export with --run)"
            )
        for flag, value, low in (
            ("--calibration-images", self.calibration_images, 1),
            ("--gate-images", self.gate_images, MIN_GATE_IMAGES),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ExportArgumentError(f"{flag} must be an integer >= {low}, got {value!r}")


def _sample(source, count: int, contract, settings: Int8Settings, flag: str, seed: int):
    from bt_keras.data.labelled import sample_labelled

    try:
        pixels, labels = sample_labelled(
            source, count, contract, data_dir=settings.data_dir, seed=seed, require_labels=False
        )
    except UserError as e:
        raise ExportArgumentError(f"{flag}: {e}") from None
    return pixels.astype(np.float32), labels


def quantization_images(settings: Int8Settings, contract) -> tuple:
    """``(calibration pixels, held-out pixels, held-out labels or None)``, preprocessed by the contract.

    From one source the two sets are disjoint: a seeded permutation of one
    sample is split. Arrays are float32 ``[N, S, S, 3]``.

    Args:
        settings: the sources, counts and seed.
        contract: the preprocessing contract (the evaluation pipeline applies it).

    Raises:
        ExportArgumentError: a source cannot be read or has too few images.
    """
    calib_n, gate_n = int(settings.calibration_images), int(settings.gate_images)
    if settings.gate_source is None:
        pixels, labels = _sample(
            settings.calibration_source, calib_n + gate_n, contract, settings, "--calibration-source", settings.seed
        )
        order = np.random.default_rng(settings.seed).permutation(len(pixels))
        if len(pixels) < calib_n + gate_n:  # a small source: half for each rather than no calibration
            gate_n = min(gate_n, len(pixels) // 2)
        held, calib = order[:gate_n], order[gate_n:]
        calibration, gate, gate_labels = pixels[calib], pixels[held], labels[held]
    else:
        calibration, _ = _sample(
            settings.calibration_source, calib_n, contract, settings, "--calibration-source", settings.seed
        )
        gate, gate_labels = _sample(
            settings.gate_source, gate_n, contract, settings, "--gate-source", settings.seed + 1
        )
    if len(gate) < MIN_GATE_IMAGES:
        raise ExportArgumentError(
            f"--gate-images: only {len(gate)} held-out images available, the int8 gate needs at least {MIN_GATE_IMAGES}"
        )
    has_labels = gate_labels is not None and len(gate_labels) and np.min(gate_labels) >= 0
    return calibration, gate, (gate_labels if has_labels else None)


def _calibration_reader(calibration: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(calibration):
                return None
            batch = calibration[self.start : self.start + _BATCH]
            self.start += _BATCH
            return {INPUT_FLOAT_KEY: np.ascontiguousarray(batch, np.float32)}

    return _Reader()


def write_int8_onnx(float_path: Path, int8_path: Path, calibration: np.ndarray, extra_metadata: dict) -> None:
    """ONNX Runtime static quantisation of ``float_path`` into ``int8_path`` (QDQ, per-channel weights).

    The model is first optimised by ``quant_pre_process`` (ONNX Runtime's
    recommended step: constant folding and fusions, so each quantised node is
    a whole convolution); activations are uint8 and weights int8 (U8S8, what
    the x86 kernels run fastest); ranges are the calibration images' min/max.
    The float model's ``metadata_props`` (the contract) are kept and
    ``extra_metadata`` added.

    Args:
        float_path: the float32 ONNX model.
        int8_path: where to write the int8 model.
        calibration: preprocessed float32 images ``[N, S, S, 3]``.
        extra_metadata: string entries added to ``metadata_props``.

    Raises:
        ExportFailed: ONNX Runtime could not quantise the model.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="bt_int8_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # skip_symbolic_shape: the graph's only dynamic dimension is the batch; that step needs sympy.
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(int8_path),
                _calibration_reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as e:
            raise ExportFailed(f"ONNX Runtime could not quantise the encoder to int8: {one_line(e)}") from e
    proto = onnx.load(str(int8_path))
    kept = {p.key: p.value for p in onnx.load(str(float_path)).metadata_props}
    kept.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra_metadata.items()})
    del proto.metadata_props[:]
    for key, value in kept.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(int8_path))


def write_int8_litert(model, contract, path: Path, metadata: dict, calibration: np.ndarray) -> Path:
    """Full-integer LiteRT model at ``path`` (float32 input and output), contract JSON beside it.

    Args:
        model: the float32 encoder.
        contract: its preprocessing contract.
        path: the ``.tflite`` file to write.
        metadata: :func:`~bt_keras.export.litert_export.litert_metadata` plus the quantisation entries.
        calibration: preprocessed float32 images, the representative dataset.

    Returns:
        The path of the ``.preprocessing.json`` file.

    Raises:
        ExportFailed: an op has no int8 LiteRT kernel (named).
    """
    import tensorflow as tf

    from bt_keras.export import litert_export

    def configure(converter):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

    return litert_export.write_litert(model, contract, path, metadata, configure=configure)


def _embed(run, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(run(pixels[i : i + _BATCH]), np.float32) for i in range(0, len(pixels), _BATCH)])


def _top_neighbours(embeddings: np.ndarray, k: int) -> np.ndarray:
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)  # an image is not its own neighbour
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def retrieval_measures(reference, candidate, labels, neighbours: int = INT8_NEIGHBOURS) -> dict:
    """What quantisation did to retrieval: ``reference`` (float32) vs ``candidate`` (int8) embeddings.

    Args:
        reference, candidate: ``[N, D]`` embeddings of the same held-out images.
        labels: their classes, or ``None``: then no kNN accuracy. The kNN uses
            the even-indexed images as the bank and the odd ones as queries,
            each model with its own bank (k = 20, as bt_keras' kNN monitor votes).
        neighbours: the k of the neighbour overlap.

    Returns:
        ``median_cosine``, ``p5_cosine``, ``neighbour_overlap`` (mean over images of
        |top-k(reference) ∩ top-k(candidate)| / k) and, with labels,
        ``knn_top1_float32``, ``knn_top1_int8`` and ``knn_top1_drop``.

    Examples:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(30, 8))
    >>> retrieval_measures(x, -x, labels=None)["median_cosine"]
    -1.0
    """
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-12)
    cosine = np.where(np.isfinite(cosine), cosine, -1.0)  # a NaN embedding counts as the worst
    k = min(neighbours, len(reference) - 1)
    near_ref, near_cand = _top_neighbours(reference, k), _top_neighbours(candidate, k)
    overlap = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(near_ref, near_cand)])
    out = {
        "images": len(reference),
        "median_cosine": float(np.median(cosine)),
        "p5_cosine": float(np.percentile(cosine, 5)),
        "neighbours": k,
        "neighbour_overlap": float(overlap),
    }
    if labels is not None:
        from bt_keras.evaluation.knn import knn_accuracy

        labels = np.asarray(labels)
        accuracy = {
            name: knn_accuracy(e[0::2], labels[0::2], e[1::2], labels[1::2], k=20)["top1"]
            for name, e in (("float32", reference), ("int8", candidate))
        }
        out.update(
            knn_top1_float32=accuracy["float32"],
            knn_top1_int8=accuracy["int8"],
            knn_top1_drop=accuracy["float32"] - accuracy["int8"],
        )
    return out


def gate_failures(measures: dict, thresholds: dict) -> list:
    """One phrase per measure below its threshold, naming the flag and by how much.

    Examples:

    >>> gate_failures({"median_cosine": 0.5, "p5_cosine": 0.99, "neighbour_overlap": 1.0}, INT8_THRESHOLDS)
    ['median cosine 0.5 < 0.98 (--int8-min-cosine; short by 0.48)']
    """
    failures = []
    for key, threshold in thresholds.items():
        measure = key.split("_", 1)[1]
        value = measures.get(measure)
        if value is None:
            continue  # no labels: no kNN
        low = key.startswith("min_")
        if (value < threshold) if low else (value > threshold):
            name = measure.replace("_", " ")
            gap = abs(value - threshold)
            sign = "<" if low else ">"
            word = "short" if low else "over"
            failures.append(
                f"{name} {value:.4g} {sign} {threshold:g} ({INT8_THRESHOLD_FLAGS[key]}; {word} by {gap:.3g})"
            )
    return failures


def measure_int8(model, gate_pixels, gate_labels, runners: dict, thresholds: dict, calibration_count: int) -> dict:
    """Embeds the held-out images with the float32 model and each int8 runtime; the report's ``int8`` entry.

    Args:
        model: the float32 Keras encoder, the reference.
        gate_pixels, gate_labels: the held-out images and their labels (or ``None``).
        runners: target name (``onnxruntime``, ``litert``) -> ``run(pixels) -> embeddings``.
        thresholds: :meth:`Int8Settings.gate_thresholds`.
        calibration_count: how many images calibrated (recorded).
    """
    import keras

    reference = _embed(lambda x: keras.ops.convert_to_numpy(model(x, training=False)), gate_pixels)
    targets = {}
    for name, run in runners.items():
        try:
            embeddings = _embed(run, gate_pixels)
        except Exception as e:
            raise ExportFailed(f"int8 {name} failed on the held-out images: {one_line(e)}") from e
        measures = retrieval_measures(reference, embeddings, gate_labels)
        failures = gate_failures(measures, thresholds)
        targets[name] = {**measures, "passed": not failures, "failures": failures}
    return {
        "note": "int8 vs the float32 Keras model on held-out images (not the calibration ones)",
        "calibration_images": int(calibration_count),
        "held_out_images": int(len(gate_pixels)),
        "labels": gate_labels is not None,
        "thresholds": thresholds,
        "targets": targets,
    }


def refusal_message(target: str, result: dict) -> str:
    """The one line that says why an int8 file was not published."""
    return f"int8 {target} not published: {'; '.join(result['failures'])}"


def onnx_runner(path: Path):
    """``run(pixels) -> embeddings`` through ONNX Runtime's CPU provider."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportFailed(f"ONNX Runtime cannot load the int8 encoder: {one_line(e)}") from e
    return lambda pixels: session.run([OUTPUT_KEY], {INPUT_FLOAT_KEY: np.ascontiguousarray(pixels)})[0]


QUANTIZATION_NOTE = (
    "post-training static int8: ONNX Runtime QDQ, per-channel int8 weights, uint8 activations (min/max calibration); "
    "LiteRT full-integer (TFLITE_BUILTINS_INT8), float32 input and output"
)
