"""kNN and linear probes on cases with known answers, and bt-eval end to end.

The end-to-end tests run on the demo digits that ship with the package, and again on real CIFAR-10
JPEGs where the archive is present (``tests/conftest.py``; skipped otherwise).
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from bt_keras import evaluation as ev
from bt_keras.cli import eval as eval_cli
from bt_keras.cli import run_command
from bt_keras.preprocess import PreprocessingContract

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clusters(n_per_class, num_classes=10, dim=32, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim))
    y = np.repeat(np.arange(num_classes), n_per_class)
    return (centers[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y


def _knn_reference(train_x, train_y, test_x, k, temperature, num_classes):
    """The weighted vote written out with NumPy, one test example at a time."""
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    scores = np.zeros((len(test_x), num_classes))
    for i, q in enumerate(test_x):
        sim = a @ (q / np.linalg.norm(q))
        top = np.argsort(-sim, kind="stable")[:k]
        for j in top:
            scores[i, train_y[j]] += np.exp(sim[j] / temperature)
    return scores


def test_knn_well_separated_clusters_is_perfect():
    x_tr, y_tr = _clusters(100)
    x_te, y_te = _clusters(30, seed=0)
    acc = ev.knn_accuracy(x_tr, y_tr, x_te, y_te, k=200, temperature=0.1)
    assert acc == {"top1": 1.0, "top5": 1.0}


def test_knn_random_labels_is_chance():
    rng = np.random.default_rng(1)
    x_tr, x_te = rng.normal(size=(3000, 16)), rng.normal(size=(3000, 16))
    y_tr, y_te = rng.integers(0, 10, 3000), rng.integers(0, 10, 3000)
    acc = ev.knn_accuracy(x_tr, y_tr, x_te, y_te)
    # Binomial std at n=3000: 0.0055 (top-1), 0.009 (top-5); tolerances are > 4 std.
    assert abs(acc["top1"] - 0.1) < 0.025, acc
    assert abs(acc["top5"] - 0.5) < 0.04, acc


def test_knn_batched_equals_unbatched_and_reference():
    x_tr, y_tr = _clusters(40, num_classes=5, dim=8, spread=2.0, seed=3)
    x_te, _ = _clusters(13, num_classes=5, dim=8, spread=2.0, seed=4)
    whole = ev.knn_predict(x_tr, y_tr, x_te, 5, k=20, temperature=0.1, batch_size=10_000)
    for batch in (1, 7, 64):
        np.testing.assert_allclose(
            ev.knn_predict(x_tr, y_tr, x_te, 5, k=20, temperature=0.1, batch_size=batch), whole, rtol=1e-5
        )
    np.testing.assert_allclose(whole, _knn_reference(x_tr, y_tr, x_te, 20, 0.1, 5), rtol=1e-4)


def test_fast_linear_probe_separates_linearly_separable_features():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 4))
    x = rng.normal(size=(4000, 20))
    scores = np.sort(x @ w, axis=1)
    x = x[scores[:, -1] - scores[:, -2] > 0.5][:2000]  # separable with a margin
    y = np.argmax(x @ w, axis=1)
    out = ev.linear_probe(x[:1500], y[:1500], x[1500:], y[1500:])
    assert out["top1"] > 0.99 and out["converged"], out
    # A random labelling is not learnable: the probe must not "find" it on the test split.
    out = ev.linear_probe(x[:1500], rng.integers(0, 4, 1500), x[1500:], rng.integers(0, 4, 500))
    assert out["top1"] < 0.4


def _colour_arrays(n, seed):
    """Images whose class is their dominant colour, plus texture noise: linearly separable features."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    base = np.full((n, 16, 16, 3), 60.0)
    base[np.arange(n), :, :, y] = 200.0
    x = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return x, y.astype(np.int32)


