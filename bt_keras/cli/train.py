"""``bt-train``: pretrain a Barlow Twins encoder from a YAML config.

    bt-train --config configs/demo.yaml [--set train.epochs=5 ...] [--run-dir DIR]

The config is read and checked before TensorFlow is imported, so a typo is
reported at once. See ``bt_keras.training`` for what a run directory holds.
"""

from __future__ import annotations

import sys

from bt_keras.cli import ArgumentParser, load_tensorflow, run_command, select_backend, tensorflow_fault
from bt_keras.errors import CheckpointUnreadable, TrainingStopped

PROG = "bt-train"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Pretrain a Barlow Twins encoder from a YAML config (resumes a run directory it finds).",
        epilog=(
            "config sections: data (source, image size, augmentations), model (encoder, projector, lambda),\n"
            "optim (LARS/AdamW, learning rates, warmup), train (epochs, batch, strategy, precision, run_dir),\n"
            "eval (final kNN), monitor (kNN, health, report). Every key, its meaning and default:\n"
            "docs/training.md in the bt_keras repository; complete examples: configs/*.yaml."
        ),
    )
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=5 (repeatable)",
    )
    parser.add_argument("--run-dir", help="run directory (default: train.run_dir from the config)")
    return parser


def print_summary(summary: dict) -> None:
    if not summary.get("chief", True):
        print(f"{PROG}: worker done after {summary['steps']} steps; the chief writes the run's files")
        return
    if summary.get("already_complete"):
        print(
            f"{PROG}: this run is already complete ({summary['steps']} steps; encoder: {summary.get('encoder')}); "
            "raise train.epochs to train on, or use another --run-dir"
        )
    else:
        print(f"{PROG}: {summary['steps']} steps in {summary['seconds']} s; encoder: {summary.get('encoder')}")
    if "knn_trained" in summary:
        rows = [("trained encoder", summary["knn_trained"])]
        if "knn_random_init" in summary:
            rows.append(("random init (same arch)", summary["knn_random_init"]))
        print(f"{'kNN (held-out split)':<26}{'top-1':>8}{'top-5':>8}")
        for name, acc in rows:
            print(f"{name:<26}{acc['top1']:>8.3f}{acc['top5']:>8.3f}")


def _body(argv) -> int:
    args = build_parser().parse_args(argv)
    from bt_keras.config import check_source_names, load_config

    cfg = load_config(args.config, args.set)
    check_source_names(cfg)  # a typo in a source, before TensorFlow's start-up
    if cfg.train.strategy == "multi_worker":
        from bt_keras.tf_config import check_tf_config

        check_tf_config()  # likewise a missing or malformed TF_CONFIG
    cfg.data.service.check_reachable()  # a wrong dispatcher address fails here, before TensorFlow loads
    select_backend(cfg.train.backend)
    load_tensorflow()
    import tensorflow as tf

    from bt_keras.training import train

    try:
        summary = train(cfg, args.run_dir)
    except (TrainingStopped, CheckpointUnreadable) as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 1
    except tf.errors.OpError as e:  # a fault inside TensorFlow (full disk under a writer); checkpoints are intact
        return tensorflow_fault(PROG, e)
    if summary.get("signal") == "SIGINT":
        return 130  # interrupted by the user (the checkpoint is written; the line above says so)
    print_summary(summary)
    return 0


def main(argv=None):
    sys.exit(run_command(PROG, _body, argv))


if __name__ == "__main__":
    main()
