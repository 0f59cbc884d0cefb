"""Throughput of the full Barlow Twins train step: pairs/s, GFLOP/s and % of fp32 matmul peak.

The step is ``BarlowTwins.train_function``: two views through encoder and
projector, the loss, the gradient and the optimizer update, on synthetic
in-memory batches (the input pipeline is ``benchmarks/pipeline.py``'s job).

Models:
  cpu       ``configs/cifar10_cpu.yaml`` (its encoder, width, projector, batch, optimizer)
  resnet18  ``configs/cifar10_resnet18.yaml``: ResNet-18 CIFAR stem, width 64, projector 2048³, LARS

Every model is run in variants that each change one knob from the baseline (the
config as written; on CPU ``bt-train`` leaves XLA off): ``jit_compile``,
float32 vs ``mixed_bfloat16``, ``steps_per_execution``, the loss form,
synchronised BN, fused BN (``model.fused_batchnorm``) and the batch size,
plus combinations. The machine may be shared with other jobs, so the
variants and the fp32 matmul peak are timed in interleaved rounds in one
process, in a new random order each round; each is reported as
its best step (other jobs only ever slow a step down: the best is the closest
to the machine's own speed) and its median.

FLOPs are counted per layer from the built model (2·H·W·K²·Cin·Cout per conv,
2·in·out per Dense, the loss's matmuls), forward plus a backward pass of twice
the forward (once for the first conv, whose input needs no gradient), for two
views. BN, ReLU, adds and the optimizer are not counted: they are memory-bound
work that ``% peak`` charges to the step.

Usage (times on an idle 2-core machine):

    python benchmarks/train_step.py --models cpu --profile 3 --json cpu.json   # ≈ 6 min
    python benchmarks/train_step.py --models resnet18 --profile 2 --json r18.json
    python benchmarks/train_step.py --models "" --env-sweep   # oneDNN / threads / XLA flags, one process each
    python benchmarks/train_step.py --quick                   # cpu model, main knobs, 2 rounds
    python benchmarks/train_step.py --render cpu.json         # reprint the tables of a --json run
    python benchmarks/train_step.py --backends --models cpu,resnet18   # TensorFlow vs JAX, same step

``--backends`` runs each model's configured step (its precision, batch and
optimizer) on TensorFlow without and with XLA and on JAX (always XLA), one
process per run (Keras' backend is fixed per process), in interleaved rounds,
timing ``fit`` steps on the same synthetic batch with the same callback on
both backends. ``--precision mixed_bfloat16`` overrides the config's.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODEL_CONFIGS = {"cpu": "configs/cifar10_cpu.yaml", "resnet18": "configs/cifar10_resnet18.yaml"}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One knob setting; None everywhere means "as the config says" (the baseline)."""

    name: str
    jit: bool | None = None  # None: the config's, else off (what bt-train picks on CPU)
    precision: str | None = None
    spe: int | None = None
    loss: str | None = None
    flip_sync_bn: bool = False  # the opposite of the config's model.sync_batchnorm
    flip_fused_bn: bool = False  # the opposite of the config's model.fused_batchnorm
    batch: int | None = None


