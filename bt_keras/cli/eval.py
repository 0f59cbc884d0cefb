"""``bt-eval``: evaluate a frozen encoder with kNN and/or a linear probe, and write a JSON report.

    bt-eval --run runs/cifar --train-data folder:cifar10/train --test-data folder:cifar10/test --protocol both
    bt-eval --saved-model exports/cifar --train-data ... --test-data ...

The preprocessing contract is the recorded one (``preprocessing.json`` of the
run, next to ``--encoder``, or in the SavedModel's ``assets.extra``);
``--image-size/--mean/--std/--crop-fraction`` may repeat it but not contradict
it (one-line error, exit code 2). See :mod:`bt_keras.evaluation`.
"""

from __future__ import annotations

import json
import os
import sys

from bt_keras.cli import ArgumentParser, load_tensorflow, run_command, use_tensorflow_backend
from bt_keras.cli.args import (
    add_encoder_arguments,
    load_encoder_from_args,
    positive_float,
    positive_int,
    run_max_image_pixels,
    seed,
)
from bt_keras.errors import UserError
from bt_keras.evaluation import LINEAR_MODES, PROTOCOLS
from bt_keras.io import atomic_write

PROG = "bt-eval"


def build_parser() -> ArgumentParser:
    """The ``bt-eval`` argument parser."""
    parser = ArgumentParser(prog=PROG, description="Evaluate a frozen encoder: kNN and/or linear probe.")
    add_encoder_arguments(parser)
    parser.add_argument(
        "--train-data",
        help="labelled source for the kNN bank / probe training "
        "(folder:PATH, tfds:NAME[:SPLIT], tfrecord:GLOB, demo:train); default: the run's eval.train_source",
    )
    parser.add_argument("--test-data", help="labelled test source; default: the run's eval.test_source")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="both",
        help="knn: weighted kNN on the frozen features; linear: a linear probe; both (default)",
    )
    parser.add_argument(
        "--linear",
        choices=LINEAR_MODES,
        default="fast",
        help="fast: logistic regression on extracted features; paper: SGD 100 epochs with crops",
    )
    parser.add_argument("--k", type=positive_int, default=200, help="neighbours of the kNN vote (default 200)")
    parser.add_argument(
        "--temperature", type=positive_float, default=0.1, help="kNN vote weights exp(cosine / T) (default 0.1)"
    )
    parser.add_argument("--epochs", type=positive_int, default=100, help="epochs of the paper linear protocol")
    parser.add_argument("--C", type=positive_float, default=1.0, help="inverse L2 strength of the fast probe")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="feature-extraction batch")
    parser.add_argument("--data-dir", help="TFDS data_dir")
    parser.add_argument(
        "--report",
        help="JSON report path (default: eval_report.json beside the model: in RUN, in the --encoder file's "
        "directory, or in the bt-export output directory of --saved-model)",
    )
    parser.add_argument("--seed", type=seed, default=0)
    return parser


def _gfile(path: str):
    """``os.path`` for local paths (answered before TensorFlow starts), ``tf.io.gfile`` for ``gs://`` and the like."""
    if "://" not in path:
        return os.path
    import tensorflow as tf

    return tf.io.gfile


def _data_sources(args) -> tuple:
    """``(train source, test source, data_dir)``: the flags, else the run's ``config.yaml``."""
    train_data, test_data, data_dir = args.train_data, args.test_data, args.data_dir
    if args.run and not _gfile(args.run).isdir(args.run):
        raise UserError(f"--run {args.run}: no such directory")
    if args.run and (train_data is None or test_data is None):
        cfg_path = args.run.rstrip("/") + "/config.yaml"
        if _gfile(cfg_path).exists(cfg_path):
            from bt_keras.config import load_config

            cfg = load_config(cfg_path)
            train_data = train_data or cfg.eval.train_source
            test_data = test_data or cfg.eval.test_source
            data_dir = data_dir or cfg.data.data_dir
    if not train_data or not test_data:
        raise UserError("--train-data and --test-data are required (labelled sources)")
    return train_data, test_data, data_dir


def report_path(args) -> str:
    """Where the JSON report goes: ``--report``, else ``eval_report.json`` beside the evaluated model.

    Beside the model means the run directory, the ``--encoder`` file's
    directory, for ``--onnx`` the export's directory (``eval_report.onnx.json``,
    ``eval_report.int8.onnx.json``: an export's SavedModel and ONNX models each
    keep their own), or for ``--saved-model`` the directory given, except that a
    SavedModel directory itself is never written into: the report goes to the
    ``bt-export`` output directory above ``saved_model/<name>/<version>``, or
    else to the SavedModel's parent (a TF Serving model base path).

    Examples:

    >>> from types import SimpleNamespace as A
    >>> report_path(A(report=None, run=None, encoder="runs/a/encoder.keras", saved_model=None))
    'runs/a/eval_report.json'
    """
    import tensorflow as tf

    if args.report:
        return args.report
    if args.run:
        base = args.run.rstrip("/")
    elif args.encoder:
        base = os.path.dirname(args.encoder) or "."
    elif getattr(args, "onnx", None):  # an export's onnx/<name>.onnx reports beside its export_report.json
        base = os.path.dirname(args.onnx) or "."
        if os.path.basename(base) == "onnx":
            base = os.path.dirname(base) or "."
        # Named apart from the SavedModel's report of the same export (and the int8 model's from the float's).
        int8 = ".int8" if args.onnx.endswith(".int8.onnx") else ""
        return f"{base}/eval_report{int8}.onnx.json"
    else:
        base = args.saved_model.rstrip("/") or "/"
        if tf.io.gfile.exists(base + "/saved_model.pb"):
            parts = base.split("/")
            export_root = len(parts) > 3 and parts[-3] == "saved_model" and parts[-1].isdigit()
            base = "/".join(parts[:-3]) if export_root else (os.path.dirname(base) or ".")
    return base + "/eval_report.json"


def _check_writable(path: str) -> None:
    """Refuses a local report path whose directory cannot be written, before any evaluation."""
    if "://" in path:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise UserError(f"cannot write the report into {directory}: pass --report PATH")


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    train_data, test_data, data_dir = _data_sources(args)  # a missing source is said before TensorFlow starts
    use_tensorflow_backend(PROG)
    load_tensorflow()
    from bt_keras.evaluation import evaluate, format_table

    encoder = load_encoder_from_args(args)
    path = report_path(args)
    _check_writable(path)
    report = evaluate(
        encoder,
        train_data,
        test_data,
        protocol=args.protocol,
        linear=args.linear,
        k=args.k,
        temperature=args.temperature,
        batch_size=args.batch_size,
        epochs=args.epochs,
        C=args.C,
        data_dir=data_dir,
        seed=args.seed,
        max_image_pixels=run_max_image_pixels(args),
        log=lambda m: print(f"{PROG}: {m}", file=sys.stderr, flush=True),
    )
    atomic_write(path, json.dumps(report, indent=2) + "\n")
    print(
        f"{PROG}: {report['encoder']}: {report['num_train']} train / {report['num_test']} "
        f"test images, {report['feature_dim']}-d features"
    )
    print(format_table(report))
    print(f"report: {path}")
    return 0


def main(argv=None) -> int:
    """``bt-eval`` entry point; returns the exit code."""
    return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
