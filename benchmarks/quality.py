"""Quality benchmark: Barlow Twins pretraining on a labelled image set (CIFAR-10) under a
wall-clock budget, then kNN top-1 on its test split next to baselines.

    python benchmarks/quality.py --data folder:data/cifar10 --minutes 30

1. Data: any labelled source pair. ``--data folder:DIR`` reads ``DIR/train`` and ``DIR/test``
   (class sub-folders), ``--data tfds:cifar10`` the TFDS ``train``/``test`` splits;
   ``--train-source``/``--test-source`` take any source (``folder:``, ``tfds:NAME:SPLIT``,
   ``tfrecord:GLOB``). Default: the config's ``eval.train_source``/``eval.test_source``
   (``folder:data/cifar10/{train,test}``, which ``benchmarks/make_cifar10_folders.py``
   writes). Every count (steps per epoch, bank sizes, classes) comes from the data.
2. Baselines: kNN on raw pixels; the same encoder at random initialisation.
3. Pretrains with ``configs/cifar10_cpu.yaml`` until ``--minutes`` of training
   steps have run (time in the kNN checkpoints is not counted). The learning
   rate warms up over ``optim.warmup_epochs`` (in steps), then follows a cosine
   driven by the elapsed fraction of the budget, so the decay ends when the
   budget does whatever the throughput of the shared machine.
   After every epoch: kNN top-1 with a fixed ``--curve-bank``-image bank (the curve).
4. The final encoder: kNN with the whole training bank (the headline number) and the
   fast linear probe; saved as a run directory (``OUT/run``) that
   ``bt-eval --run OUT/run`` reads.
5. Optionally a supervised encoder of the same architecture trained for
   ``--supervised-minutes`` (cross-entropy, crop + flip, same optimiser).

Writes ``OUT/results.json``, ``OUT/table.md``, ``OUT/knn_vs_time.png`` and
``OUT/command.txt``; ``OUT`` defaults to ``runs/quality`` (ignored by git: the committed
results in ``benchmarks/results/quality`` change only with ``--out benchmarks/results/quality``).
kNN: k=200, T=0.1, cosine, weighted vote (bt_keras.evaluation). Bad input (a missing folder, an
unlabelled source, fewer images than a batch) is one line, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from budget_schedule import BudgetWithSchedule, WarmupThenTimeCosine  # noqa: E402

from bt_keras import callbacks as cbs  # noqa: E402
from bt_keras import evaluation as ev  # noqa: E402
from bt_keras.config import config_to_yaml, load_config  # noqa: E402
from bt_keras.data.prepare import open_source  # noqa: E402
from bt_keras.errors import DataError, UserError, one_line  # noqa: E402
from bt_keras.io import atomic_path, atomic_write  # noqa: E402
from bt_keras.precision import with_resolved_precision  # noqa: E402
from bt_keras.training import build_model, save_encoder  # noqa: E402

PROG = "quality.py"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def split_sources(data: str) -> tuple[str, str]:
    """``--data`` as (train source, test source): ``folder:DIR`` → DIR/train, DIR/test; ``tfds:NAME``.

    >>> split_sources("folder:~/cifar10")[1].endswith("/cifar10/test")
    True
    >>> split_sources("tfds:cifar10")
    ('tfds:cifar10:train', 'tfds:cifar10:test')
    """
    if data.startswith("tfds:"):
        name = data[len("tfds:") :].split(":")[0]
        return f"tfds:{name}:train", f"tfds:{name}:test"
    if ":" in data.split("/")[0] and not data.startswith(("folder:", "gs://")):
        raise DataError(
            f"--data {data}: expected folder:DIR (with DIR/train and DIR/test) or tfds:NAME; "
            "give other sources with --train-source and --test-source"
        )
    root = data[len("folder:") :] if data.startswith("folder:") else data
    root = os.path.expanduser(root).rstrip("/")
    return f"folder:{root}/train", f"folder:{root}/test"


def resolve_sources(args, cfg) -> dict:
    """``{"train": (key, source), "test": (key, source)}``: flags first, then ``--data``, then the config."""
    out = {"train": ("eval.train_source", cfg.eval.train_source), "test": ("eval.test_source", cfg.eval.test_source)}
    if args.data:
        train, test = split_sources(args.data)
        out = {"train": ("--data", train), "test": ("--data", test)}
    if args.train_source:
        out["train"] = ("--train-source", args.train_source)
    if args.test_source:
        out["test"] = ("--test-source", args.test_source)
    for split, (key, source) in out.items():
        if not source:
            raise DataError(f"no labelled {split} source: pass --data folder:DIR or --{split}-source")
        if source.startswith("folder:~"):
            out[split] = (key, "folder:" + os.path.expanduser(source[len("folder:") :]))
    return out


def apply_threads(args):
    """The config's ``train.cpu_threads``, applied before TensorFlow's runtime starts, as ``bt-train`` does."""
    from bt_keras.cpu_threads import apply_cpu_threads

    cfg = load_config(args.config, args.set)
    return apply_cpu_threads(cfg.train.cpu_threads, cfg.train.strategy)


def load_run_config(args):
    """The config with the benchmark's data: sources checked (one line naming the flag or key)."""
    overrides = list(args.set) + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])
    cfg = load_config(args.config, overrides)
    sources = resolve_sources(args, cfg)
    for key, source in sources.values():
        open_source(source, cfg.data.data_dir, key=key, labelled=True)
    train, test = sources["train"][1], sources["test"][1]
    fixed = [f"data.source={train}", "data.cache=true", f"eval.train_source={train}", f"eval.test_source={test}"]
    return with_resolved_precision(load_config(args.config, overrides + fixed)), sources


