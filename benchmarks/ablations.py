"""Three open questions about Barlow Twins as experiments at a fixed CPU-time budget per run.

    python benchmarks/ablations.py --data folder:DIR --budget-seconds 60 --out runs/ablations

1. ``shuffle``: {normal, pixel-shuffled} × {colour augmentation on, off}. Pixel-shuffled runs
   permute every view and every evaluation image by one fixed permutation
   (``data.augment.pixel_shuffle``): spatial structure gone, colour histograms intact. "Colour
   off" disables both colour jitter and grayscale, the two ops that make a view's histogram
   differ from its twin's.
2. ``dim``: the projector's width D (all three layers) over ``--dims``, with λ as configured
   (the paper's 0.0051) and with λ ∝ 1/D anchored at the reference width (λ·D constant, which
   keeps the off-diagonal term's share of the loss at initialisation, ≈ λ·D/N, the same).
3. ``standardize``: the loss's per-view normalisation ``model.standardize``: full (the paper's),
   center, none.
4. ``recipe`` (not in the default sweep): solo-learn's CIFAR recipe choices, one at a time, on the
   base config, and all together (:data:`RECIPE_ARMS`): solarisation off / symmetric, LARS with
   solo-learn's settings (lr 0.3 per 256, eta 0.02, trust clipped, biases and BN at the same lr
   without decay or adaptation, weight decay 1e-4) clipped and not, λ = 1/128 and λ scaled to the
   projector width (the paper's λ·D), projector 2048³, crop scale (0.08, 1).

Every run is ``bt_keras.training.train`` (the code behind ``bt-train``) on the base config
(``--config``, default ``configs/cifar10_cpu.yaml``) plus ``--set`` overrides plus the run's own,
stopped by :class:`bt_keras.callbacks.TimeBudget` after ``--budget-seconds`` of *process CPU
time* inside training steps (all threads; the first, tracing step and the kNN monitor do not
count), so runs get the same work whatever else shares the machine. On a dedicated GPU, where the
work is not the host's, ``--clock wall`` counts elapsed step time instead. Its score is the kNN monitor's
(``monitor.knn_*``: k=200, T=0.1, a fixed subset of the training split as the bank and of the test
split as queries) at the end of the run. ``--lr-schedule budget`` drives the cosine by the elapsed
fraction of the budget (warmup in steps, as ``quality.py``), so every run ends its decay when its
budget ends; ``steps`` (the default, as earlier sweeps ran) keeps the config's schedule over
``train.epochs``, which a short budget stops early. The runs shared by the three experiments (the reference:
normal, colour on, the config's D and λ, full standardisation) are trained once.

Baselines on the same subsets: the same encoder at random initialisation (in the normal and the
shuffled evaluation space) and raw pixels (cosine kNN on pixels is unchanged by a permutation).

Writes ``OUT/table.md``, ``OUT/results.json``, ``OUT/<experiment>.png`` (kNN top-1 against the
setting, random-init and raw-pixel lines), ``OUT/commands.txt`` (this command and each run's)
and ``OUT/runs/<name>/`` (a bt-train run directory plus ``ablation.yaml``, the run's config, and
``ablation.json``, its result). A run with ``ablation.json`` is finished and skipped when the
sweep is started again; an unfinished one is restarted from scratch (its budget would otherwise
be spent twice). Each run trains in its own process (``--run-one``) unless ``--in-process``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):  # bt_keras, and budget_schedule beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bt_keras.errors import UserError  # noqa: E402

PROG = "ablations.py"
EXPERIMENTS = ("shuffle", "dim", "standardize", "recipe")
DEFAULT_EXPERIMENTS = ("shuffle", "dim", "standardize")
REFERENCE = "reference"
COLOUR_OFF = ("data.augment.color_jitter.enabled=false", "data.augment.grayscale.enabled=false")
SHUFFLED = ("data.augment.pixel_shuffle.enabled=true",)
LARS_SOLO = (
    "optim.name=lars",
    "optim.lr_weights=0.3",
    "optim.lr_biases=0.3",
    "optim.eta=0.02",
    "optim.clip_trust=true",
    "optim.weight_decay=1e-4",
)
# The recipe experiment: (label, run name, overrides); "{lambda_scaled}" is the paper's λ·D at the base width.
RECIPE_ARMS = (
    ("base config", REFERENCE, ()),
    ("solarise off", "solarize-off", ("data.augment.solarize.enabled=false",)),
    ("solarise 0.2 / 0.2", "solarize-symmetric", ("data.augment.solarize.prob=[0.2,0.2]",)),
    ("LARS, solo-learn", "lars-solo", LARS_SOLO),
    ("LARS, not clipped", "lars-solo-noclip", LARS_SOLO[:-2] + ("optim.clip_trust=false", LARS_SOLO[-1])),
    ("λ 1/128", "lambda-1-128", ("model.lambd=0.0078125",)),
    ("λ paper λ·D", "lambda-scaled", ("model.lambd={lambda_scaled}",)),
    ("projector 2048³", "projector-2048", ("model.projector_dims=[2048,2048,2048]",)),
    ("crop scale 0.08", "crop-0.08", ("data.augment.crop.scale=[0.08,1.0]",)),
    (
        "solo-learn, all",
        "solo-learn-all",
        LARS_SOLO + ("model.projector_dims=[2048,2048,2048]", "data.augment.crop.scale=[0.08,1.0]"),
    ),
)
PAPER_LAMBDA_TIMES_D = 0.0051 * 8192  # the paper's λ at its projector width D = 8192


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "cifar10_cpu.yaml"), help="base bt-train config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--data", help="folder:DIR with DIR/train and DIR/test class folders")
    p.add_argument("--train-source", help="labelled training source (instead of --data)")
    p.add_argument("--test-source", help="labelled test source (instead of --data)")
    p.add_argument(
        "--budget-seconds",
        "--cpu-seconds",
        dest="cpu_seconds",
        type=float,
        default=60.0,
        help="seconds of training steps per run, on --clock",
    )
    p.add_argument(
        "--clock",
        choices=("process", "wall"),
        default="process",
        help="process: CPU time of the whole process (a shared CPU machine); wall: elapsed time (a dedicated GPU)",
    )
    p.add_argument(
        "--experiments", default=",".join(DEFAULT_EXPERIMENTS), help="comma-separated subset of " + str(EXPERIMENTS)
    )
    p.add_argument(
        "--lr-schedule",
        choices=("steps", "budget"),
        default="steps",
        help="steps: the config's cosine over train.epochs; budget: the cosine ends when the budget does",
    )
    p.add_argument("--dims", default="64,256,1024,4096,8192", help="projector widths of the dim experiment")
    p.add_argument("--knn-train", type=int, default=10000, help="kNN bank: images sampled from the training split")
    p.add_argument("--knn-val", type=int, default=2000, help="kNN queries: images sampled from the test split")
    p.add_argument("--skip", default="", help="comma-separated run names to leave out (the reference always runs)")
    p.add_argument("--out", default="runs/ablations", help="output directory")
    p.add_argument("--in-process", action="store_true", help="train every run in this process (tests)")
    p.add_argument("--run-one", metavar="RUN_DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_one:
        return args
    if args.data:
        if not args.data.startswith("folder:"):
            raise UserError(f"--data: expected folder:DIR, got {args.data!r} (or use --train-source/--test-source)")
        root = args.data[len("folder:") :].rstrip("/")
        args.train_source, args.test_source = f"folder:{root}/train", f"folder:{root}/test"
    if not (args.train_source and args.test_source):
        raise UserError("pass --data folder:DIR or both --train-source and --test-source")
    args.experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
    unknown = sorted(set(args.experiments) - set(EXPERIMENTS))
    if unknown:
        raise UserError(f"--experiments: unknown {', '.join(unknown)} (choose from {', '.join(EXPERIMENTS)})")
    try:
        args.dims = [int(d) for d in args.dims.split(",") if d.strip()]
    except ValueError:
        raise UserError(f"--dims: expected comma-separated integers, got {args.dims!r}") from None
    if not args.dims or min(args.dims) < 1:
        raise UserError("--dims: needs positive widths")
    if args.cpu_seconds <= 0:
        raise UserError("--budget-seconds: must be > 0")
    return args


def base_config(args):
    """The config every run starts from: ``--config`` + the sweep's sources and monitor + ``--set``."""
    from bt_keras.config import load_config

    sweep = [
        f"data.source={args.train_source}",
        "eval.train_source=null",  # the score is the kNN monitor's, on fixed subsets; no second evaluation
        "eval.test_source=null",
        "monitor.knn_every_epochs=1",  # also runs when the budget stops training mid-epoch
        f"monitor.knn_train_source={args.train_source}",
        f"monitor.knn_val_source={args.test_source}",
        f"monitor.knn_max_train={args.knn_train}",
        f"monitor.knn_max_val={args.knn_val}",
        "monitor.report=false",
        "train.verbose=0",
    ]
    return load_config(args.config, sweep + list(args.set)), sweep + list(args.set)