@pytest.mark.slow
def test_paper_probe_learns_and_leaves_encoder_unchanged():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="images")
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    encoder = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
    before = [v.numpy().copy() for v in encoder.weights]  # includes BN moving mean/variance
    contract = PreprocessingContract(image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, crop_fraction=1.0)
    out = ev.linear_probe_sgd(
        encoder, _colour_arrays(600, 0), _colour_arrays(150, 1), contract, epochs=4, batch_size=64
    )
    after = [v.numpy() for v in encoder.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), "the probe changed the encoder"
    assert out["top1"] > 0.95, out
    assert out["epochs"] == 4 and "final epoch" in out["reported"]
    assert (out["num_train"], out["num_test"], out["feature_dim"]) == (600, 150, 8)
    assert len(out["train_loss_per_epoch"]) == 4 and out["train_loss_per_epoch"][-1] < out["train_loss_per_epoch"][0]


def test_paper_probe_augmentation_is_crop_and_flip_only():
    contract = PreprocessingContract(image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, crop_fraction=1.0)
    cfg = ev.crop_flip_config(contract)
    assert cfg.crop.enabled and cfg.flip.enabled and cfg.crop.scale == (0.08, 1.0)
    assert not (cfg.color_jitter.enabled or cfg.grayscale.enabled or cfg.blur.enabled or cfg.solarize.enabled)
    x, _ = _colour_arrays(64, 2)
    ds = ev.augmented_labelled_dataset((x, np.zeros(64, np.int32)), contract, batch_size=64)
    a = next(iter(ds))[0].numpy()
    b = next(iter(ev.augmented_labelled_dataset((x, np.zeros(64, np.int32)), contract, batch_size=64, epoch=1)))[0]
    assert a.shape == (64, 16, 16, 3)
    assert not np.allclose(np.sort(a.ravel()), np.sort(b.numpy().ravel()))  # new crops each epoch


def test_probe_augmentation_flips_half_of_the_images():
    """Every flip lands once: crop and flip composed must not mirror an image twice."""
    contract = PreprocessingContract(image_size=16, mean=(0.0,) * 3, std=(1 / 255,) * 3, crop_fraction=1.0)
    rng = np.random.default_rng(0)
    n = 2400
    x = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    images = ev.LabelledImages((x, np.arange(n, dtype=np.int32)), contract)
    cfg = ev.crop_flip_config(contract)
    # The whole image, unresized: each output is its source or the mirror (AugmentConfig is frozen now).
    cfg = dataclasses.replace(cfg, crop=dataclasses.replace(cfg.crop, enabled=False))
    flipped = []
    for out, label in images.epoch(cfg, batch_size=400):
        out = np.round(out.numpy()).astype(np.uint8)
        src = x[label.numpy()]
        same = (out == src).all(axis=(1, 2, 3))
        mirror = (out == src[:, :, ::-1]).all(axis=(1, 2, 3))
        assert (same ^ mirror).all()
        flipped.append(mirror)
    rate = np.concatenate(flipped).mean()
    assert abs(rate - 0.5) <= 3 * np.sqrt(0.25 / n), rate


def _subset(src, dst, per_class):
    for cls in sorted(os.listdir(src)):
        os.makedirs(dst / cls)
        for name in sorted(os.listdir(src / cls))[:per_class]:
            shutil.copy(src / cls / name, dst / cls / name)


@pytest.fixture(scope="module")
def cifar_subset(cifar10_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_subset")
    _subset(cifar10_dir / "train", root / "train", 20)  # 200 images
    _subset(cifar10_dir / "test", root / "test", 10)  # 100 images
    return root


def _tiny_run(run_dir):
    from bt_keras.encoders import small_cnn
    from bt_keras.training import save_encoder

    keras.utils.set_random_seed(0)
    encoder = small_cnn(widths=(8, 16), input_shape=(32, 32, 3), sync_batchnorm=False)
    contract = PreprocessingContract(image_size=32, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), crop_fraction=1.0)
    save_encoder(encoder, str(run_dir), contract)
    return encoder, contract