def pixels(x, training=False):
    return tf.reshape(x, [tf.shape(x)[0], -1])


class Curve(keras.callbacks.Callback):
    """Pairs each kNN checkpoint with the training time spent so far."""

    def __init__(self, budget, monitor, bank_size):
        super().__init__()
        self.budget, self.monitor, self.points, self.bank_size = budget, monitor, [], bank_size

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
                f"kNN top-1 ({self.bank_size:,}-image bank) {logs['knn_top1']:.4f}, "
                f"loss {logs.get('loss', float('nan')):.1f}"
            )


def make_optimizer(cfg, peak):
    """The config's optimiser at a float learning rate: the time budget sets it before every step."""
    from bt_keras.recipe import optimizer_for

    return optimizer_for(cfg.optim, peak)


@keras.saving.register_keras_serializable(package="bt_bench")
class Supervised(keras.Model):
    """Encoder + linear classifier, trained with labels (the supervised baseline)."""

    def __init__(self, encoder, num_classes=10, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.head = keras.layers.Dense(num_classes, dtype="float32")

    def call(self, x, training=False):
        return self.head(self.encoder(x, training=training))


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "cifar10_cpu.yaml"))
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of pretraining steps")
    p.add_argument(
        "--supervised-minutes",
        type=float,
        default=None,
        help="budget of the supervised baseline (default: --minutes; 0 skips it)",
    )
    p.add_argument("--data", help="folder:DIR (DIR/train, DIR/test with class sub-folders) or tfds:NAME")
    p.add_argument("--train-source", help="labelled training source (folder:, tfds:NAME:SPLIT, tfrecord:GLOB)")
    p.add_argument("--test-source", help="labelled test source")
    p.add_argument("--data-dir", help="TensorFlow Datasets directory for tfds: sources")
    p.add_argument("--out", default=str(REPO / "runs" / "quality"), help="output directory (default runs/quality)")
    p.add_argument("--curve-bank", type=int, default=10000, help="kNN bank size for the per-epoch curve (0: no curve)")
    p.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="what --minutes counts: wall-clock seconds of the steps, or CPU seconds of the process "
        "(all its threads, the input pipeline's included; benchmarks/peer.py)",
    )
    p.add_argument("--no-linear", action="store_true", help="skip the fast linear probes")
    p.add_argument(
        "--skip-baselines", action="store_true", help="only pretrain and evaluate (for configuration exploration)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = p.parse_args(argv)
    if args.minutes <= 0 or (args.supervised_minutes or 0) < 0:
        p.error("--minutes must be > 0 and --supervised-minutes >= 0")
    return args


class Bench:
    """The data, the evaluation and the pretraining loop of one benchmark run."""

    def __init__(self, args, cfg, sources):
        self.args, self.cfg = args, cfg
        d, t = cfg.data, cfg.train
        self.train_src, self.test_src = sources["train"][1], sources["test"][1]
        self.contract = d.contract()
        self.num_train, self.num_test = d.count(self.train_src), d.count(self.test_src)
        if self.num_train < t.batch_size:
            key = sources["train"][0]
            raise DataError(
                f"{key}: {self.train_src} has {self.num_train} usable images, fewer than one batch "
                f"(train.batch_size={t.batch_size}); use more images or --set train.batch_size=N"
            )
        self.steps_per_epoch = self.num_train // t.batch_size
        self.peak = cfg.optim.lr_weights * t.batch_size / 256
        log(f"decoding {self.num_train:,} training and {self.num_test:,} test images into memory")
        t0 = time.time()
        self.bank_ds = d.eval_dataset(512, source=self.train_src)
        self.test_ds = d.eval_dataset(512, source=self.test_src)
        self.pairs = d.train_dataset(t.batch_size).repeat()
        self.curve_bank = (
            cbs.sample_labelled(
                self.train_src, args.curve_bank, self.contract, data_dir=d.data_dir, seed=1, batch_size=512
            )
            if args.curve_bank
            else None
        )
        self.test_small = (np.concatenate([x for x, _ in self.test_ds]), np.concatenate([y for _, y in self.test_ds]))
        self.decode_seconds = round(time.time() - t0, 1)
        log(f"decoded in {self.decode_seconds} s")

    def knn_full(self, encoder):
        """kNN with the whole training bank (and the fast linear probe) of ``encoder``."""
        t0 = time.time()
        x_tr, y_tr = ev.extract_features(encoder, self.bank_ds)
        x_te, y_te = ev.extract_features(encoder, self.test_ds)
        t1 = time.time()
        r = ev.knn_accuracy(x_tr, y_tr, x_te, y_te, k=self.cfg.eval.k, temperature=self.cfg.eval.temperature)
        r["feature_dim"] = int(x_tr.shape[1])
        r["seconds"] = {"features": round(t1 - t0, 1), "knn": round(time.time() - t1, 1)}
        if not self.args.no_linear and encoder is not pixels:
            lin = ev.linear_probe(x_tr, y_tr, x_te, y_te)
            r["linear_top1"] = lin["top1"]
            r["linear_converged"] = lin["converged"]
            r["seconds"]["linear"] = lin["seconds"]
        log(f"  evaluation seconds: {r['seconds']}")
        return r

    def pretrain(self, model, data, minutes, name):
        """Trains ``model`` on ``data`` for ``minutes`` of steps; the kNN curve after every epoch."""
        cfg, spe = self.cfg, self.steps_per_epoch
        schedule = WarmupThenTimeCosine(self.peak, cfg.optim.warmup_epochs * spe, cfg.optim.end_factor)
        budget = BudgetWithSchedule(minutes * 60, schedule, clock=self.args.clock)
        if not self.curve_bank:  # no curve: only the budget (with a CPU clock, nothing outside it runs)
            wall = time.time()
            model.fit(data, epochs=10_000, steps_per_epoch=spe, verbose=0, callbacks=[budget])
            return self._pretrain_info(budget, wall, name, [])
        monitor = cbs.KnnMonitor(
            self.curve_bank,
            self.test_small,
            every_epochs=1,
            k=cfg.eval.k,
            temperature=cfg.eval.temperature,
            batch_size=512,
        )
        curve = Curve(budget, monitor, len(self.curve_bank[1]))
        monitor.set_model(model)  # epoch-0 point: the random encoder with the same bank
        acc0 = monitor.evaluate()
        curve.points.append(
            {"epoch": 0, "train_seconds": 0.0, "steps": 0, "knn_top1": acc0["top1"], "knn_top5": acc0["top5"]}
        )
        wall = time.time()
        model.fit(data, epochs=10_000, steps_per_epoch=spe, verbose=0, callbacks=[budget, monitor, curve])
        return self._pretrain_info(budget, wall, name, curve.points)

    def _pretrain_info(self, budget, wall, name, points):
        examples = budget.steps * self.cfg.train.batch_size
        spe = self.steps_per_epoch
        info = {
            "train_seconds": round(budget.elapsed, 1),
            "wall_seconds": round(time.time() - wall, 1),
            "steps": budget.steps,
            "examples": examples,
            "epochs": round(budget.steps / spe, 2),
            "examples_per_second": round(examples / max(budget.elapsed, 1e-9), 1),
            "curve": points,
            "clock": budget.clock,
        }
        log(
            f"{name}: {info['steps']} steps = {info['epochs']} epochs in {info['train_seconds']} s of training "
            f"({info['examples_per_second']} examples/s, load avg now {os.getloadavg()[0]:.1f})"
        )
        return info

    def supervised(self, minutes):
        """The supervised baseline: same encoder and optimiser, cross-entropy on crop + flip."""
        cfg, t = self.cfg, self.cfg.train
        keras.utils.set_random_seed(t.seed)
        # Decoded and cached before the clock starts, as the Barlow Twins pipeline is.
        images = ev.LabelledImages(self.train_src, self.contract, cfg.data.data_dir).warm()
        sup = Supervised(build_model(cfg, cfg.data.image_size).encoder, num_classes=images.num_classes())
        sup.compile(
            optimizer=make_optimizer(cfg, self.peak),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=False,
        )
        labelled = images.epoch(ev.crop_flip_config(self.contract), t.batch_size, seed=t.seed, repeat=True)
        info = self.pretrain(sup, labelled, minutes, "supervised")
        row = self.knn_full(sup.encoder)
        row["classifier_top1"] = float(sup.evaluate(self.test_ds, verbose=0)[1])
        return info, row


def run(args, command):
    started = time.time()
    sup_minutes = args.minutes if args.supervised_minutes is None else args.supervised_minutes
    threads = apply_threads(args)
    cfg, sources = load_run_config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(str(out / "command.txt"), command + "\n")
    t = cfg.train
    keras.utils.set_random_seed(t.seed)
    keras.mixed_precision.set_dtype_policy(t.mixed_precision)
    bench = Bench(args, cfg, sources)
    results = {
        "command": command,
        "config": args.config,
        "overrides": args.set,
        "data": {"train": bench.train_src, "test": bench.test_src, "num_train": bench.num_train},
        "minutes": args.minutes,
        "supervised_minutes": sup_minutes,
        "knn": {"k": cfg.eval.k, "temperature": cfg.eval.temperature},
        "decode_seconds": bench.decode_seconds,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_start": os.getloadavg(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "cpu_threads": threads,
            "python": platform.python_version(),
        },
    }
    results["data"].update(num_test=bench.num_test, curve_bank=len(bench.curve_bank[1]) if bench.curve_bank else 0)
    rows = {}
    model = build_model(cfg, cfg.data.image_size)
    log(
        f"encoder {cfg.model.encoder} width {cfg.model.width}: {model.encoder.count_params():,} parameters, "
        f"projector {cfg.model.projector_dims}; {bench.steps_per_epoch} steps per epoch"
    )
    if not args.skip_baselines:
        for name, encoder in (("raw pixels", pixels), ("random init (same encoder)", model.encoder)):
            log(f"baseline: {name}")
            rows[name] = bench.knn_full(encoder)
            log(f"  kNN top-1 {rows[name]['top1']:.4f}")
    log(f"pretraining (Barlow Twins) for {args.minutes} min")
    model.compile(
        optimizer=make_optimizer(cfg, bench.peak), jit_compile=False, steps_per_execution=t.steps_per_execution
    )
    results["barlow_twins"] = bench.pretrain(model, bench.pairs, args.minutes, "Barlow Twins")
    rows["Barlow Twins (this config)"] = bench.knn_full(model.encoder)
    log(f"  kNN top-1 ({bench.num_train:,}-image bank) {rows['Barlow Twins (this config)']['top1']:.4f}")
    run_dir = out / "run"
    save_encoder(model.encoder, str(run_dir), bench.contract)
    atomic_write(str(run_dir / "config.yaml"), config_to_yaml(cfg))
    if sup_minutes > 0:
        log(f"supervised baseline for {sup_minutes} min")
        name = f"supervised, same encoder, {sup_minutes:g} min"
        results["supervised"], rows[name] = bench.supervised(sup_minutes)
        log(f"  kNN top-1 {rows[name]['top1']:.4f}, own classifier {rows[name]['classifier_top1']:.4f}")
    results["rows"] = rows
    results["total_wall_seconds"] = round(time.time() - started, 1)
    results["machine"]["load_avg_end"] = os.getloadavg()
    write_outputs(results, out)
    log(f"done in {results['total_wall_seconds'] / 60:.1f} min; results in {out}")