def plan_runs(args, cfg) -> tuple[dict, dict]:
    """``runs``: name → extra overrides; ``rows``: experiment → [(setting label, run name, x)]."""
    d0, lambd = cfg.model.projector_dims[-1], cfg.model.lambd
    runs = {REFERENCE: ()}
    rows = {}
    if "shuffle" in args.experiments:
        runs.update({"colour-off": COLOUR_OFF, "shuffled": SHUFFLED, "shuffled-colour-off": SHUFFLED + COLOUR_OFF})
        rows["shuffle"] = [
            ("normal, colour on", REFERENCE, 0),
            ("normal, colour off", "colour-off", 1),
            ("shuffled, colour on", "shuffled", 2),
            ("shuffled, colour off", "shuffled-colour-off", 3),
        ]
    if "dim" in args.experiments:
        rows["dim"] = []
        for d in sorted(set(args.dims)):
            for rule, lam in (("paper", lambd), ("scaled", lambd * d0 / d)):
                name = REFERENCE if d == d0 else f"dim{d}-lambda-{rule}"
                runs.setdefault(name, (f"model.projector_dims=[{d},{d},{d}]", f"model.lambd={lam:.6g}"))
                rows["dim"].append((f"λ {rule}", name, d))
    if "standardize" in args.experiments:
        runs.update({f"standardize-{m}": (f"model.standardize={m}",) for m in ("center", "none")})
        rows["standardize"] = [
            ("full", REFERENCE, 0),
            ("center", "standardize-center", 1),
            ("none", "standardize-none", 2),
        ]
    if "recipe" in args.experiments:
        rows["recipe"] = []
        scaled = f"{PAPER_LAMBDA_TIMES_D / d0:.6g}"
        for x, (label, name, extra) in enumerate(RECIPE_ARMS):
            runs.setdefault(name, tuple(o.replace("{lambda_scaled}", scaled) for o in extra))
            rows["recipe"].append((label, name, x))
    skip = {n.strip() for n in args.skip.split(",") if n.strip()} - {REFERENCE}
    unknown = sorted(skip - set(runs))
    if unknown:
        raise UserError(f"--skip: no run named {', '.join(unknown)} in these experiments")
    runs = {name: extra for name, extra in runs.items() if name not in skip}
    rows = {exp: [row for row in exp_rows if row[1] not in skip] for exp, exp_rows in rows.items()}
    return runs, rows