@pytest.fixture(params=["demo", pytest.param("cifar10", marks=pytest.mark.slow)])
def labelled_sources(request):
    """``(train source, test source)``: the bundled demo digits, and a CIFAR-10 JPEG subset if available
    (the real photos: with the slow tests)."""
    if request.param == "demo":
        return "demo:train", "demo:test"
    root = request.getfixturevalue("cifar_subset")
    return f"folder:{root / 'train'}", f"folder:{root / 'test'}"


@pytest.mark.slow
def test_bt_eval_end_to_end(labelled_sources, tmp_path):
    from bt_keras.data import count_examples

    train, test = labelled_sources
    run = tmp_path / "run"
    run.mkdir()
    _tiny_run(run)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bt_keras.cli.eval",
            "--run",
            str(run),
            "--train-data",
            train,
            "--test-data",
            test,
            "--protocol",
            "both",
            "--k",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "eval_report.json").read_text())
    assert report["num_train"] == count_examples(train) and report["num_test"] == count_examples(test)
    assert report["feature_dim"] == 16
    for key in ("knn", "linear"):
        assert 0.0 <= report[key]["top1"] <= report[key]["top5"] <= 1.0
    assert report["knn"]["k"] == 20 and report["linear"]["mode"] == "fast"
    assert report["preprocessing"]["image_size"] == 32
    assert "kNN (k=20, T=0.1)" in proc.stdout and "linear, logistic regression" in proc.stdout


