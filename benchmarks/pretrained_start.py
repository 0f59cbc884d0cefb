"""Adapting a pretrained encoder to a new domain: which learning rate, warmup and frozen layers help.

There are no ImageNet weights offline, so the "pretrained" encoder is made
here: Barlow Twins on the Imagenette photos (1,000 images, downscaled to
32 px) for a few epochs. It is then adapted on a CIFAR-10 subset (the new
domain) for the same short budget in each variant, and every result is the
kNN top-1 of the encoder on held-out CIFAR-10 images (bank: the adaptation
images), all in one process, one after the other:

- scratch: random init, the base learning rate;
- pretrained, no adaptation: the Imagenette encoder as it is;
- pretrained + the base learning rate; + a quarter of it; + a quarter with
  the stem and first stage frozen (``model.freeze``).

Usage:

    PYTHONPATH=. python benchmarks/pretrained_start.py --cifar CIFAR_ROOT --imagenette IMAGENETTE_ROOT
        [--per-class 500] [--test-per-class 200] [--pretrain-epochs 15] [--epochs 3] [--json out.json]

``CIFAR_ROOT`` holds ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``;
``IMAGENETTE_ROOT`` holds ``train/<wnid>/*.JPEG`` (``../shared/data`` archives,
extracted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bt_keras.config import config_from_dict  # noqa: E402
from bt_keras.training import evaluate_knn, train  # noqa: E402


def subset(src: Path, dst: Path, per_class: int) -> Path:
    """``dst/<class>/`` with symlinks to the first ``per_class`` images of each class of ``src``."""
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(cls.iterdir())[:per_class]:
            link = dst / cls.name / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
    return dst


def base_config(source: str, bank: str, test: str, epochs: int, lr: float, run_dir: Path) -> dict:
    return {
        "data": {"source": source, "image_size": 32, "validate": "off"},
        "model": {"encoder": "resnet18_cifar", "width": 16, "projector_dims": [512, 512, 512]},
        "optim": {"name": "adamw", "lr_weights": lr, "weight_decay": 1e-4, "warmup_epochs": 1},
        "train": {"epochs": epochs, "batch_size": 128, "run_dir": str(run_dir), "verbose": 0},
        "eval": {"train_source": bank, "test_source": test, "compare_random_init": False},
        "monitor": {"health": False, "correlation_image": False, "report": False},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", required=True, type=Path)
    parser.add_argument("--imagenette", required=True, type=Path)
    parser.add_argument("--work", type=Path, default=Path(f"/tmp/bt_pretrained_start_{os.getpid()}"))
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.004, help="base lr_weights (x batch/256)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    work = args.work
    bank = f"folder:{subset(args.cifar / 'train', work / 'cifar_train', args.per_class)}"
    test = f"folder:{subset(args.cifar / 'test', work / 'cifar_test', args.test_per_class)}"
    rows = []

    def run(name, raw, epochs=None):
        started = time.perf_counter()
        cfg = config_from_dict(raw)
        summary = train(cfg)
        row = {
            "variant": name,
            "steps": summary["steps"],
            "knn_top1": summary["knn_trained"]["top1"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        return summary

    pretrain = base_config(
        f"folder:{args.imagenette / 'train'}", bank, test, args.pretrain_epochs, args.lr, work / "pretrain"
    )
    pretrain["train"]["batch_size"] = 64
    run("pretrain on Imagenette (then kNN on CIFAR-10)", pretrain)
    start = str(work / "pretrain" / "encoder.keras")

    from bt_keras.training import build_model

    cfg = config_from_dict(base_config(bank, bank, test, 1, args.lr, work / "unused"))
    cfg.model.init_weights = start
    started = time.perf_counter()
    pretrained = evaluate_knn(build_model(cfg, 32).encoder, cfg)["top1"]
    rows.append({"variant": "pretrained, no adaptation", "steps": 0, "knn_top1": pretrained, "seconds": 0})
    cfg.model.init_weights = "none"
    random = evaluate_knn(build_model(cfg, 32).encoder, cfg)["top1"]
    rows.append({"variant": "random init, no training", "steps": 0, "knn_top1": random, "seconds": 0})
    print(json.dumps(rows[-2:]), round(time.perf_counter() - started, 1), flush=True)

    source = bank
    variants = [
        ("scratch, lr 1x", None, 1.0, []),
        ("pretrained, lr 1x", start, 1.0, []),
        ("pretrained, lr 0.25x", start, 0.25, []),
        ("pretrained, lr 0.25x, stem + stage 1 frozen", start, 0.25, ["stem_", "stage1_"]),
    ]
    for name, init, scale, freeze in variants:
        raw = base_config(source, bank, test, args.epochs, args.lr * scale, work / name.replace(" ", "_"))
        raw["model"].update(init_weights=init, freeze=freeze)
        run(name, raw)

    print("\n| variant | steps | kNN top-1 | seconds |\n| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['variant']} | {row['steps']} | {row['knn_top1']:.3f} | {row['seconds']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
