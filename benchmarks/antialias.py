"""Does dropping the crop's antialiasing cost quality? ``crop.antialias`` true vs false, repeated seeds.

Each run is ``bt-train`` on the Imagenette mini set (1,000 training photos of
224×224, 10 classes; ``../shared/data``) with 64-px views, so every crop is a
downscale (by 1.1-3.5×) where antialiasing matters, for the same number of
steps in both settings; its score is ``bt-train``'s final kNN (k=200, T=0.1,
bank: the 1,000 training photos, queries: the 500 validation photos). The
table gives each seed, the mean and standard deviation over seeds of each
setting, and the paired difference (same seed, both settings) against its
own spread.

Usage:

    PYTHONPATH=. python benchmarks/antialias.py --seeds 0,1,2 --epochs 30 --out /tmp/antialias
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

RECIPE = [  # a small ResNet at 64 px from 224-px photos: the ImageNet recipe's views, scaled down
    "data.image_size=64",
    "data.crop_fraction=0.875",
    "data.augment.preset=imagenet",
    "data.augment.crop.scale=[0.2,1.0]",
    "model.encoder=resnet18",
    "model.width=32",
    "model.projector_dims=[1024,1024,1024]",
    "optim.name=adamw",
    "optim.lr_weights=0.008",
    "optim.weight_decay=1.0e-4",
    "optim.warmup_epochs=2",
    "train.batch_size=128",
    "train.verbose=0",
    "train.mixed_precision=mixed_bfloat16",
    "monitor.report=false",
]


def _photos(data: Path, cache: Path) -> Path:
    root = cache / "imagenette-224-mini"
    if not (root / ".complete").exists():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(data / "imagenette-224-mini.tar.gz") as tar:
            tar.extractall(root, filter="data")
        (root / ".complete").touch()
    inner = [p for p in root.iterdir() if p.is_dir()]
    return root if (root / "train").is_dir() else inner[0]


def one_run(photos: Path, out: Path, seed: int, antialias: bool, epochs: int) -> dict:
    """Trains one run (or reads its earlier result) and returns ``{"top1", "top5", "seconds"}``."""
    run = out / f"antialias-{str(antialias).lower()}-seed{seed}"
    done = run / "summary.json"
    if not done.exists():
        sets = [
            *RECIPE,
            f"data.source=folder:{photos / 'train'}",
            f"eval.train_source=folder:{photos / 'train'}",
            f"eval.test_source=folder:{photos / 'val'}",
            f"data.augment.crop.antialias={str(antialias).lower()}",
            f"data.seed={seed}",
            f"train.seed={seed}",
            f"train.epochs={epochs}",
        ]
        cmd = [sys.executable, "-m", "bt_keras.cli.train", "--config", str(REPO / "configs" / "demo.yaml")]
        cmd += ["--run-dir", str(run)] + [a for s in sets for a in ("--set", s)]
        print("$ " + " ".join(cmd[1:]), flush=True)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    summary = json.loads(done.read_text())
    return {**summary["knn_trained"], "seconds": summary.get("seconds")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "bt_keras" / "bench-data"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", default="runs/antialias")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    photos, out = _photos(Path(args.data), Path(args.cache)), Path(args.out)
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    top1 = {True: [], False: []}
    for seed in seeds:  # interleaved, so a change in the machine's load hits both settings alike
        for antialias in (True, False):
            r = one_run(photos, out, seed, antialias, args.epochs)
            top1[antialias].append(r["top1"])
            print(f"seed {seed}, antialias {antialias}: kNN top-1 {r['top1']:.3f}, top-5 {r['top5']:.3f}", flush=True)
    on, off = np.array(top1[True]), np.array(top1[False])
    diff = on - off
    print(f"\nload average at end {os.getloadavg()[0]:.1f}; {args.epochs} epochs per run, seeds {seeds}")
    print("| crop.antialias | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std over seeds |")
    print("|---|" + "---:|" * (len(seeds) + 2))
    for name, v in (("true (default)", on), ("false", off)):
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {v.mean():.3f} | {v.std(ddof=1):.3f} |")
    print("| true − false (same seed) | " + " | ".join(f"{x:+.3f}" for x in diff) + f" | {diff.mean():+.3f} | "
          f"{diff.std(ddof=1):.3f} |")  # fmt: skip
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    verdict = "distinguishable" if abs(diff.mean()) > 2 * se else "not distinguishable"
    print(f"mean paired difference {diff.mean():+.3f} ± {se:.3f} (standard error): {verdict} from seed noise at 2 SE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