def run_one(
    run_dir: Path, cpu_seconds: float, own_process: bool = True, clock: str = "process", lr_schedule: str = "steps"
) -> dict:
    """Trains the run in ``run_dir/ablation.yaml`` for ``cpu_seconds`` on ``clock``; writes ``ablation.json``.

    ``lr_schedule``: ``steps`` (the config's) or ``budget`` (cosine over the budget, ``--lr-schedule``).

    ``own_process``: set up Keras' backend and TensorFlow's logging as ``bt-train`` does.
    """
    from bt_keras.config import load_config

    cfg = load_config(str(run_dir / "ablation.yaml"))
    if own_process:
        from bt_keras.cli import load_tensorflow, select_backend

        select_backend(cfg.train.backend)
        load_tensorflow()
    from budget_schedule import BudgetWithSchedule, WarmupThenTimeCosine

    from bt_keras.callbacks import TimeBudget
    from bt_keras.io import atomic_write
    from bt_keras.training import train

    peak = None
    if lr_schedule == "budget":
        o = cfg.optim
        peak = o.lr_weights * cfg.train.batch_size / 256
        schedule = WarmupThenTimeCosine(peak, 0, o.end_factor)
        budget = BudgetWithSchedule(cpu_seconds, schedule, clock=clock, warmup_epochs=o.warmup_epochs)
    else:
        budget = TimeBudget(cpu_seconds, clock=clock)
    wall, cpu = time.time(), time.process_time()
    summary = train(cfg, str(run_dir), callbacks=[budget], learning_rate=peak)
    if summary.get("preempted"):  # SIGTERM: not a finished run (the next sweep restarts it)
        raise SystemExit(f"{run_dir.name}: stopped by SIGTERM after {summary['steps']} steps; not recorded")
    with open(run_dir / "knn.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    result = {
        "knn_top1": float(last["top1"]),
        "knn_top5": float(last["top5"]),
        "steps": summary["steps"],
        "pairs": summary["steps"] * cfg.train.batch_size,
        "budget_seconds": cpu_seconds,
        "clock": clock,
        "lr_schedule": lr_schedule,
        "last_learning_rate": float(budget.model.optimizer.learning_rate),
        "step_seconds": round(budget.elapsed, 1),  # on the budget's clock
        "first_step_seconds": round(budget.first_step_seconds, 1),
        "process_cpu_seconds": round(time.process_time() - cpu, 1),
        "wall_seconds": round(time.time() - wall, 1),
    }
    atomic_write(str(run_dir / "ablation.json"), json.dumps(result, indent=2))
    return result


