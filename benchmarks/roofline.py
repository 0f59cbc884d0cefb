"""The train step at the kernel level: oneDNN's time per primitive, and its rate against a matmul's.

    python benchmarks/roofline.py                          # small and large, native ISA, float32
    python benchmarks/roofline.py --configs small --isa avx2

Runs ``benchmarks/peer_ours.py step`` (the step that ``benchmarks/peer.py`` times next to lightly:
the same model, batch, optimizer and ``train.cpu_threads`` layout as ``bt-train``) in a child process
with ``ONEDNN_VERBOSE=1``, under which oneDNN prints one line per primitive it executes: its kind,
implementation, shapes and milliseconds. The timed steps' lines are summed per primitive kind
and implementation; convolutions and matmuls get a rate from their shapes (2·MACs), compared
with a 2048² float32 matmul on as many threads per op as the step's layout gives one op (a
second child, same ISA). What is left of the step's CPU time outside oneDNN is TensorFlow's own
kernels (ReLU and its gradient, residual adds, the AddN of the two views' gradients, the
optimizer, casts) and the executor.

The question it answers: how much faster could *any* implementation of this step be on this
CPU, with the same arithmetic? If the convolutions and matmuls already run at the matmul's rate,
only the memory-bound remainder can shrink. Printing every primitive costs a little CPU; the
step time it reports is the verbose run's (see ``peer.py step`` for clean rates).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from peer import ISA_ENV, QUIET  # noqa: E402

MATMUL_N = 2048


def primitive_gflop(kind: str, shape: str) -> float:
    """GFLOP of one convolution or matmul from oneDNN's shape string; 0 for other primitives.

    >>> primitive_gflop("convolution", "mb128_ic16oc32_ih32oh16kh3sh2dh0ph0_iw32ow16kw3sw2dw0pw0")
    0.301989888
    >>> primitive_gflop("gemm_api", "128x1024:1024x1024")
    0.268435456
    >>> primitive_gflop("batch_normalization", "mb128ic16ih32iw32")
    0.0
    """
    if kind == "convolution":
        d = {k: int(v) for k, v in re.findall(r"([a-z]+)(\d+)", shape)}
        groups = d.get("g", 1)
        return 2 * d["mb"] * d["oh"] * d["ow"] * d["kh"] * d["kw"] * d["ic"] * d["oc"] / groups / 1e9
    if kind in ("gemm_api", "matmul", "inner_product"):
        m = re.fullmatch(r"(\d+)x(\d+):(\d+)x(\d+)", shape)
        if m:
            rows, inner, _, cols = map(int, m.groups())
            return 2 * rows * inner * cols / 1e9
    return 0.0


def parse_exec_lines(text: str, calls: int, timed: int) -> dict:
    """Per-step totals of the last ``timed`` of ``calls`` train-function calls' primitive executions.

    Every call executes the same primitives, so the exec lines split into ``calls`` equal runs.
    """
    lines = [ln.split(",") for ln in text.splitlines() if ln.startswith("onednn_verbose,v1,primitive,exec,")]
    per_call, rest = divmod(len(lines), calls)
    if rest or not per_call:
        raise SystemExit(f"roofline.py: {len(lines)} oneDNN exec lines do not split into {calls} equal calls")
    rows = collections.defaultdict(lambda: {"calls": 0, "ms": 0.0, "gflop": 0.0})
    for f in lines[-timed * per_call :]:
        i = f.index("exec")
        kind, impl, prop = f[i + 2], f[i + 3] or "-", f[i + 4]
        row = rows[(kind, impl, prop)]
        row["calls"] += 1
        row["ms"] += float(f[-1])
        row["gflop"] += primitive_gflop(kind, f[-2])
    return {k: {n: v / timed for n, v in row.items()} for k, row in rows.items()}


def _matmul_child(threads: int) -> None:
    import tensorflow as tf
    from train_step import matmul_peak

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    print(json.dumps({"gflops": matmul_peak(MATMUL_N)}))


def _child(cmd: list[str], env: dict) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **QUIET, **env})
    if proc.returncode:
        raise SystemExit(f"roofline.py: {' '.join(cmd[1:3])} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def measure(config: str, isa: str, precision: str, steps: int, warmup: int) -> dict:
    step_cmd = [sys.executable, os.path.join(HERE, "peer_ours.py"), "step", "--config", config]
    step_cmd += ["--precision", precision, "--steps", str(steps), "--warmup", str(warmup)]
    out = _child(step_cmd, {**ISA_ENV[isa], "ONEDNN_VERBOSE": "1"})
    result = json.loads(out.strip().splitlines()[-1])
    found = re.search(r"runtime:threadpool,nthr:(\d+)", out)
    if not found:
        raise SystemExit("roofline.py: oneDNN's verbose log names no thread count (runtime:threadpool,nthr:N)")
    threads = int(found.group(1))
    matmul = json.loads(_child([sys.executable, __file__, "--matmul-child", str(threads)], ISA_ENV[isa]))
    # peer_ours.timed: `warmup` calls, then `steps` timed ones (the first call traces the function).
    rows = parse_exec_lines(out, warmup + steps, steps)
    return {
        "config": config,
        "isa": isa,
        "precision": result["precision"],
        "threads_per_op": threads,
        "matmul_gflops": matmul["gflops"],
        "step_cpu_ms": 1000 * result["cpu_s"] / steps,
        "rows": [{"kind": k[0], "impl": k[1], "prop": k[2], **v} for k, v in rows.items()],
    }


def render(m: dict) -> str:
    rate = m["matmul_gflops"]
    rows = sorted(m["rows"], key=lambda r: -r["ms"])
    dnn_ms = sum(r["ms"] for r in rows)
    arith = [r for r in rows if r["gflop"]]
    arith_ms, arith_gflop = sum(r["ms"] for r in arith), sum(r["gflop"] for r in arith)
    lines = [
        f"**{m['config']}**, {m['isa']} ISA, {m['precision']}: step {m['step_cpu_ms']:.0f} CPU-ms "
        f"(verbose run); oneDNN {dnn_ms:.0f} ms of it; {m['threads_per_op']} thread(s) per op; "
        f"{MATMUL_N}² matmul on as many threads: {rate:.0f} GFLOP/s",
        "",
        "| primitive | implementation | pass | calls/step | ms/step | GFLOP/s | of the matmul's rate |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["ms"] < 0.5:
            continue
        g = r["gflop"] / r["ms"] * 1000 if r["gflop"] else None
        lines.append(
            f"| {r['kind']} | {r['impl']} | {r['prop']} | {r['calls']:.0f} | {r['ms']:.1f} | "
            + (f"{g:.0f} | {100 * g / rate:.0f}% |" if g else "– | – |")
        )
    at_rate = arith_gflop / rate * 1000
    lines += [
        "",
        f"Convolutions and matmuls: {arith_gflop:.1f} GFLOP in {arith_ms:.0f} ms/step "
        f"({arith_gflop / arith_ms * 1000:.0f} GFLOP/s, {100 * at_rate / arith_ms:.0f}% of the matmul's rate; "
        f"{at_rate:.0f} ms at that rate). Everything else: {m['step_cpu_ms'] - arith_ms:.0f} ms/step "
        f"({dnn_ms - arith_ms:.0f} in oneDNN's other primitives, BN above all).",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="small,large", help="comma-separated: small (CPU config), large (ResNet-18)")
    p.add_argument("--isa", default="native", choices=sorted(ISA_ENV))
    p.add_argument(
        "--precision",
        default="float32",
        help="train.mixed_precision for the step (float32, auto, ...); the reference matmul stays float32",
    )
    p.add_argument("--steps", type=int, default=3, help="timed train-function calls")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", help="also write the measurements here")
    p.add_argument("--matmul-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.matmul_child:
        _matmul_child(args.matmul_child)
        return
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}; CPU flags: "
        + (", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags) or "?")
        + f"; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}\n",
        flush=True,
    )
    results = []
    for config in args.configs.split(","):
        results.append(measure(config, args.isa, args.precision, args.steps, args.warmup))
        print(render(results[-1]) + "\n", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
