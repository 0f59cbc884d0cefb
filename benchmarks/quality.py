"""Quality benchmark: Barlow Twins pretraining on the CIFAR-10 JPEGs under a
wall-clock budget, then kNN top-1 on the test set next to baselines.

    python benchmarks/quality.py --minutes 30

1. Decodes the CIFAR-10 JPEG train/test folders (``../shared/data/cifar10-jpg.tar.gz``,
   extracted once into the same cache as the tests) into memory.
2. Baselines: kNN on raw pixels; the same encoder at random initialisation.
3. Pretrains with ``configs/cifar10_cpu.yaml`` until ``--minutes`` of training
   steps have run (time in the kNN checkpoints is not counted). The learning
   rate warms up over ``optim.warmup_epochs`` (in steps), then follows a cosine
   driven by the elapsed fraction of the budget, so the decay ends when the
   budget does whatever the throughput of the shared machine.
   After every epoch: kNN top-1 with a fixed 10k-image bank (the curve).
4. The final encoder: kNN with the full 50k bank (the headline number) and the
   fast linear probe; saved as a run directory (``OUT/run``) that
   ``bt-eval --run OUT/run`` reads.
5. Optionally a supervised encoder of the same architecture trained for
   ``--supervised-minutes`` (cross-entropy, crop + flip, same optimiser).

Writes ``OUT/results.json``, ``OUT/table.md``, ``OUT/knn_vs_time.png`` and
``OUT/command.txt``. kNN: k=200, T=0.1, cosine, weighted vote (bt_keras.evaluation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bt_keras import callbacks as cbs  # noqa: E402
from bt_keras import evaluation as ev  # noqa: E402
from bt_keras.config import load_config  # noqa: E402
from bt_keras.training import build_model, save_encoder  # noqa: E402

DATA = Path(os.environ.get("BT_KERAS_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("BT_KERAS_TEST_CACHE", Path.home() / ".cache" / "bt_keras" / "test-data"))


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cifar_root(data_root=None) -> Path:
    """The extracted CIFAR-10 JPEG root (``train/``, ``test/``); extracts once into the test cache."""
    if data_root:
        return Path(data_root)
    archive = DATA / "cifar10-jpg.tar.gz"
    if not archive.exists():
        sys.exit(f"quality.py: error: {archive} not found (set BT_KERAS_DATA or pass --data-root)")
    root = CACHE / f"cifar10-jpg-{archive.stat().st_size}-{int(archive.stat().st_mtime)}"
    if (root / ".complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".extract-"))
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    entries = list(tmp.iterdir())
    inner = entries[0] if len(entries) == 1 and not (tmp / "train").exists() else tmp
    inner.rename(root)
    (root / ".complete").touch()
    return root


def pixels(x, training=False):
    return tf.reshape(x, [tf.shape(x)[0], -1])


class WarmupThenTimeCosine:
    """lr(fraction, step): linear warmup over ``warmup_steps`` steps, then cosine
    from ``peak`` to ``peak × end_factor`` over the rest of the time budget."""

    def __init__(self, peak, warmup_steps, end_factor=0.001):
        self.peak, self.warmup_steps, self.end_factor = peak, max(int(warmup_steps), 0), end_factor
        self.f0 = None

    def __call__(self, fraction, step):
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        if self.f0 is None:
            self.f0 = fraction
        t = min(max((fraction - self.f0) / max(1.0 - self.f0, 1e-9), 0.0), 1.0)
        return self.peak * (self.end_factor + (1 - self.end_factor) * 0.5 * (1 + math.cos(math.pi * t)))


class BudgetWithSchedule(cbs.TimeBudget):
    """TimeBudget whose lr function also sees the step (warmup in steps)."""

    def __init__(self, seconds, schedule):
        super().__init__(seconds, learning_rate=lambda f: schedule(f, self.steps))


class Curve(keras.callbacks.Callback):
    """Pairs each kNN checkpoint with the training time spent so far."""

    def __init__(self, budget, monitor):
        super().__init__()
        self.budget, self.monitor, self.points = budget, monitor, []

    def on_epoch_end(self, epoch, logs=None):
        if logs and "knn_top1" in logs:
            self.points.append(
                {
                    "epoch": epoch + 1,
                    "train_seconds": round(self.budget.elapsed, 1),
                    "steps": self.budget.steps,
                    "knn_top1": logs["knn_top1"],
                    "knn_top5": logs["knn_top5"],
                }
            )
            log(
                f"epoch {epoch + 1}: {self.budget.elapsed / 60:.1f} min, {self.budget.steps} steps, "
                f"kNN top-1 (10k bank) {logs['knn_top1']:.4f}, loss {logs.get('loss', float('nan')):.1f}"
            )


def make_optimizer(cfg, peak):
    from bt_keras.optimizers import LARS

    o = cfg.optim
    if o.name == "lars":
        return LARS(
            peak,
            weight_decay=o.weight_decay,
            momentum=o.momentum,
            eta=o.eta,
            rank1_lr_multiplier=o.lr_biases / o.lr_weights,
        )
    return keras.optimizers.AdamW(peak, weight_decay=o.weight_decay)


@keras.saving.register_keras_serializable(package="bt_bench")
class Supervised(keras.Model):
    """Encoder + linear classifier, trained with labels (the supervised baseline)."""

    def __init__(self, encoder, num_classes=10, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.head = keras.layers.Dense(num_classes, dtype="float32")

    def call(self, x, training=False):
        return self.head(self.encoder(x, training=training))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "cifar10_cpu.yaml"))
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of pretraining steps")
    p.add_argument(
        "--supervised-minutes",
        type=float,
        default=None,
        help="budget of the supervised baseline (default: --minutes; 0 skips it)",
    )
    p.add_argument("--data-root", help="extracted CIFAR-10 JPEG root (train/, test/)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quality"))
    p.add_argument("--curve-bank", type=int, default=10000, help="kNN bank size for the per-epoch curve")
    p.add_argument("--no-linear", action="store_true", help="skip the fast linear probes")
    p.add_argument(
        "--skip-baselines", action="store_true", help="only pretrain and evaluate (for configuration exploration)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = p.parse_args(argv)
    started = time.time()
    sup_minutes = args.minutes if args.supervised_minutes is None else args.supervised_minutes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    (out / "command.txt").write_text(command + "\n")

    root = cifar_root(args.data_root)
    train_src, test_src = f"folder:{root}/train", f"folder:{root}/test"
    cfg = load_config(
        args.config,
        list(args.set)
        + [
            f"data.source={train_src}",
            "data.cache=true",
            f"eval.train_source={train_src}",
            f"eval.test_source={test_src}",
        ],
    )
    contract = cfg.data.contract()
    t, d = cfg.train, cfg.data
    keras.utils.set_random_seed(t.seed)
    keras.mixed_precision.set_dtype_policy(t.mixed_precision)
    results = {
        "command": command,
        "config": args.config,
        "overrides": args.set,
        "minutes": args.minutes,
        "supervised_minutes": sup_minutes,
        "knn": {"k": cfg.eval.k, "temperature": cfg.eval.temperature},
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_start": os.getloadavg(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
    }

    def eval_ds(src):
        return d.eval_dataset(512, source=src)

    log("decoding the train and test folders into memory")
    t0 = time.time()
    bank_ds, test_ds = eval_ds(train_src), eval_ds(test_src)
    pairs = d.train_dataset(t.batch_size).repeat()
    curve_bank = cbs.sample_labelled(train_src, args.curve_bank, contract, seed=1, batch_size=512)
    results["decode_seconds"] = round(time.time() - t0, 1)
    log(f"decoded in {results['decode_seconds']} s")

    def knn_full(encoder):
        t0 = time.time()
        x_tr, y_tr = ev.extract_features(encoder, bank_ds)
        x_te, y_te = ev.extract_features(encoder, test_ds)
        t1 = time.time()
        r = ev.knn_accuracy(x_tr, y_tr, x_te, y_te, k=cfg.eval.k, temperature=cfg.eval.temperature)
        r["feature_dim"] = int(x_tr.shape[1])
        r["seconds"] = {"features": round(t1 - t0, 1), "knn": round(time.time() - t1, 1)}
        if not args.no_linear and encoder is not pixels:
            lin = ev.linear_probe(x_tr, y_tr, x_te, y_te)
            r["linear_top1"] = lin["top1"]
            r["linear_converged"] = lin["converged"]
            r["seconds"]["linear"] = lin["seconds"]
        log(f"  evaluation seconds: {r['seconds']}")
        return r

    rows = {}
    if not args.skip_baselines:
        log("baseline: raw pixels")
        rows["raw pixels"] = knn_full(pixels)
        log(f"  kNN top-1 {rows['raw pixels']['top1']:.4f}")

    model = build_model(cfg, d.image_size)
    log(
        f"encoder {cfg.model.encoder} width {cfg.model.width}: {model.encoder.count_params():,} parameters, "
        f"projector {cfg.model.projector_dims}"
    )
    if not args.skip_baselines:
        log("baseline: random init")
        rows["random init (same encoder)"] = knn_full(model.encoder)
        log(f"  kNN top-1 {rows['random init (same encoder)']['top1']:.4f}")

    test_small = (np.concatenate([x for x, _ in test_ds]), np.concatenate([y for _, y in test_ds]))
    steps_per_epoch = 50000 // t.batch_size
    peak = cfg.optim.lr_weights * t.batch_size / 256

    def pretrain(model, data, minutes, name):
        schedule = WarmupThenTimeCosine(peak, cfg.optim.warmup_epochs * steps_per_epoch, cfg.optim.end_factor)
        budget = BudgetWithSchedule(minutes * 60, schedule)
        monitor = cbs.KnnMonitor(
            curve_bank, test_small, every_epochs=1, k=cfg.eval.k, temperature=cfg.eval.temperature, batch_size=512
        )
        curve = Curve(budget, monitor)
        # Epoch-0 point: the random encoder with the same bank.
        monitor.set_model(model)
        acc0 = monitor.evaluate()
        curve.points.append(
            {"epoch": 0, "train_seconds": 0.0, "steps": 0, "knn_top1": acc0["top1"], "knn_top5": acc0["top5"]}
        )
        wall = time.time()
        model.fit(data, epochs=10_000, steps_per_epoch=steps_per_epoch, verbose=0, callbacks=[budget, monitor, curve])
        info = {
            "train_seconds": round(budget.elapsed, 1),
            "wall_seconds": round(time.time() - wall, 1),
            "steps": budget.steps,
            "examples": budget.steps * t.batch_size,
            "epochs": round(budget.steps / steps_per_epoch, 2),
            "examples_per_second": round(budget.steps * t.batch_size / max(budget.elapsed, 1e-9), 1),
            "curve": curve.points,
        }
        log(
            f"{name}: {info['steps']} steps = {info['epochs']} epochs in {info['train_seconds']} s of training "
            f"({info['examples_per_second']} examples/s, load avg now {os.getloadavg()[0]:.1f})"
        )
        return info

    log(f"pretraining (Barlow Twins) for {args.minutes} min")
    model.compile(optimizer=make_optimizer(cfg, peak), jit_compile=False, steps_per_execution=t.steps_per_execution)
    results["barlow_twins"] = pretrain(model, pairs, args.minutes, "Barlow Twins")
    rows["Barlow Twins (this config)"] = knn_full(model.encoder)
    log(f"  kNN top-1 (50k bank) {rows['Barlow Twins (this config)']['top1']:.4f}")
    run_dir = out / "run"
    run_dir.mkdir(exist_ok=True)
    save_encoder(model.encoder, str(run_dir), contract)
    from bt_keras.config import config_to_yaml

    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))

    if sup_minutes > 0:
        log(f"supervised baseline for {sup_minutes} min")
        keras.utils.set_random_seed(t.seed)
        enc = build_model(cfg, d.image_size).encoder
        sup = Supervised(enc)
        sup.compile(
            optimizer=make_optimizer(cfg, peak),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=False,
        )
        # Decoded and cached before the clock starts, as the Barlow Twins pipeline is.
        images = ev.LabelledImages(train_src, contract).warm()
        labelled = images.epoch(ev.crop_flip_config(contract), t.batch_size, seed=t.seed, repeat=True)
        results["supervised"] = pretrain(sup, labelled, sup_minutes, "supervised")
        name = f"supervised, same encoder, {sup_minutes:g} min"
        rows[name] = knn_full(sup.encoder)
        rows[name]["classifier_top1"] = float(sup.evaluate(test_ds, verbose=0)[1])
        log(f"  kNN top-1 {rows[name]['top1']:.4f}, own classifier {rows[name]['classifier_top1']:.4f}")

    results["rows"] = rows
    results["total_wall_seconds"] = round(time.time() - started, 1)
    results["machine"]["load_avg_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = ["| encoder | kNN top-1 | kNN top-5 | linear top-1 (fast probe) |", "| --- | --- | --- | --- |"]
    for name, r in rows.items():
        lin = f"{100 * r['linear_top1']:.1f}%" if "linear_top1" in r else "–"
        table.append(f"| {name} | {100 * r['top1']:.1f}% | {100 * r['top5']:.1f}% | {lin} |")
    (out / "table.md").write_text("\n".join(table) + "\n")
    plot(results, out / "knn_vs_time.png")
    print("\n".join(table))
    log(f"done in {results['total_wall_seconds'] / 60:.1f} min; results in {out}")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = results["rows"]
    for key, label, colour in (("barlow_twins", "Barlow Twins", "C0"), ("supervised", "supervised", "C2")):
        if key in results:
            pts = results[key]["curve"]
            ax.plot(
                [q["train_seconds"] / 60 for q in pts],
                [100 * q["knn_top1"] for q in pts],
                marker="o",
                color=colour,
                label=f"{label} (10k-image bank, per epoch)",
            )
    bt = rows.get("Barlow Twins (this config)")
    if bt:
        ax.scatter(
            [results["barlow_twins"]["train_seconds"] / 60],
            [100 * bt["top1"]],
            marker="*",
            s=150,
            color="C0",
            zorder=5,
            label=f"Barlow Twins, 50k bank: {100 * bt['top1']:.1f}%",
        )
    for name, style in (("raw pixels", ":"), ("random init (same encoder)", "--")):
        if name not in rows:
            continue
        ax.axhline(
            100 * rows[name]["top1"], color="grey", linestyle=style, label=f"{name}: {100 * rows[name]['top1']:.1f}%"
        )
    ax.set_xlabel("training time (minutes, 2 CPU cores)")
    ax.set_ylabel("CIFAR-10 test kNN top-1 (%)")
    ax.set_title("kNN (k=200, T=0.1) against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
