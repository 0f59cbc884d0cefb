"""The ablation switches (pixel shuffle, loss standardisation) and benchmarks/ablations.py.

- ``data.augment.pixel_shuffle``: one permutation, fixed by its seed, applied last to both views
  and to every evaluation image, keeping each image's pixels (so its histogram) exactly; off, the
  pipeline is bit for bit the code path without it.
- ``model.standardize``: center / none equal a float64 NumPy transcription of the loss and of its
  gradient, dense and Gram forms, on one device and over 2 replicas (TensorFlow MirroredStrategy
  on logical CPUs, and JAX with the batch sharded over 2 host devices), in subprocesses.
- ``benchmarks/ablations.py`` end to end on the demo set at a budget of a fraction of a CPU second.
"""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf

from bt_keras.augment import TwoViews, augment_pair, example_keys, get_preset
from bt_keras.augment.config import AugmentConfigError
from bt_keras.augment.crop import crop_resize_batch
from bt_keras.augment.params import sample_params
from bt_keras.augment.pixel import apply_batch
from bt_keras.augment.shuffle import maybe_shuffle_pixels, pixel_permutation
from bt_keras.contract import PreprocessingContract, read_contract
from bt_keras.data import DataConfig
from bt_keras.data.labelled import crop_flip_config, sample_labelled
from bt_keras.data.pipelines import eval_dataset
from bt_keras.losses import barlow_twins_terms

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import jax_case  # noqa: E402
import standardize_case  # noqa: E402

SIZE = 16
# Random per example (crop, flip, grayscale) but a small pixel program: cheap to compile.
SHUFFLED = get_preset(
    "none",
    crop={"enabled": True},
    flip={"enabled": True},
    grayscale={"enabled": True, "prob": 0.5},
    pixel_shuffle={"enabled": True, "seed": 5},
)
NORMAL = dataclasses.replace(SHUFFLED, pixel_shuffle=get_preset("none").pixel_shuffle)
PERM = pixel_permutation(SIZE, 5)