def test_saved_model_and_onnx_give_the_same_knn_as_the_keras_encoder(labelled_sources, tmp_path):
    from bt_keras.export import export_encoder

    encoder, contract = _tiny_run(tmp_path)
    export_encoder(
        encoder,
        tmp_path / "export",
        image_size=32,
        formats=("saved_model", "onnx"),
        mean=contract.mean,
        std=contract.std,
        crop_fraction=1.0,
    )
    train, test = labelled_sources
    from_keras = ev.evaluate(ev.load_frozen_encoder(run=str(tmp_path)), train, test, k=20)
    loaded = ev.load_frozen_encoder(saved_model=str(tmp_path / "export"))
    assert loaded.contract == contract
    from_saved = ev.evaluate(loaded, train, test, k=20)
    assert from_saved["knn"]["top1"] == from_keras["knn"]["top1"]
    assert from_saved["knn"]["top5"] == from_keras["knn"]["top5"]
    assert from_keras["num_test"] > 0
    # bt-eval --onnx: ONNX Runtime, the contract from the model's metadata, the report beside the export.
    onnx = tmp_path / "export" / "onnx" / "encoder.onnx"
    argv = ["--onnx", str(onnx), "--train-data", train, "--test-data", test, "--k", "20", "--protocol", "knn"]
    assert run_command("bt-eval", eval_cli._main, argv) == 0
    from_onnx = json.loads((tmp_path / "export" / "eval_report.onnx.json").read_text())
    assert from_onnx["preprocessing"]["image_size"] == 32
    assert abs(from_onnx["knn"]["top1"] - from_keras["knn"]["top1"]) <= 1 / from_keras["num_test"]


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert (
        run_command(
            "bt-eval",
            eval_cli._main,
            ["--run", str(tmp_path / "missing"), "--train-data", "demo:train", "--test-data", "demo:test"],
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
    enc = tmp_path / "enc.keras"
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten()]).save(enc)
    assert (
        run_command(
            "bt-eval", eval_cli._main, ["--encoder", str(enc), "--train-data", "demo:train", "--test-data", "demo:test"]
        )
        == 2
    )
    assert "no preprocessing contract found" in capsys.readouterr().err
    assert (
        run_command(
            "bt-eval",
            eval_cli._main,
            ["--saved-model", str(tmp_path), "--train-data", "demo:train", "--test-data", "demo:test"],
        )
        == 2
    )
    assert "no saved_model.pb" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        eval_cli._main(["--train-data", "demo:train"])
    assert e.value.code == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--crop-fraction", "0.5"], "--crop-fraction 0.5 conflicts with"),
        (["--image-size", "64"], "wrong image size: --image-size 64 conflicts with"),
    ],
)
def test_flags_that_contradict_the_recorded_contract_are_rejected(tmp_path, capsys, flags, message):
    """bt-eval, like bt-export, never silently overrides a run's preprocessing.json."""
    _tiny_run(tmp_path)
    argv = ["--run", str(tmp_path), "--train-data", "demo:train", "--test-data", "demo:test", *flags]
    assert run_command("bt-eval", eval_cli._main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bt-eval: error: ") and message in err, err
    assert "preprocessing.json" in err and not (tmp_path / "eval_report.json").exists()


def test_report_goes_beside_the_model_never_into_a_saved_model(tmp_path):
    """bt-eval's default report path: the run, the encoder's directory, the bt-export output directory."""
    exported = tmp_path / "exp"
    version = exported / "saved_model" / "enc" / "3"
    serving = tmp_path / "serving" / "enc"
    for d in (version, serving / "1"):
        d.mkdir(parents=True)
        (d / "saved_model.pb").write_bytes(b"")

    def path(**kw):
        return eval_cli.report_path(SimpleNamespace(**{"report": None, "run": None, "encoder": None, **kw}))

    assert path(saved_model=str(exported)) == f"{exported}/eval_report.json"
    assert path(saved_model=f"{version}/") == f"{exported}/eval_report.json"
    assert path(saved_model=str(serving / "1")) == f"{serving}/eval_report.json"
    assert path(saved_model=str(serving)) == f"{serving}/eval_report.json"
    assert path(encoder=str(tmp_path / "a" / "enc.keras")) == f"{tmp_path}/a/eval_report.json"
    assert path(encoder="enc.keras") == "./eval_report.json"
    assert path(run=f"{tmp_path}/run/") == f"{tmp_path}/run/eval_report.json"
    assert path(run="r", report="x.json") == "x.json"
    # An export's ONNX models report beside its SavedModel's report, each under its own name.
    assert path(onnx=f"{exported}/onnx/enc.onnx") == f"{exported}/eval_report.onnx.json"
    assert path(onnx=f"{exported}/onnx/enc.int8.onnx") == f"{exported}/eval_report.int8.onnx.json"


def test_bt_eval_saved_model_writes_beside_the_export_not_the_cwd(tmp_path, monkeypatch, capsys):
    from bt_keras.export import export_encoder

    encoder, contract = _tiny_run(tmp_path / "run")
    export_encoder(
        encoder,
        tmp_path / "export",
        image_size=32,
        formats=("saved_model",),
        mean=contract.mean,
        std=contract.std,
        crop_fraction=1.0,
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = ["--saved-model", str(tmp_path / "export"), "--train-data", "demo:train", "--test-data", "demo:test"]
    assert run_command("bt-eval", eval_cli._main, [*argv, "--protocol", "knn", "--k", "20"]) == 0
    assert list(cwd.iterdir()) == []
    report = json.loads((tmp_path / "export" / "eval_report.json").read_text())
    assert report["encoder"].startswith("saved_model:") and report["num_test"] == 359
    assert f"report: {tmp_path / 'export'}/eval_report.json" in capsys.readouterr().out


@pytest.mark.slow
def test_paper_probe_prints_the_real_counts(tmp_path, capsys):
    """The SGD probe extracts no features up front; the counts still come from the data."""
    _tiny_run(tmp_path)
    argv = ["--run", str(tmp_path), "--train-data", "demo:train", "--test-data", "demo:test"]
    argv += ["--protocol", "linear", "--linear", "paper", "--epochs", "1"]
    assert run_command("bt-eval", eval_cli._main, argv) == 0
    out = capsys.readouterr().out
    assert "1438 train / 359 test images, 16-d features" in out and "?" not in out
    report = json.loads((tmp_path / "eval_report.json").read_text())
    assert (report["num_train"], report["num_test"], report["feature_dim"]) == (1438, 359, 16)