def baselines(args, cfg, shuffled: bool) -> dict:
    """kNN of raw pixels and of the encoder at random init, on the kNN monitor's own subsets."""
    import dataclasses

    import keras
    import numpy as np

    from bt_keras.augment.config import PixelShuffleConfig
    from bt_keras.data.labelled import sample_labelled
    from bt_keras.evaluation import knn_accuracy
    from bt_keras.evaluation.features import inference_fn
    from bt_keras.training import build_model

    if shuffled:
        shuffle = PixelShuffleConfig(enabled=True, seed=cfg.data.augment.pixel_shuffle.seed)
        augment = dataclasses.replace(cfg.data.augment, pixel_shuffle=shuffle)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, augment=augment))
    contract, m = cfg.data.contract(), cfg.monitor
    batch = cfg.eval.batch_size
    # Same sources, sizes and seeds as bt_keras.callbacks.wiring's monitor: the same images.
    bank = sample_labelled(
        m.knn_train_source, m.knn_max_train, contract, data_dir=cfg.data.data_dir, batch_size=batch, seed=1
    )
    val = sample_labelled(
        m.knn_val_source, m.knn_max_val, contract, data_dir=cfg.data.data_dir, batch_size=batch, seed=2
    )
    k, t = cfg.eval.k, cfg.eval.temperature
    raw = knn_accuracy(
        bank[0].reshape(len(bank[0]), -1), bank[1], val[0].reshape(len(val[0]), -1), val[1], k=k, temperature=t
    )
    keras.mixed_precision.set_dtype_policy("float32")
    keras.utils.set_random_seed(cfg.train.seed)  # as bt_keras.training's own random-init comparison
    encoder = build_model(cfg, cfg.data.image_size).encoder
    infer = inference_fn(encoder)

    def features(x):
        return np.concatenate([infer(x[i : i + batch]) for i in range(0, len(x), batch)])

    rand = knn_accuracy(features(bank[0]), bank[1], features(val[0]), val[1], k=k, temperature=t)
    return {"raw_pixels": raw["top1"], "random_init": rand["top1"]}