def variants_for(model: str, quick: bool, spe_many: int) -> list[Variant]:
    cfg = _load_cfg(model)
    other = "float32" if cfg.train.mixed_precision != "float32" else "mixed_bfloat16"
    batch = cfg.train.batch_size
    v = [
        Variant("baseline (config as written)"),
        Variant("jit_compile=True", jit=True),
        Variant(other, precision=other),
        Variant(f"steps_per_execution={spe_many}", spe=spe_many),
        Variant("loss dense", loss="dense"),
        Variant("loss gram", loss="gram"),
    ]
    if quick:
        return v
    v += [
        Variant(f"{other} + XLA", jit=True, precision=other),
        Variant("sync BN flipped", flip_sync_bn=True),
        Variant("fused BN flipped", flip_fused_bn=True),
        Variant(f"fused BN flipped + {other}", flip_fused_bn=True, precision=other),
    ]
    if model == "cpu":
        v += [Variant(f"batch {batch // 2}", batch=batch // 2), Variant(f"batch {batch * 2}", batch=batch * 2)]
    # A loss form equal to what "auto" resolves to repeats the baseline: kept only on the cpu model,
    # where it shows the run's noise.
    from bt_keras.losses import resolve_method

    auto = resolve_method(cfg.model.loss_method, batch, cfg.model.projector_dims[-1])
    return [x for x in v if model == "cpu" or x.loss != auto]


# --------------------------------------------------------------------------- FLOPs
def count_flops(model, batch: int, loss_method: str) -> dict:
    """Matmul/conv FLOPs of one train step (two views), counted per layer."""
    import keras

    from bt_keras.losses import resolve_method

    enc_fwd = enc_bwd = 0
    first_input = model.encoder.inputs[0]
    for layer in model.encoder.layers:
        if isinstance(layer, keras.layers.Conv2D):
            k_h, k_w, c_in, c_out = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            f = 2 * h * w * k_h * k_w * c_in * c_out
            enc_fwd += f
            enc_bwd += f if layer.input is first_input else 2 * f
        elif isinstance(layer, keras.layers.Dense):
            f = 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
            enc_fwd, enc_bwd = enc_fwd + f, enc_bwd + 2 * f
    proj = sum(
        2 * d.kernel.shape[0] * d.kernel.shape[1] for d in model.projector.layers if isinstance(d, keras.layers.Dense)
    )
    per_view = batch * (enc_fwd + enc_bwd + 3 * proj)
    d = model.projector_dims[-1]
    if resolve_method(loss_method, batch, d) == "gram":
        loss = 3 * 2 * (2 * batch * batch * d)  # two N×N Gram matrices, forward + backward
    else:
        loss = 3 * 2 * batch * d * d
    return {"per_step": 2 * per_view + loss, "encoder_fwd_per_image": enc_fwd, "loss": loss}


# --------------------------------------------------------------------------- building
def _load_cfg(model: str, overrides=()):
    from bt_keras.config import load_config
    from bt_keras.precision import with_resolved_precision

    return with_resolved_precision(load_config(os.path.join(ROOT, MODEL_CONFIGS[model]), overrides))


def build_variant(model_name: str, v: Variant, seed: int = 0):
    """A compiled BarlowTwins for ``v``, its ``train_function`` ready, and a repeating batch iterator."""
    import keras
    import numpy as np
    import tensorflow as tf

    from bt_keras.training import build_model, make_optimizer

    cfg = _load_cfg(model_name)
    sync = cfg.model.sync_batchnorm != v.flip_sync_bn
    fused = cfg.model.fused_batchnorm != v.flip_fused_bn
    batch = v.batch or cfg.train.batch_size
    # Resolved settings, for the table.
    v = dataclasses.replace(
        v,
        jit=bool(cfg.train.jit_compile) if v.jit is None else v.jit,
        precision=v.precision or cfg.train.mixed_precision,
        spe=v.spe or cfg.train.steps_per_execution,
        loss=v.loss or cfg.model.loss_method,
    )
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, loss_method=v.loss, sync_batchnorm=sync, fused_batchnorm=fused)
    )
    size = cfg.data.image_size
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_dtype_policy(v.precision)
    try:
        model = build_model(cfg, size)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    steps_per_epoch = max(50000 // batch, 1)
    model.compile(
        optimizer=make_optimizer(cfg.optim, batch, steps_per_epoch, cfg.train.epochs),
        jit_compile=v.jit,
        steps_per_execution=v.spe,
    )
    rng = np.random.default_rng(seed)
    views = tuple(tf.constant(rng.normal(size=(batch, size, size, 3)).astype("float32")) for _ in range(2))
    iterator = iter(tf.data.Dataset.from_tensors(views).repeat())
    model.make_train_function()
    flops = count_flops(model, batch, v.loss)
    return {
        "model": model,
        "iterator": iterator,
        "batch": batch,
        "flops": flops,
        "sync": sync,
        "fused": fused,
        "variant": v,
        "optimizer": cfg.optim.name,
        "encoder": f"{cfg.model.encoder} w{cfg.model.width}",
        "projector": "×".join(map(str, cfg.model.projector_dims)),
        "size": size,
    }


def run_calls(entry, calls: int) -> list[float]:
    """Seconds per train step, one number per ``train_function`` call (of ``spe`` steps)."""
    model, it = entry["model"], entry["iterator"]
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        logs = model.train_function(it)
        float(logs["loss"])  # waits for the step
        out.append((time.perf_counter() - t) / model.steps_per_execution)
    return out


def matmul_peak(n: int = 4096, repeats: int = 6) -> float:
    """fp32 GFLOP/s of an n×n matmul, best of ``repeats``: what this round's share of the machine allows."""
    import tensorflow as tf

    a = tf.random.normal([n, n], seed=1)
    b = tf.random.normal([n, n], seed=2)
    f = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    float(f(a, b))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        float(f(a, b))
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# --------------------------------------------------------------------------- profile
def _op_category(name: str, op: str) -> str:
    if "Conv2D" in op:
        return "conv backprop-filter" if "Filter" in op else "conv backprop-input" if "Input" in op else "conv forward"
    if "MatMul" in op:
        return "matmul (projector, loss)"
    if re.search(r"_bn\d*(_\d+)?/|/bn\d(_\d+)?/|batchnorm|moments|FusedBatchNorm", name + op):
        return "batchnorm fwd+bwd (elementwise, reductions)"
    if "Relu" in op:
        return "relu fwd+bwd"
    if re.search(r"(^|/)(adam_w|lars|adam|sgd)(_\d+)?/", name):
        return "optimizer update"
    if op == "AddN":
        return "AddN (sums the two views' gradients)"
    return "other (adds, loss, casts, copies)"


def profile_ops(entry, steps: int) -> dict:
    """Host op time of ``steps`` train steps from a TF profiler trace, by op type and category.

    Times are summed over TF's compute threads (two ops can overlap), so the
    shares are of total op time, not of the wall-clock step.
    """
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="bt_profile_")
    run_calls(entry, 1)
    tf.profiler.experimental.start(logdir)
    run_calls(entry, steps)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    by_op, by_cat = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor's op threads
                continue
            for ev in line.events:
                name = plane.event_metadata[ev.metadata_id].name
                if ":" not in name or "::" in name:  # executor spans, not ops
                    continue
                scope, op = name.rsplit(":", 1)
                ms = ev.duration_ps / 1e9 / steps
                by_op[op] += ms
                by_cat[_op_category(scope, op)] += ms
    total = sum(by_op.values()) or 1.0
    return {
        "total_ms": total,
        "by_op": [(o, ms, ms / total) for o, ms in by_op.most_common(12)],
        "by_category": [(c, ms, ms / total) for c, ms in by_cat.most_common()],
    }


