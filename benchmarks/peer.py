"""bt_keras next to lightly (PyTorch, CPU), measured side by side on this machine.

lightly and PyTorch are never dependencies of bt_keras: they live in their own venv,
which ``setup`` creates (any directory; the default is ``~/.cache/bt_keras/peer-venv``):

    python benchmarks/peer.py setup                       # torch (CPU) + torchvision + lightly 1.6.0
    python benchmarks/peer.py step --rounds 3             # (a) train-step pairs per CPU-second
    python benchmarks/peer.py step --rounds 3 --isa avx2  # the same with oneDNN and MKL held to AVX2
    python benchmarks/peer.py e2e --data DIR --rounds 3   # (b) end to end from JPEG folders
    python benchmarks/peer.py knn --data DIR --budgets 10,30 --seeds 0,1   # (c) kNN at equal CPU time

``DIR`` holds ``train/`` and ``test/`` with one sub-folder of JPEGs per class
(``python benchmarks/make_cifar10_folders.py DIR`` writes CIFAR-10 that way).

Every run is its own process (TensorFlow and PyTorch each own their thread pools), timed
inside the process over steady-state steps only; the sides alternate in interleaved rounds,
in a new random order each round, so a busy machine slows every side alike. The measure
is pairs per CPU-second: user + system time of the process and its children (the
DataLoader's workers), from ``benchmarks/cpu_clock.py``, the one clock both sides use.

Configurations (the same model, batch and optimizer on both sides, float32 unless said):
  small  ResNet-18 CIFAR stem width 16, projector 1024³, batch 128, AdamW (configs/cifar10_cpu.yaml)
  large  ResNet-18 CIFAR stem width 64, projector 2048³, batch 256, LARS (configs/cifar10_resnet18.yaml)

Sides: ``bt_keras`` (float32, as ``bt-train`` runs it: ``train.cpu_threads: auto``),
``bt_keras TF threads`` (TensorFlow's default thread pools), ``bt_keras auto precision``
(``train.mixed_precision: auto``, what the shipped CPU config runs; step also with TF
threads), ``lightly best`` (channels_last, ``OMP_WAIT_POLICY=PASSIVE``), ``lightly
defaults`` and ``lightly bf16`` (best + ``torch.autocast("cpu", bfloat16)``, only with
``--bf16``).

``--isa avx2`` sets ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``MKL_ENABLE_INSTRUCTIONS=AVX2`` for
both sides: what an AVX2-only CPU runs, emulated on a newer one.

kNN (c): both sides pretrain until the same CPU-second budget is spent (the first
step, which compiles or warms up, is not counted), each with its own CIFAR recipe
(ours: configs/cifar10_cpu.yaml through benchmarks/quality.py; lightly: its CIFAR-10
benchmark's), then write the features of the 50k training and 10k test images; one NumPy
kNN (k=200, T=0.1, cosine, weighted vote, the whole training set as the bank) scores both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_VENV = Path.home() / ".cache" / "bt_keras" / "peer-venv"
PEER_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "lightly==1.6.0", "pillow", "numpy"]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

CONFIGS = {
    "small": {"model": "cpu", "width": 16, "proj": 1024, "batch": 128, "optimizer": "adamw"},
    "large": {"model": "resnet18", "width": 64, "proj": 2048, "batch": 256, "optimizer": "lars"},
}
ISA_ENV = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the peer venv
def setup(venv: Path, index_url: str | None) -> None:
    """Creates ``venv`` with PyTorch (CPU wheels by default), torchvision and lightly."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    extra = ["--extra-index-url", index_url] if index_url else []
    subprocess.run(pip + extra + PEER_PACKAGES, check=True)
    log(f"peer venv ready: {venv}")


def peer_python(venv: Path) -> str:
    py = venv / "bin" / "python"
    if not py.exists():
        print(
            f"peer.py: error: no peer venv at {venv}; create it: python benchmarks/peer.py setup --venv {venv}",
            file=sys.stderr,
        )
        sys.exit(2)
    return str(py)