def _command(argv) -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], "benchmarks/ablations.py", *argv])


def sweep(args, argv) -> dict:
    from bt_keras.config import config_from_dict
    from bt_keras.io import atomic_write

    cfg, common = base_config(args)
    runs, rows = plan_runs(args, cfg)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    import yaml

    raw = yaml.safe_load(Path(args.config).read_text()) or {}
    commands = [
        f"# sweep ({time.strftime('%Y-%m-%d')}):",
        _command(argv),
        "",
        "# each run (its config: RUN/ablation.yaml):",
    ]
    results = {}
    for name, extra in runs.items():
        run_dir = out / "runs" / name
        done = run_dir / "ablation.json"
        one = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--run-one",
            str(run_dir),
            "--budget-seconds",
            str(args.cpu_seconds),
            "--clock",
            args.clock,
            "--lr-schedule",
            args.lr_schedule,
        ]
        commands.append(_command(one[2:]))
        if done.exists():
            results[name] = json.loads(done.read_text())
            log(f"{name}: finished earlier (kNN top-1 {results[name]['knn_top1']:.3f}), skipped")
            continue
        if run_dir.exists():  # an interrupted run restarts: resuming would spend its budget twice
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        from bt_keras.config import config_to_yaml

        run_cfg = config_from_dict(raw, list(common) + list(extra) + [f"train.run_dir={run_dir}"])
        atomic_write(str(run_dir / "ablation.yaml"), config_to_yaml(run_cfg))
        log(f"{name}: training for {args.cpu_seconds:g} s ({args.clock}) ({' '.join(extra) or 'the base config'})")
        if args.in_process:
            results[name] = run_one(
                run_dir, args.cpu_seconds, own_process=False, clock=args.clock, lr_schedule=args.lr_schedule
            )
        else:
            with open(run_dir / "ablation.log", "w") as logf:
                proc = subprocess.Popen(one, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
                try:
                    proc.wait()
                finally:  # the sweep stopped (Ctrl-C, SIGTERM): stop its run too, not leave it orphaned
                    if proc.poll() is None:
                        proc.terminate()
                        proc.wait()
            if proc.returncode != 0:
                tail = (run_dir / "ablation.log").read_text().strip().splitlines()[-1:]
                raise RuntimeError(
                    f"run {name} failed (exit {proc.returncode}): {' '.join(tail)}; see {run_dir}/ablation.log"
                )
            results[name] = json.loads(done.read_text())
        r = results[name]
        log(f"{name}: kNN top-1 {r['knn_top1']:.3f} after {r['steps']} steps ({r['wall_seconds']:.0f} s wall)")
    base_file = out / "baselines.json"
    base = json.loads(base_file.read_text()) if base_file.exists() else {}
    key = (
        f"{args.train_source}|{args.test_source}|{args.knn_train}|{args.knn_val}|{cfg.model.encoder}|{cfg.model.width}"
    )
    spaces = ["normal", "shuffled"] if "shuffle" in args.experiments else ["normal"]
    if base.get("key") != key or not all(space in base for space in spaces):
        log(f"baselines: raw pixels and random init, evaluation spaces: {', '.join(spaces)}")
        base = {"key": key, **{space: baselines(args, cfg, space == "shuffled") for space in spaces}}
        atomic_write(str(base_file), json.dumps(base, indent=2))
    report = {
        "command": _command(argv),
        "cpu_seconds": args.cpu_seconds,
        "clock": args.clock,
        "lr_schedule": args.lr_schedule,
        "runs": results,
        "rows": rows,
        "baselines": base,
    }
    atomic_write(str(out / "results.json"), json.dumps(report, indent=2))
    atomic_write(str(out / "commands.txt"), "\n".join(commands) + "\n")
    atomic_write(str(out / "table.md"), table(report, out))
    for experiment in rows:
        plot(report, experiment, out / f"{experiment}.png")
    log(f"wrote {out}/table.md, results.json, commands.txt and {', '.join(f'{e}.png' for e in rows)}")
    return report


TITLES = {
    "shuffle": "Pixel shuffle × colour augmentation",
    "dim": "Projector width D (λ as the paper's, and λ ∝ 1/D)",
    "standardize": "Per-view standardisation of the embeddings (model.standardize)",
    "recipe": "solo-learn's CIFAR recipe choices, one at a time and together",
}


def table(report: dict, out: Path) -> str:
    """The markdown tables: one per experiment, then the baselines."""
    clock = "process CPU time" if report.get("clock", "process") == "process" else "wall-clock time"
    schedules = {"budget": "cosine over the budget", "steps": "the config's, by steps"}
    schedule = schedules[report.get("lr_schedule", "steps")]
    lines = [f"Budget: {report['cpu_seconds']:g} s of {clock} in training steps per run; lr schedule: {schedule}.", ""]
    for experiment, rows in report["rows"].items():
        lines += [f"### {TITLES[experiment]}", ""]
        head = "| setting | D | kNN top-1 | kNN top-5 | steps | pairs seen | wall s | run |"
        lines += [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for label, name, x in rows:
            r = report["runs"][name]
            d = x if experiment == "dim" else ""
            lines.append(
                f"| {label} | {d} | {r['knn_top1']:.1%} | {r['knn_top5']:.1%} | {r['steps']} | {r['pairs']:,} "
                f"| {r['wall_seconds']:.0f} | `{out / 'runs' / name}` |"
            )
        lines.append("")
    b = report["baselines"]
    lines += ["### Baselines (same kNN bank and queries)", "", "| evaluation space | raw pixels | random init |"]
    lines += ["| --- | ---: | ---: |"]
    for space in [s for s in ("normal", "shuffled") if s in b]:
        lines.append(f"| {space} | {b[space]['raw_pixels']:.1%} | {b[space]['random_init']:.1%} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, experiment: str, path: Path) -> None:
    """kNN top-1 against the setting, with the random-init and raw-pixel lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, runs, b = report["rows"][experiment], report["runs"], report["baselines"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=80)
    if experiment == "dim":
        for rule, marker in (("λ paper", "o-"), ("λ scaled", "s--")):
            pts = [(x, runs[name]["knn_top1"]) for label, name, x in rows if label.endswith(rule.split()[1])]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=f"Barlow Twins, {rule}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("projector width D")
        ax.axhline(b["normal"]["random_init"], color="gray", ls="-.", label="random init")
    else:
        xs = list(range(len(rows)))  # one tick per run done (--skip leaves gaps in the plan's x)
        recipe = experiment == "recipe"  # separate settings, not a scale: points, no line
        ax.plot(xs, [runs[name]["knn_top1"] for _, name, _ in rows], "o" if recipe else "o-", label="Barlow Twins")
        if experiment == "shuffle":
            rand = [b["shuffled" if "shuffled" in label else "normal"]["random_init"] for label, _, _ in rows]
            ax.plot(xs, rand, "x-.", color="gray", label="random init (same evaluation space)")
        else:
            ax.axhline(b["normal"]["random_init"], color="gray", ls="-.", label="random init")
        if recipe:
            ax.set_xticks(xs, [label for label, _, _ in rows], rotation=30, ha="right", fontsize=8)
        else:
            ax.set_xticks(xs, [label.replace(", ", "\n") for label, _, _ in rows])
    ax.axhline(b["normal"]["raw_pixels"], color="black", ls=":", label="raw pixels")
    ax.set_ylabel("kNN top-1")
    unit = "CPU s" if report.get("clock", "process") == "process" else "s (wall)"
    ax.set_title(f"{TITLES[experiment]}\n{report['cpu_seconds']:g} {unit} per run", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _stop(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through sweep(), which stops the running run


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        args = parse_args(argv)
        if args.run_one:
            run_one(Path(args.run_one), args.cpu_seconds, clock=args.clock, lr_schedule=args.lr_schedule)
        else:
            sweep(args, argv)
    except UserError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