def write_outputs(results, out: Path):
    atomic_write(str(out / "results.json"), json.dumps(results, indent=2) + "\n")
    table = ["| encoder | kNN top-1 | kNN top-5 | linear top-1 (fast probe) |", "| --- | --- | --- | --- |"]
    for name, r in results["rows"].items():
        lin = f"{100 * r['linear_top1']:.1f}%" if "linear_top1" in r else "–"
        table.append(f"| {name} | {100 * r['top1']:.1f}% | {100 * r['top5']:.1f}% | {lin} |")
    atomic_write(str(out / "table.md"), "\n".join(table) + "\n")
    plot(results, out / "knn_vs_time.png")
    print("\n".join(table))


def main(argv=None):
    args = parse_args(argv)
    command = "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    try:
        run(args, command)
    except UserError as e:
        sys.stderr.write(f"{PROG}: error: {one_line(e)}\n")
        sys.exit(2)


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
                label=f"{label} ({results['data']['curve_bank']:,}-image bank, per epoch)",
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
            label=f"Barlow Twins, {results['data']['num_train']:,}-image bank: {100 * bt['top1']:.1f}%",
        )
    for name, style in (("raw pixels", ":"), ("random init (same encoder)", "--")):
        if name not in rows:
            continue
        ax.axhline(
            100 * rows[name]["top1"], color="grey", linestyle=style, label=f"{name}: {100 * rows[name]['top1']:.1f}%"
        )
    ax.set_xlabel(f"training time (minutes, {results['machine']['cpus']} CPU cores)")
    ax.set_ylabel(f"test kNN top-1 (%), {results['data']['test']}"[:60])
    ax.set_title("kNN (k=200, T=0.1) against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(str(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
