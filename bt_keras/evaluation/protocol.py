"""One call for every protocol: :func:`evaluate` a frozen encoder, and the table ``bt-eval`` prints.

Examples:

>>> from bt_keras.evaluation.protocol import format_table
>>> print(format_table({"knn": {"k": 20, "temperature": 0.1, "top1": 0.5, "top5": 0.9}}))
protocol             top-1   top-5
kNN (k=20, T=0.1)   0.5000  0.9000
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from bt_keras.errors import UserError
from bt_keras.evaluation import LINEAR_MODES, PROTOCOLS
from bt_keras.evaluation.features import eval_batches, extract_features
from bt_keras.evaluation.knn import knn_accuracy
from bt_keras.evaluation.linear import linear_probe, linear_probe_sgd


def _source_name(source) -> str:
    return source if isinstance(source, str) else "arrays"


def evaluate(
    encoder,
    train_data,
    test_data,
    *,
    protocol: str = "knn",
    linear: str = "fast",
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 256,
    epochs: int = 100,
    C: float = 1.0,
    data_dir=None,
    seed: int = 0,
    log: Callable | None = None,
    max_image_pixels=None,
) -> dict:
    """Runs the kNN and/or linear protocol on a :class:`~bt_keras.frozen.FrozenEncoder`; returns the report dict.

    Args:
        encoder: the frozen encoder, with its contract.
        train_data, test_data: labelled sources (see :mod:`bt_keras.data`).
        protocol: ``"knn"``, ``"linear"`` or ``"both"``.
        linear: ``"fast"`` (logistic regression) or ``"paper"`` (SGD with crops).
        k, temperature: the kNN vote.
        batch_size: feature-extraction batch size.
        epochs: epochs of the paper protocol.
        C: inverse L2 strength of the fast probe.
        data_dir: TFDS ``data_dir``.
        seed: seed of the paper protocol.
        log: ``log(message)`` as each step starts.
        max_image_pixels: larger images are skipped (None: the default limit; a run's
            ``data.max_image_pixels``).

    Examples:

    >>> import keras
    >>> from bt_keras.contract import PreprocessingContract
    >>> from bt_keras.frozen import FrozenEncoder
    >>> enc = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten()])
    >>> fe = FrozenEncoder.from_keras(enc, PreprocessingContract(image_size=32, crop_fraction=1.0))
    >>> r = evaluate(fe, "demo:train", "demo:test", protocol="knn")
    >>> r["num_test"], r["knn"]["k"]
    (359, 200)
    """
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if linear not in LINEAR_MODES:
        raise UserError(f"linear mode must be one of {', '.join(LINEAR_MODES)}, got {linear!r}")
    c = encoder.contract
    log = log or (lambda msg: None)
    started = time.time()
    report = {
        "encoder": encoder.origin,
        "preprocessing": json.loads(c.to_json()),
        "train_data": _source_name(train_data),
        "test_data": _source_name(test_data),
        "protocol": protocol,
    }
    if protocol in ("knn", "both") or linear == "fast":
        log("extracting features")
        x_tr, y_tr = extract_features(encoder, eval_batches(train_data, c, batch_size, data_dir, max_image_pixels))
        x_te, y_te = extract_features(encoder, eval_batches(test_data, c, batch_size, data_dir, max_image_pixels))
        report.update(
            num_train=len(y_tr),
            num_test=len(y_te),
            feature_dim=int(x_tr.shape[1]),
            feature_seconds=round(time.time() - started, 1),
        )
    if protocol in ("knn", "both"):
        log(f"kNN (k={k}, T={temperature})")
        report["knn"] = dict(
            knn_accuracy(x_tr, y_tr, x_te, y_te, k=k, temperature=temperature),
            k=k,
            temperature=temperature,
            similarity="cosine",
            vote="weighted exp(sim/T)",
        )
    if protocol in ("linear", "both") and linear == "fast":
        log("linear probe (L-BFGS logistic regression)")
        report["linear"] = linear_probe(x_tr, y_tr, x_te, y_te, C=C)
    elif protocol in ("linear", "both"):
        log(f"linear probe (paper protocol, {epochs} epochs)")
        report["linear"] = linear_probe_sgd(
            encoder,
            train_data,
            test_data,
            c,
            epochs=epochs,
            eval_batch_size=batch_size,
            data_dir=data_dir,
            seed=seed,
            log=log,
            max_image_pixels=max_image_pixels,
        )
        for key in ("num_train", "num_test", "feature_dim"):
            report.setdefault(key, report["linear"][key])
    report["seconds"] = round(time.time() - started, 1)
    return report


def format_table(report: dict) -> str:
    """The short table ``bt-eval`` prints: top-1 and top-5 of each protocol in ``report``.

    Args:
        report: as returned by :func:`evaluate`.

    Examples:

    >>> print(format_table({"linear": {"mode": "fast", "top1": 0.25, "top5": 0.75}}))
    protocol                       top-1   top-5
    linear, logistic regression   0.2500  0.7500
    """
    rows = []
    if "knn" in report:
        r = report["knn"]
        rows.append((f"kNN (k={r['k']}, T={r['temperature']:g})", r))
    if "linear" in report:
        r = report["linear"]
        name = "linear, logistic regression" if r["mode"] == "fast" else f"linear, paper SGD ({r['epochs']} ep, final)"
        rows.append((name, r))
    width = max([len(n) for n, _ in rows] + [10]) + 2
    lines = [f"{'protocol':<{width}}{'top-1':>8}{'top-5':>8}"]
    lines += [f"{n:<{width}}{r['top1']:>8.4f}{r['top5']:>8.4f}" for n, r in rows]
    return "\n".join(lines)