# --------------------------------------------------------------------------- env sweep (subprocesses)
# (label, environment, jit_compile). XLA_FLAGS and TF_ENABLE_ONEDNN_OPTS are read when TF starts:
# one process per setting, alternated over rounds.
_ONEDNN_XLA = "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"
ENV_SETTINGS = [
    ("default", {}, False),
    ("TF_ENABLE_ONEDNN_OPTS=0", {"TF_ENABLE_ONEDNN_OPTS": "0"}, False),
    ("intra-op 2, inter-op 1 threads", {"BT_THREADS": "2,1"}, False),
    ("intra-op 1, inter-op 2 threads", {"BT_THREADS": "1,2"}, False),
    ("XLA", {}, True),
    ("XLA + oneDNN in XLA", {"XLA_FLAGS": _ONEDNN_XLA}, True),
    ("XLA + XNNPACK in XLA", {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"}, True),
]


def _env_child(model: str, calls: int, jit: bool) -> None:
    import tensorflow as tf

    if os.environ.get("BT_THREADS"):
        intra, inter = map(int, os.environ["BT_THREADS"].split(","))
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    entry = build_variant(model, Variant("baseline", jit=jit))
    run_calls(entry, 2)
    peak = matmul_peak()
    times = run_calls(entry, calls)
    print(json.dumps({"seconds": times, "flops": entry["flops"]["per_step"], "peak": peak}))


def env_sweep(model: str, rounds: int, calls: int, only=None) -> list[dict]:
    settings = [s for s in ENV_SETTINGS if not only or s[0] == "default" or any(k in s[0] for k in only)]
    results = {name: [] for name, _, _ in settings}
    peaks = {name: [] for name, _, _ in settings}
    flops = None
    for _ in range(rounds):
        for name, extra, jit in settings:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
            cmd = [sys.executable, __file__, "--env-child", model, "--calls", str(calls)] + (["--jit"] if jit else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                print(f"{name}: failed: {proc.stderr.strip().splitlines()[-1][:300]}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name] += r["seconds"]
            peaks[name].append(r["peak"])
            flops = r["flops"]
            print(
                f"[env] {name}: {1000 * statistics.median(r['seconds']):.0f} ms/step, peak {r['peak']:.0f}", flush=True
            )
    rows = []
    for name, _, _ in settings:
        if not results[name]:
            continue
        s = min(results[name])
        rows.append(
            {
                "setting": name,
                "step_ms": 1000 * s,
                "gflops": flops / s / 1e9,
                "seconds": results[name],
                "matmul_peak": max(peaks[name]),
            }
        )
    return rows


# --------------------------------------------------------------------------- backends
BACKEND_SETTINGS = (("tensorflow", False), ("tensorflow", True), ("jax", True))


def _backend_child(model_name: str, calls: int, jit: bool, precision: str | None) -> None:
    """One backend's step time (KERAS_BACKEND is set by the parent), printed as one JSON line."""
    import keras
    import numpy as np
    import tensorflow as tf

    from bt_keras.training import build_model, make_optimizer

    cfg = _load_cfg(model_name)
    batch, size = cfg.train.batch_size, cfg.data.image_size
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_dtype_policy(precision or cfg.train.mixed_precision)
    model = build_model(cfg, size)
    model.compile(optimizer=make_optimizer(cfg.optim, batch, 100, cfg.train.epochs), jit_compile=jit)
    rng = np.random.default_rng(0)
    views = tuple(rng.normal(size=(batch, size, size, 3)).astype("float32") for _ in range(2))
    data = tf.data.Dataset.from_tensors(views).repeat()

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self._t = [], 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step
            self.seconds.append(time.perf_counter() - self._t)

    timer = StepTimes()
    warmup = 2
    model.fit(data, epochs=1, steps_per_epoch=warmup + calls, verbose=0, callbacks=[timer], shuffle=False)
    flops = count_flops(model, batch, cfg.model.loss_method)["per_step"]
    print(json.dumps({"seconds": timer.seconds[warmup:], "flops": flops, "peak": matmul_peak(), "batch": batch}))


def backend_sweep(model_name: str, rounds: int, calls: int, precision: str | None) -> list[dict]:
    """TensorFlow (XLA off/on) vs JAX on ``model_name``'s step, interleaved rounds, one process each."""
    runs = {s: [] for s in BACKEND_SETTINGS}
    info = {}
    for _ in range(rounds):
        for backend, jit in random.sample(BACKEND_SETTINGS, len(BACKEND_SETTINGS)):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend)
            cmd = [sys.executable, __file__, "--backend-child", model_name, "--calls", str(calls)]
            cmd += (["--jit"] if jit else []) + (["--precision", precision] if precision else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                print(f"{backend} (XLA {jit}): failed: {proc.stderr.strip().splitlines()[-1][:300]}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[(backend, jit)] += r["seconds"]
            info = {"flops": r["flops"], "batch": r["batch"], "peak": max(info.get("peak", 0), r["peak"])}
            med = 1000 * statistics.median(r["seconds"])
            print(f"[backends] {model_name} {backend} XLA {'on' if jit else 'off'}: {med:.0f} ms/step", flush=True)
    rows = []
    for (backend, jit), seconds in runs.items():
        if seconds:
            best = min(seconds)
            rows.append({"model": model_name, "backend": backend, "jit": jit, "seconds": seconds, **info, "best": best})
    return rows


def render_backends(rows: list[dict], precision: str) -> str:
    lines = [
        f"Train step by backend ({precision}; best step of all rounds, median beside it):",
        "",
        "| model | backend | XLA | ms/step (best) | ms/step (median) | pairs/s | GFLOP/s | % of fp32 matmul peak |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        gf = r["flops"] / r["best"] / 1e9
        lines.append(
            f"| {r['model']} | {r['backend']} | {'on' if r['jit'] else 'off'} | {1000 * r['best']:.0f} | "
            f"{1000 * statistics.median(r['seconds']):.0f} | {r['batch'] / r['best']:.0f} | {gf:.0f} | "
            f"{100 * gf / r['peak']:.0f}% |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def _describe(model_name: str) -> str:
    cfg = _load_cfg(model_name)
    m = cfg.model
    return (
        f"{m.encoder} width {m.width}, projector {'×'.join(map(str, m.projector_dims))}, "
        f"{cfg.data.image_size} px, optimizer {cfg.optim.name}"
    )


def render_model(model_name: str, rep: dict) -> str:
    """The variants table and profiles of one model from its measurements (live or from --json)."""
    peak = max(rep["peaks"])  # The best the machine showed: other jobs only ever lower it.
    vs = rep["variants"]
    base_name = next(iter(vs))
    base_best, base_med = (f(vs[base_name]["seconds"]) / vs[base_name]["batch"] for f in (min, statistics.median))
    b = vs[base_name]
    lines = [
        f"**{model_name}** ({rep.get('describe') or _describe(model_name)}): "
        f"{b['flops_per_step'] / 1e9:.1f} GFLOP per step at batch {b['batch']}; fp32 matmul peak "
        f"{peak:.0f} GFLOP/s (best of {len(rep['peaks'])} rounds, median {statistics.median(rep['peaks']):.0f}); "
        f"{len(b['seconds'])} timed steps per variant, interleaved",
        "",
        "| variant | XLA | precision | spe | loss | sync BN | fused BN | batch | ms/step best | ms/step median "
        "| pairs/s | GFLOP/s | % of peak | vs baseline (best) | vs baseline (median) |",
        "|---|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in vs.items():
        best, med = min(v["seconds"]), statistics.median(v["seconds"])
        gf = v["flops_per_step"] / best / 1e9
        lines.append(
            f"| {name} | {'on' if v['jit'] else 'off'} | {v['precision']} | {v['spe']} | {v['loss']} | "
            f"{'yes' if v['sync_bn'] else 'no'} | {'yes' if v.get('fused_bn') else 'no'} | {v['batch']} | "
            f"{1000 * best:.0f} | {1000 * med:.0f} | "
            f"{v['batch'] / best:.0f} | {gf:.0f} | {100 * gf / peak:.0f}% | "
            f"{base_best / (best / v['batch']):.2f}× | {base_med / (med / v['batch']):.2f}× |"
        )
    for name, prof in (rep.get("profiles") or {}).items():
        lines += [
            "",
            f"Where the step's time goes: {model_name}, {name} (TF profiler trace of "
            f"{prof.get('steps', '?')} steps; op time {prof['total_ms']:.0f} ms/step summed over TF's "
            f"threads):",
            "",
            "| category | ms/step | share |",
            "|---|---:|---:|",
        ]
        lines += [f"| {c} | {ms:.0f} | {100 * sh:.1f}% |" for c, ms, sh in prof["by_category"]]
        lines += ["", "| op type | ms/step | share |", "|---|---:|---:|"]
        lines += [f"| {o} | {ms:.0f} | {100 * sh:.1f}% |" for o, ms, sh in prof["by_op"]]
    return "\n".join(lines)


def render_env(rows: list[dict]) -> str:
    lines = [
        "Environment settings (cpu model baseline; one process per setting, alternated over rounds; best step):",
        "",
        "| setting | ms/step | GFLOP/s | vs default | matmul peak in that process |",
        "|---|---:|---:|---:|---:|",
    ]
    base = next((r["step_ms"] for r in rows if r["setting"] == "default"), None)
    lines += [
        f"| {r['setting']} | {r['step_ms']:.0f} | {r['gflops']:.0f} | "
        f"{(base / r['step_ms']) if base else float('nan'):.2f}× | {r['matmul_peak']:.0f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None, help="comma-separated: cpu,resnet18 (default: both; --quick: cpu)")
    p.add_argument("--quick", action="store_true", help="main knobs only, fewer rounds")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds (default: cpu 8, resnet18 3, env sweep 2; --quick 2)",
    )
    p.add_argument("--calls", type=int, default=None, help="timed calls per variant per round")
    p.add_argument("--spe", type=int, default=None, help="the 'many' steps_per_execution (default 8; resnet18: 2)")
    p.add_argument("--variants", default=None, help="comma-separated subset of variant names (substring match)")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="trace STEPS baseline steps per model and print the top ops",
    )
    p.add_argument("--env-sweep", action="store_true", help="also compare oneDNN/thread settings (cpu model)")
    p.add_argument("--env-only", help="comma-separated subset of --env-sweep settings (substring match)")
    p.add_argument("--json", help="write all measurements here")
    p.add_argument("--backends", action="store_true", help="only compare TensorFlow and JAX (see above)")
    p.add_argument("--precision", help="with --backends: override the configs' mixed_precision")
    p.add_argument("--env-child", help=argparse.SUPPRESS)
    p.add_argument("--backend-child", help=argparse.SUPPRESS)
    p.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--render", metavar="JSON", help="print the tables of a previous --json run and exit")
    args = p.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        for name, rep in saved["models"].items():
            print(render_model(name, rep) + "\n")
        if saved.get("env_sweep"):
            print(render_env(saved["env_sweep"]))
        return
    if args.env_child:
        _env_child(args.env_child, args.calls or 3, args.jit)
        return
    if args.backend_child:
        _backend_child(args.backend_child, args.calls or 3, args.jit, args.precision)
        return
    if args.backends:
        rows = []
        for model_name in (args.models or "cpu").split(","):
            rows += backend_sweep(model_name, args.rounds or 2, args.calls or 4, args.precision)
        print("\n" + render_backends(rows, args.precision or "each config's precision"))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"backends": rows}, f, indent=1)
        return

    models = [
        m for m in ("cpu" if args.quick else "cpu,resnet18" if args.models is None else args.models).split(",") if m
    ]
    import tensorflow as tf

    print(
        f"TF {tf.__version__}; CPU flags: "
        + ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in open("/proc/cpuinfo").read())
        + f"; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    report = {"models": {}}
    for model_name in models:
        calls = args.calls or 1
        rounds = args.rounds or (2 if args.quick else 3 if model_name == "resnet18" else 8)
        spe = args.spe or (2 if model_name == "resnet18" else 8)
        vs = variants_for(model_name, args.quick, spe)
        if args.variants:
            keep = args.variants.split(",")
            vs = [v for v in vs if v.name.startswith("baseline") or any(k in v.name for k in keep)]
        entries, results, peaks = {}, {v.name: [] for v in vs}, []
        for v in vs:
            t = time.perf_counter()
            e = build_variant(model_name, v)
            run_calls(e, 1)  # trace + compile
            e["compile_s"] = time.perf_counter() - t
            run_calls(e, 1)
            entries[v.name] = e
            print(f"[{model_name}] built {v.name} ({e['compile_s']:.0f} s incl. first step)", flush=True)
        for v in vs:  # A discarded round: the first calls after building the others run slow.
            run_calls(entries[v.name], 1)
        order = list(vs)
        for r in range(rounds):
            peaks.append(matmul_peak())
            # A new order every round: other jobs' load comes in phases that a fixed order could line up with.
            random.Random(r).shuffle(order)
            for v in order:
                results[v.name] += run_calls(entries[v.name], calls)
            print(
                f"[{model_name}] round {r + 1}/{rounds}: peak {peaks[-1]:.0f} GFLOP/s, load "
                f"{os.getloadavg()[0]:.1f}; "
                + ", ".join(f"{n}: {1000 * statistics.median(results[n][-calls:]):.0f} ms" for n in results),
                flush=True,
            )
        rep = report["models"][model_name] = {
            "describe": _describe(model_name),
            "peaks": peaks,
            "profiles": {},
            "variants": {
                n: {
                    **dataclasses.asdict(e["variant"]),
                    "batch": e["batch"],
                    "sync_bn": e["sync"],
                    "fused_bn": e["fused"],
                    "flops_per_step": e["flops"]["per_step"],
                    "seconds": results[n],
                    "compile_s": e["compile_s"],
                }
                for n, e in entries.items()
            },
        }
        # The baseline and the fastest variant.
        fastest = min(entries, key=lambda n: min(results[n]) / entries[n]["batch"])
        for name in dict.fromkeys([vs[0].name, fastest]) if args.profile else []:
            rep["profiles"][name] = {**profile_ops(entries[name], args.profile), "steps": args.profile}
        print("\n" + render_model(model_name, rep) + "\n", flush=True)
        entries.clear()  # free the compiled models before the next one
        if args.json:  # after each model: a late failure keeps the earlier measurements
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1, default=str)
    if args.env_sweep:
        report["env_sweep"] = env_sweep(
            "cpu",
            rounds=args.rounds or 2,
            calls=args.calls or 3,
            only=args.env_only.split(",") if args.env_only else None,
        )
        print("\n" + render_env(report["env_sweep"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