def _images(n=8, side=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _permuted(x):
    """``x`` [B, S, S, 3] with PERM applied in NumPy (an independent transcription)."""
    x = np.asarray(x)
    return x.reshape(len(x), -1, 3)[:, PERM].reshape(x.shape)


def _same_pixels(a, b):
    """Each image of ``a`` holds exactly the pixels (RGB triples) of the one in ``b``: same histogram."""
    for x, y in zip(np.asarray(a), np.asarray(b)):
        px, py = x.reshape(-1, 3), y.reshape(-1, 3)
        np.testing.assert_array_equal(px[np.lexsort(px.T)], py[np.lexsort(py.T)])


# --- pixel shuffle -------------------------------------------------------------------------------


def test_the_permutation_is_fixed_by_its_seed():
    assert sorted(PERM.tolist()) == list(range(SIZE * SIZE))
    np.testing.assert_array_equal(PERM, np.random.default_rng(5).permutation(SIZE * SIZE))
    assert not np.array_equal(PERM, pixel_permutation(SIZE, 6))
    assert (PERM != np.arange(SIZE * SIZE)).mean() > 0.9  # it does move the pixels


@pytest.mark.parametrize("path", ["whole_batch", "per_image", "bytes"])
def test_both_views_get_the_same_permutation_of_the_normal_views(path):
    # Shuffled views are the normal views (same keys: same crops, jitter, ...) with PERM applied:
    # per-example randomness is untouched and both views share the permutation.
    images = _images()
    keys = example_keys(0, 3, tf.range(len(images), dtype=tf.int64))

    def views(cfg):
        v = TwoViews(cfg, image_size=SIZE, seed=0, normalize=False)
        if path == "whole_batch":
            return v.from_same_size(tf.constant(images), keys, 20, 20)
        if path == "per_image":
            return augment_pair(images, seed=0, config=cfg, image_size=SIZE, normalize=False)
        data = [tf.io.encode_png(x) for x in images]  # PNG: the decode-then-crop branch
        stage1 = [v.crops_from_bytes(d, keys[i]) for i, d in enumerate(data)]
        stacked = [tf.nest.map_structure(lambda *t: tf.stack(t), *[s[j] for s in stage1]) for j in (0, 1)]
        return v.finish(*stacked)

    got, want = views(SHUFFLED), views(NORMAL)
    for shuffled_view, normal_view in zip(got, want):
        np.testing.assert_array_equal(shuffled_view.numpy(), _permuted(normal_view))
        _same_pixels(shuffled_view, normal_view)
    assert not np.array_equal(got[0].numpy(), want[0].numpy())


def test_evaluation_images_get_the_same_permutation_everywhere():
    cfg = DataConfig(source="demo:train", image_size=SIZE, augment=SHUFFLED, val_source="demo:test")
    plain = DataConfig(source="demo:train", image_size=SIZE, augment=NORMAL, val_source="demo:test")
    contract = cfg.contract()
    assert contract.pixel_shuffle_seed == 5 and plain.contract().pixel_shuffle_seed is None
    # Recorded with the encoder (preprocessing.json), so bt-eval --run and the linear probe use it.
    assert PreprocessingContract.from_json(contract.to_json()) == contract
    assert "pixel_shuffle" not in plain.contract().to_json()  # other runs' files are unchanged
    probe = crop_flip_config(contract)
    assert probe.pixel_shuffle.enabled and probe.pixel_shuffle.seed == 5
    (x, _), (x0, _) = next(iter(cfg.eval_dataset(64))), next(iter(plain.eval_dataset(64)))
    np.testing.assert_array_equal(x.numpy(), _permuted(x0))
    _same_pixels(x, x0)
    bank, _ = sample_labelled("demo:test", 16, contract, seed=1)  # the kNN monitor's sets
    bank0, _ = sample_labelled("demo:test", 16, plain.contract(), seed=1)
    np.testing.assert_array_equal(bank, _permuted(bank0))


def test_off_is_bit_for_bit_the_path_without_the_option():
    default = get_preset("cifar")
    assert not default.pixel_shuffle.enabled and default == get_preset("cifar", pixel_shuffle={"enabled": False})
    x = tf.zeros([2, 4, 4, 3])
    assert maybe_shuffle_pixels(x, default, 4) is x  # no op in the graph at all
    images = _images()
    keys = example_keys(0, 1, tf.range(len(images), dtype=tf.int64))
    got = TwoViews(default, SIZE, 0).from_same_size(tf.constant(images), keys, 20, 20)
    for view in (0, 1):  # the pixel pipeline without any shuffle code
        p = sample_params(keys, 20, 20, default, view)
        crops = crop_resize_batch(images, p["crop"], SIZE, default, channels_first=True, flip=p["flip"])
        want = apply_batch(crops, p, default, view, True, channels_first=True, flipped=True)
        np.testing.assert_array_equal(got[view].numpy(), want.numpy())
    plain = DataConfig(val_source="demo:test", image_size=SIZE)
    x, _ = next(iter(plain.eval_dataset(32)))
    x0, _ = next(iter(eval_dataset("demo:test", batch_size=32, image_size=SIZE, mean=plain.mean, std=plain.std)))
    np.testing.assert_array_equal(x.numpy(), x0.numpy())


def test_bad_settings_are_one_line_errors_naming_the_key(tmp_path):
    from bt_keras.cli.export import _resolve, build_parser
    from bt_keras.config import config_from_dict
    from bt_keras.errors import ConfigError, ExportArgumentError

    with pytest.raises(AugmentConfigError, match=r"^augment\.pixel_shuffle\.seed: must be an integer >= 0"):
        get_preset("cifar", pixel_shuffle={"seed": -1})
    with pytest.raises(ConfigError, match=r"^data\.augment\.pixel_shuffle\.enabled: expected bool"):
        config_from_dict({"data": {"augment": {"pixel_shuffle": {"enabled": "yes"}}}})
    with pytest.raises(ConfigError, match=r"^model\.standardize: expected one of 'full', 'center', 'none'"):
        config_from_dict({"model": {"standardize": "batchnorm"}})
    assert config_from_dict({}).model.standardize == "full"
    # Export refuses an encoder of a shuffled run: serving would feed it unpermuted pixels.
    (tmp_path / "encoder.keras").write_bytes(b"not read: the contract is checked first")
    contract = DataConfig(image_size=SIZE, augment=SHUFFLED).contract()
    (tmp_path / "preprocessing.json").write_text(contract.to_json())
    assert read_contract(tmp_path / "preprocessing.json").pixel_shuffle_seed == 5
    args = build_parser().parse_args(["--run", str(tmp_path), "--out", str(tmp_path / "export")])
    with pytest.raises(ExportArgumentError, match="pixel_shuffle") as err:
        _resolve(args)
    assert "\n" not in str(err.value)


# --- standardisation of the loss -----------------------------------------------------------------


def reference(z_a, z_b, mode, lambd=0.0051, eps=1e-5):
    """Loss and (dL/dz_a, dL/dz_b) in float64 NumPy, backpropagated by hand."""
    n = len(z_a)

    def forward(z):
        z = z.astype(np.float64)
        if mode == "none":
            return z, lambda g: g
        c = z - z.mean(0)
        if mode == "center":
            return c, lambda g: g - g.mean(0)
        s = np.sqrt(c.var(0) + eps)
        a = c / s
        return a, lambda g: (g - g.mean(0) - a * (g * a).mean(0)) / s

    (a, back_a), (b, back_b) = forward(z_a), forward(z_b)
    c = a.T @ b / n
    off = ~np.eye(c.shape[0], dtype=bool)
    loss = ((1 - np.diag(c)) ** 2).sum() + lambd * (c[off] ** 2).sum()
    g = np.where(off, 2 * lambd * c, 0.0) - 2 * np.diag(1 - np.diag(c))  # dL/dC
    return loss, back_a(b @ g.T / n), back_b(a @ g / n)


@pytest.mark.parametrize("mode", ["full", "center", "none"])
@pytest.mark.parametrize("method", ["dense", "gram"])
def test_standardize_matches_numpy_on_one_device(mode, method):
    z_a, z_b = standardize_case.inputs(40)
    want, want_ga, want_gb = reference(z_a, z_b, mode)
    a, b = tf.constant(z_a), tf.constant(z_b)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss = barlow_twins_terms(a, b, method=method, standardize=mode).loss
    g_a, g_b = tape.gradient(loss, [a, b])
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)
    scale = max(np.abs(want_ga).max(), np.abs(want_gb).max())
    np.testing.assert_allclose(g_a.numpy(), want_ga, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(g_b.numpy(), want_gb, rtol=1e-3, atol=1e-4 * scale)


def test_the_three_settings_differ():
    z_a, z_b = standardize_case.inputs(16)
    values = {
        m: float(barlow_twins_terms(z_a, z_b, method="dense", standardize=m).loss) for m in ("full", "center", "none")
    }
    assert len({round(v, 3) for v in values.values()}) == 3, values
    with pytest.raises(ValueError, match="standardize must be one of full, center, none"):
        barlow_twins_terms(z_a, z_b, standardize="bn")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Both backends' 2-replica results, run side by side in their own processes."""
    out = tmp_path_factory.mktemp("standardize")
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "KERAS_BACKEND")}
    base.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    jobs = {"tensorflow": dict(base, KERAS_BACKEND="tensorflow")}
    if importlib.util.find_spec("jax") is not None:
        jobs["jax"] = dict(base, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", XLA_FLAGS=jax_case.xla_flags(2))

    def run(backend):
        path = out / f"{backend}.npz"
        cmd = [sys.executable, os.path.join(HERE, "standardize_case.py"), backend, "--out", str(path)]
        proc = subprocess.run(cmd, env=jobs[backend], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return backend, dict(np.load(path))

    with ThreadPoolExecutor(len(jobs)) as pool:
        return dict(pool.map(run, jobs))


@pytest.mark.slow  # two subprocesses (TensorFlow and JAX imports)
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
@pytest.mark.parametrize("case", standardize_case.CASES, ids=lambda c: standardize_case.key(*c))
def test_standardize_matches_numpy_over_two_replicas(replicas, backend, case):
    if backend not in replicas:
        pytest.skip('JAX not installed (pip install "jax[cpu]")')
    mode, method, d = case
    got = replicas[backend]
    want, want_ga, want_gb = reference(*standardize_case.inputs(d), mode)
    k = standardize_case.key(*case)
    np.testing.assert_allclose(got[k], [want, want], rtol=2e-5)  # the global loss on each replica
    scale = max(np.abs(want_ga).max(), np.abs(want_gb).max())
    np.testing.assert_allclose(got[k + "_ga"], want_ga, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(got[k + "_gb"], want_gb, rtol=1e-3, atol=1e-4 * scale)


# --- benchmarks/ablations.py ---------------------------------------------------------------------


def _ablations():
    spec = importlib.util.spec_from_file_location("ablations", os.path.join(ROOT, "benchmarks", "ablations.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sweep_plan_trains_shared_runs_once():
    ab = _ablations()
    args = ab.parse_args(["--train-source", "demo:train", "--test-source", "demo:test"])
    cfg, _ = ab.base_config(args)  # configs/cifar10_cpu.yaml: D = 1024
    runs, rows = ab.plan_runs(args, cfg)
    assert len(runs) == 14 and list(rows) == ["shuffle", "dim", "standardize"]
    for experiment in ("shuffle", "standardize"):
        assert rows[experiment][0][1] == ab.REFERENCE
    dim = {(label, x): name for label, name, x in rows["dim"]}
    assert dim[("λ paper", 1024)] == dim[("λ scaled", 1024)] == ab.REFERENCE
    assert runs["dim64-lambda-scaled"] == ("model.projector_dims=[64,64,64]", "model.lambd=0.0816")
    assert runs["dim64-lambda-paper"][1] == "model.lambd=0.0051"
    assert set(runs["shuffled-colour-off"]) == set(ab.SHUFFLED + ab.COLOUR_OFF)
    assert ab.main(["--data", "tfds:cifar10"]) == 2  # bad input: one line, exit 2


def test_the_recipe_arms_change_one_setting_each_and_the_scaled_lambda_keeps_the_papers_product():
    import yaml

    from bt_keras.config import config_from_dict

    ab = _ablations()
    args = ab.parse_args(["--train-source", "demo:train", "--test-source", "demo:test", "--experiments", "recipe"])
    cfg, common = ab.base_config(args)  # configs/cifar10_cpu.yaml: D = 1024
    runs, rows = ab.plan_runs(args, cfg)
    assert [name for _, name, _ in rows["recipe"]] == [name for _, name, _ in ab.RECIPE_ARMS]
    assert runs["lambda-scaled"] == ("model.lambd=0.0408",)  # 0.0051 × 8192 / 1024
    raw = yaml.safe_load(open(args.config))
    configs = {name: config_from_dict(raw, list(common) + list(extra)) for name, extra in runs.items()}
    for name, run_cfg in configs.items():  # every arm but the reference differs from the base config
        assert (run_cfg == configs[ab.REFERENCE]) == (name == ab.REFERENCE), name
    solo = configs["lars-solo"].optim
    assert (solo.name, solo.eta, solo.clip_trust, solo.weight_decay) == ("lars", 0.02, True, 1e-4)
    assert solo.lr_biases == solo.lr_weights  # rank-1 variables at the weights' lr, as solo-learn
    assert not configs["lars-solo-noclip"].optim.clip_trust
    assert configs["solo-learn-all"].data.augment.crop.scale == (0.08, 1.0)
    # --skip leaves runs out of the plan and the table; the reference stays; a wrong name is one line.
    args.skip = "lars-solo-noclip, solo-learn-all,reference"
    runs, rows = ab.plan_runs(args, cfg)
    assert set(configs) - set(runs) == {"lars-solo-noclip", "solo-learn-all"} and ab.REFERENCE in runs
    assert [name for _, name, _ in rows["recipe"]] == [
        n for n in configs if n not in ("lars-solo-noclip", "solo-learn-all")
    ]
    args.skip = "lars-solo-nclip"
    with pytest.raises(ab.UserError, match="--skip: no run named lars-solo-nclip"):
        ab.plan_runs(args, cfg)


@pytest.mark.slow  # one short training run in this process, then the resumed sweep
def test_ablations_script_end_to_end_and_resume(tmp_path, capsys):
    ab = _ablations()
    out = tmp_path / "ablations"
    argv = [
        "--config", os.path.join(ROOT, "configs", "demo.yaml"),
        "--train-source", "demo:train", "--test-source", "demo:test",
        "--cpu-seconds", "0.2", "--experiments", "dim", "--dims", "32", "--lr-schedule", "budget",
        "--knn-train", "300", "--knn-val", "100", "--out", str(out), "--in-process",
        "--set", "model.width=4", "--set", "model.projector_dims=[32,32,32]", "--set", "train.batch_size=64",
        "--set", "eval.k=5", "--set", "monitor.health=false", "--set", "monitor.correlation_image=false",
        "--set", "optim.warmup_epochs=0",
    ]  # fmt: skip
    assert ab.main(argv) == 0
    for name in ("table.md", "results.json", "commands.txt", "dim.png", "runs/reference/ablation.json"):
        assert (out / name).is_file(), name
    result = json.loads((out / "results.json").read_text())
    run = result["runs"]["reference"]
    assert 0.0 < run["knn_top1"] <= 1.0 and run["steps"] >= 1 and run["step_seconds"] >= 0.2
    # The cosine follows the budget: past the first step the rate has left its peak (demo: lr 0.2 × 64/256).
    assert run["lr_schedule"] == "budget" and 0 < run["last_learning_rate"] < 0.2 * 64 / 256
    assert set(result["baselines"]) == {"key", "normal"}  # no shuffle experiment: one evaluation space
    assert {"raw_pixels", "random_init"} <= set(result["baselines"]["normal"])
    assert (out / "dim.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "table.md").read_text()
    assert f"| λ paper | 32 | {run['knn_top1']:.1%}" in table and "runs/reference" in table
    assert "--run-one" in (out / "commands.txt").read_text()
    stamp = (out / "runs" / "reference" / "ablation.json").stat().st_mtime_ns
    assert ab.main(argv) == 0  # resumed: the finished run is skipped, not retrained
    assert "finished earlier" in capsys.readouterr().out
    assert (out / "runs" / "reference" / "ablation.json").stat().st_mtime_ns == stamp


def test_time_budget_counts_process_cpu_time():
    from bt_keras.callbacks import TimeBudget

    busy = TimeBudget(0.05, clock="process")
    busy._t0, busy.steps = busy._now(), 1
    while busy._now() - busy._t0 < 0.06:  # burn CPU: process time advances
        sum(range(1000))
    busy.set_model(type("Model", (), {"stop_training": False})())
    busy.on_train_batch_end(1)
    assert busy.model.stop_training and busy.elapsed >= 0.05
    with pytest.raises(ValueError, match="clock must be one of wall, process"):
        TimeBudget(1, clock="cpu")