# --------------------------------------------------------------------------- one measured process
def run_json(cmd: list[str], env: dict, timeout: float | None = None) -> dict:
    """Runs ``cmd`` and returns the JSON object on its last stdout line; one line of stderr if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **QUIET, **env}, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{shlex.join(cmd[:4])} … exited {proc.returncode}: {tail}")
    return json.loads(lines[-1])


def flags(**kw) -> list[str]:
    """Keyword arguments as command-line flags: ``True`` → ``--name``; None and False → nothing.

    >>> flags(budget_cpu_s=60, tf_threads=True, out=None, seed=0)
    ['--budget-cpu-s', '60', '--tf-threads', '--seed', '0']
    """
    out = []
    for k, v in kw.items():
        if v is True:
            out.append(f"--{k.replace('_', '-')}")
        elif v is not None and v is not False:  # identity: 0 is a value (a seed, --warmup 0)
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def ours_cmd(mode: str, config: str, **kw) -> list[str]:
    return [sys.executable, str(HERE / "peer_ours.py"), mode, "--config", config, *flags(**kw)]


def lightly_cmd(py: str, mode: str, config: str, channels_last: bool, **kw) -> list[str]:
    c = CONFIGS[config]
    cmd = [py, str(HERE / "peer_torch.py"), mode, "--width", str(c["width"]), "--proj", str(c["proj"])]
    cmd += ["--batch", str(c["batch"]), "--optimizer", c["optimizer"]]
    return cmd + flags(channels_last=channels_last, **kw)


def sides(py: str, mode: str, config: str, args) -> dict[str, tuple[list[str], dict]]:
    """Name → (command, extra environment) of every side measured in ``mode``."""
    kw = {"steps": args.steps, "warmup": args.warmup}
    if mode == "e2e":
        kw["data"] = args.data
    out = {
        "bt_keras": (ours_cmd(mode, config, **kw), {}),
        "bt_keras TF threads": (ours_cmd(mode, config, tf_threads=True, **kw), {}),
        "lightly best": (lightly_cmd(py, mode, config, True, **kw), {"OMP_WAIT_POLICY": "PASSIVE"}),
        "lightly defaults": (lightly_cmd(py, mode, config, False, **kw), {}),
    }
    out["bt_keras auto precision"] = (ours_cmd(mode, config, precision="auto", **kw), {})
    if mode == "step":
        out["bt_keras auto precision, TF threads"] = (
            ours_cmd(mode, config, precision="auto", tf_threads=True, **kw),
            {},
        )
        if args.bf16:
            out["lightly bf16"] = (lightly_cmd(py, mode, config, True, bf16=True, **kw), {"OMP_WAIT_POLICY": "PASSIVE"})
    if mode == "e2e":
        out["lightly best"][1]["OMP_WAIT_POLICY"] = "PASSIVE"
    return out


def interleaved(
    named: dict[str, tuple[list[str], dict]], rounds: int, env: dict, seed: int = 0
) -> dict[str, list[dict]]:
    """Runs every side once per round, in a new random order each round."""
    rng = random.Random(seed)
    results: dict[str, list[dict]] = {name: [] for name in named}
    for r in range(rounds):
        order = list(named)
        rng.shuffle(order)
        for name in order:
            cmd, extra = named[name]
            res = run_json(cmd, {**env, **extra})
            res["pairs_per_cpu_s"] = res["pairs"] / res["cpu_s"]
            res["pairs_per_wall_s"] = res["pairs"] / res["wall_s"]
            results[name].append(res)
            log(
                f"round {r + 1}/{rounds} {name}: {res['pairs_per_cpu_s']:.1f} pairs/CPU-s, "
                f"{res['pairs_per_wall_s']:.1f} pairs/s"
            )
    return results


def summarize(results: dict[str, list[dict]], reference: str = "lightly best") -> list[dict]:
    """Median pairs per CPU-second (and per wall second) of each side, and its ratio to ``reference``.

    >>> rows = summarize({"a": [{"pairs_per_cpu_s": 2.0, "pairs_per_wall_s": 4.0}],
    ...                   "lightly best": [{"pairs_per_cpu_s": 1.0, "pairs_per_wall_s": 1.0}]})
    >>> [(r["side"], r["vs_reference"]) for r in rows]
    [('a', 2.0), ('lightly best', 1.0)]
    """
    ref = statistics.median(r["pairs_per_cpu_s"] for r in results[reference])
    rows = []
    for name, runs in results.items():
        cpu = statistics.median(r["pairs_per_cpu_s"] for r in runs)
        rows.append(
            {
                "side": name,
                "pairs_per_cpu_s": round(cpu, 1),
                "pairs_per_cpu_s_all": [round(r["pairs_per_cpu_s"], 1) for r in runs],
                "pairs_per_wall_s": round(statistics.median(r["pairs_per_wall_s"] for r in runs), 1),
                "vs_reference": round(cpu / ref, 2),
            }
        )
    return rows


# --------------------------------------------------------------------------- kNN at equal CPU time
def knn_top1(x_train, y_train, x_test, y_test, k: int = 200, temperature: float = 0.1, chunk: int = 1000) -> float:
    """Weighted kNN top-1 on cosine similarity (InstDisc / lightly / solo-learn's vote), in NumPy.

    Each test row votes with its ``k`` most similar training rows, weighted by
    ``exp(similarity / temperature)``; the class with the largest total wins.

    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> knn_top1(x, np.array([0, 0, 1, 1]), np.array([[1.0, 0.05], [0.0, 1.0]]), np.array([0, 1]), k=2)
    1.0
    """
    import numpy as np

    def unit(a):
        a = np.asarray(a, dtype=np.float32)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    bank, labels = unit(x_train), np.asarray(y_train)
    classes = int(labels.max()) + 1
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(x_test), chunk):
        q = unit(x_test[start : start + chunk])
        sim = q @ bank.T
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        weights = np.exp(np.take_along_axis(sim, idx, axis=1) / temperature)
        votes = np.zeros((len(q), classes), dtype=np.float64)
        np.add.at(votes, (np.arange(len(q))[:, None], labels[idx]), weights)
        correct += int((votes.argmax(axis=1) == np.asarray(y_test[start : start + chunk])).sum())
    return correct / len(x_test)


# lightly's side of the kNN comparison: its own CIFAR-10 benchmark's recipe (SGD 0.06 × batch/128,
# momentum 0.9, weight decay 5e-4, lightly's crops from 8%), or bt_keras's CPU recipe on lightly's
# code (AdamW peak 0.004 at batch 128, weight decay 1e-4, half an epoch of warmup, crops from 20%),
# which separates what the recipe does from what the step rate does.
LIGHTLY_RECIPES = {
    "lightly": ["--optimizer", "sgd", "--lr", str(0.06 * CONFIGS["small"]["batch"] / 128), "--weight-decay", "5e-4"],
    "lightly+bt_recipe": [
        *("--optimizer", "adamw", "--lr", "0.004", "--weight-decay", "1e-4"),
        *("--lr-warmup-steps", str(50000 // CONFIGS["small"]["batch"] // 2), "--min-scale", "0.2"),
    ],
}


def knn_runs(args, py: str, out: Path) -> list[dict]:
    import numpy as np

    # Rows of earlier sweeps into the same folder are kept (a rerun of a run replaces its row).
    path = out / "knn_rows.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    # Seed by seed: a sweep cut short still has every budget at the first seed.
    jobs = [(b, s, side) for s in args.seeds for b in args.budgets for side in args.sides]
    for budget, seed, side in jobs:
        feats = out / f"features_{side}_{budget:g}min_seed{seed}.npz"
        cpu_s = budget * 60
        if side == "bt_keras":
            cmd = ours_cmd("knn", "small", data=args.data, budget_cpu_s=cpu_s, seed=seed, out=feats)
            env = {}
        else:
            cmd = lightly_cmd(py, "knn", "small", True, data=args.data, budget_cpu_s=cpu_s, seed=seed, out=feats)
            cmd += ["--workers", str(args.workers)] + LIGHTLY_RECIPES[side]
            env = {"OMP_WAIT_POLICY": "PASSIVE"}
        log(f"kNN run: {side}, {budget:g} CPU-min, seed {seed}")
        t0 = time.time()
        res = run_json(cmd, env)
        f = np.load(feats)
        res.update(
            side=side,
            budget_cpu_min=budget,
            seed=seed,
            knn_top1=round(knn_top1(f["x_train"], f["y_train"], f["x_test"], f["y_test"]), 4),
            total_wall_s=round(time.time() - t0, 1),
            bank=int(len(f["y_train"])),
            queries=int(len(f["y_test"])),
        )
        log(f"  kNN top-1 {res['knn_top1']:.4f} after {res['steps']} steps ({res['wall_s']:.0f} s of training)")
        key = (side, budget, seed)
        rows = [r for r in rows if (r["side"], r["budget_cpu_min"], r["seed"]) != key] + [res]
        path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


# --------------------------------------------------------------------------- reporting
def machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
        flags = next(ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags"))
        info["isa_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except (OSError, StopIteration):
        pass
    return info


def table(rows: list[dict], title: str) -> str:
    lines = [
        f"**{title}**",
        "",
        "| side | pairs / CPU-s | × lightly best | pairs / s (wall) | rounds |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        runs = ", ".join(f"{x:.0f}" for x in r["pairs_per_cpu_s_all"])
        lines.append(
            f"| {r['side']} | {r['pairs_per_cpu_s']:.1f} | {r['vs_reference']:.2f}× | "
            f"{r['pairs_per_wall_s']:.1f} | {runs} |"
        )
    return "\n".join(lines)


def knn_table(rows: list[dict]) -> str:
    lines = [
        "| side | CPU-min | seed | steps | epochs | pairs / CPU-s | kNN top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["budget_cpu_min"], r["side"], r["seed"])):
        lines.append(
            f"| {r['side']} | {r['budget_cpu_min']:g} | {r['seed']} | {r['steps']} | "
            f"{r['pairs'] / r['bank']:.1f} | {r['pairs'] / r['cpu_s']:.0f} | {100 * r['knn_top1']:.1f}% |"
        )
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="peer.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["setup", "step", "e2e", "knn"])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"the peer venv (default {DEFAULT_VENV})")
    p.add_argument("--index-url", default=CPU_INDEX, help="extra index for PyTorch CPU wheels (setup)")
    p.add_argument("--configs", default="small,large", help="step/e2e: comma-separated of " + ", ".join(CONFIGS))
    p.add_argument("--isa", default="native", choices=sorted(ISA_ENV))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps per run (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="step: also lightly under torch.autocast(bfloat16)")
    p.add_argument("--data", help="e2e/knn: a folder with train/ and test/ class sub-folders of JPEGs")
    p.add_argument("--budgets", default="10,30", help="knn: CPU-minute budgets")
    p.add_argument("--seeds", default="0,1", help="knn: seeds")
    p.add_argument("--workers", type=int, default=2, help="knn: lightly's DataLoader workers")
    p.add_argument(
        "--sides",
        default="bt_keras,lightly",
        help="knn: comma-separated of bt_keras, lightly (its benchmark's recipe), lightly+bt_recipe (bt_keras's)",
    )
    p.add_argument("--out", type=Path, default=REPO / "runs" / "peer", help="output folder (JSON, tables)")
    args = p.parse_args(argv)
    args.budgets = [float(b) for b in args.budgets.split(",") if b]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.sides = [x.strip() for x in args.sides.split(",") if x.strip()]
    bad = [x for x in args.sides if x not in ("bt_keras", *LIGHTLY_RECIPES)]
    if bad:
        p.error(f"--sides: unknown {', '.join(bad)}")
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    if args.command in ("e2e", "knn") and not (args.data and (Path(args.data) / "train").is_dir()):
        p.error(
            f"--data: {args.data!r} has no train/ folder (python benchmarks/make_cifar10_folders.py DIR writes one)"
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.command == "setup":
        return setup(args.venv, args.index_url)
    py = peer_python(args.venv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"command": "python benchmarks/peer.py " + shlex.join(argv or sys.argv[1:]), "machine": machine()}
    report["peer"] = subprocess.run(
        [py, "-c", "import torch, lightly; print(torch.__version__, lightly.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    md = [
        f"`{report['command']}` — {report['machine'].get('cpu', '?')}, {report['machine']['cpus']} CPUs, "
        f"{report['machine']['date']}"
    ]
    if args.command == "knn":
        report["knn"] = knn_runs(args, py, args.out)
        md.append(knn_table(report["knn"]))
    else:
        for config in args.configs.split(","):
            named = sides(py, args.command, config, args)
            results = interleaved(named, args.rounds, ISA_ENV[args.isa])
            rows = summarize(results)
            report[config] = {"isa": args.isa, "rows": rows, "runs": results}
            c = CONFIGS[config]
            md.append(
                table(
                    rows,
                    f"{args.command}, {config} (w{c['width']}, projector {c['proj']}³, batch {c['batch']}, "
                    f"{c['optimizer']}), ISA {args.isa}",
                )
            )
    name = "knn" if args.command == "knn" else f"{args.command}_{args.configs.replace(',', '_')}_{args.isa}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{name}.md").write_text("\n\n".join(md) + "\n")
    print("\n\n".join(md))


if __name__ == "__main__":
    main()
