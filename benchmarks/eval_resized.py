"""kNN of a run's encoder at another input size than it trained at (FixRes-style evaluation).

    python benchmarks/eval_resized.py RUN_DIR --image-size 32 [--train-data SRC --test-data SRC]

A convolutional encoder ending in global pooling has weights that do not depend on the input
size, so an encoder trained on 24-px crops can be scored on 32-px images: this rebuilds the run's
``encoder.keras`` with a new input size, copies the weights, and runs ``bt-eval``'s kNN (k=200,
T=0.1, the whole training source as the bank) with the run's normalisation at the new size.
Used by the small-budget experiments in ``docs/experiments.md`` ("Small-budget knobs"). An
encoder whose weights depend on the size (a Flatten, a ViT's position table) is refused.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resized_encoder(encoder, image_size: int):
    """A copy of the functional ``encoder`` taking ``image_size`` square images, with its weights."""
    config = encoder.get_config()
    inputs = [layer for layer in config["layers"] if layer["class_name"] == "InputLayer"]
    if len(inputs) != 1:
        raise SystemExit(f"eval_resized.py: the encoder has {len(inputs)} inputs; one image input is needed")
    shape = list(inputs[0]["config"]["batch_shape"])
    inputs[0]["config"]["batch_shape"] = [shape[0], image_size, image_size, shape[3]]
    try:
        resized = encoder.__class__.from_config(config)
        resized.set_weights(encoder.get_weights())
    except ValueError as e:
        from bt_keras.errors import one_line

        raise SystemExit(f"eval_resized.py: the encoder's weights depend on its input size: {one_line(e)}") from None
    return resized


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a bt-train run directory (encoder.keras, preprocessing.json)")
    p.add_argument("--image-size", type=int, required=True, help="the size to evaluate at")
    p.add_argument("--train-data", help="kNN bank (default: the run's eval.train_source, else its kNN monitor's)")
    p.add_argument("--test-data", help="kNN queries (default: the run's eval.test_source, else its kNN monitor's)")
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)

    from bt_keras.config import load_config
    from bt_keras.contract import make_contract, read_contract
    from bt_keras.evaluation.protocol import evaluate
    from bt_keras.frozen import FrozenEncoder
    from bt_keras.saving import load_encoder

    trained = read_contract(os.path.join(args.run, "preprocessing.json"))
    if not (args.train_data and args.test_data):
        cfg = load_config(os.path.join(args.run, "config.yaml"))
        # bt-eval's defaults, then the kNN monitor's sources (what benchmarks/ablations.py runs set).
        args.train_data = args.train_data or cfg.eval.train_source or cfg.monitor.knn_train_source
        args.test_data = args.test_data or cfg.eval.test_source or cfg.monitor.knn_val_source
        if not (args.train_data and args.test_data):
            raise SystemExit("eval_resized.py: the run names no labelled sources; give --train-data and --test-data")
    encoder = resized_encoder(load_encoder(os.path.join(args.run, "encoder.keras")), args.image_size)
    contract = make_contract(
        args.image_size, trained.mean, trained.std, trained.crop_fraction, trained.pixel_shuffle_seed
    )
    report = evaluate(
        FrozenEncoder.from_keras(encoder, contract),
        args.train_data,
        args.test_data,
        protocol="knn",
        batch_size=args.batch_size,
    )
    result = {"run": args.run, "trained_at": trained.image_size, "evaluated_at": args.image_size}
    print(json.dumps({**result, "knn": report["knn"]}))


if __name__ == "__main__":
    main()
