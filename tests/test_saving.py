"""The run's ``encoder.keras`` is portable: float32, plain Keras layers, loadable without bt_keras.

A ResNet with fused BatchNorm layers is built under ``mixed_bfloat16`` (what a
TPU or GPU run trains with), its BN statistics made non-trivial, and saved the
way ``bt-train`` saves it. It must load with ``keras.saving.load_model`` in a
process that never imports bt_keras (TensorFlow and JAX backends), return
float32, and match the float32 export of the same weights; ``bt-eval`` and
``bt-export`` must accept it, and still accept old files with fused BN layers.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import bt_keras
from bt_keras.cli import eval as eval_cli
from bt_keras.cli import export as export_cli
from bt_keras.cli import run_command
from bt_keras.contract import PreprocessingContract
from bt_keras.export.checks import float32_encoder
from bt_keras.saving import load_encoder, non_keras_layers, portable_encoder, save_portable_encoder
from bt_keras.training import save_encoder

SIZE = 32
CONTRACT = PreprocessingContract(image_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_fraction=1.0)

# Runs in a fresh interpreter outside the repository: no bt_keras on the path, nothing registered.
LOADER = """
import json, sys
import numpy as np, keras
model = keras.saving.load_model(sys.argv[1])
y = keras.ops.convert_to_numpy(model(np.load(sys.argv[2]), training=False))
np.save(sys.argv[3], y)
layers = [type(layer).__name__ for layer in model._flatten_layers(include_self=False, recursive=True)]
print(json.dumps({"dtype": str(y.dtype), "layers": sorted(set(layers)), "backend": keras.backend.backend(),
                  "bt_keras_imported": any(m.startswith("bt_keras") for m in sys.modules)}))
"""


def _mixed_encoder():
    """A fused-BN ResNet under mixed_bfloat16 with perturbed BN parameters and statistics."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(3)
        encoder = bt_keras.resnet(18, stem="cifar", width=4, input_shape=(SIZE, SIZE, 3))
    finally:
        keras.config.set_dtype_policy(previous)
    rng = np.random.default_rng(0)
    for layer in encoder._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = (
                v.numpy() for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)
            )
            layer.gamma.assign(1 + 0.3 * rng.standard_normal(gamma.shape).astype("float32"))
            layer.beta.assign(0.2 * rng.standard_normal(beta.shape).astype("float32"))
            layer.moving_mean.assign(0.2 * rng.standard_normal(mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, var.shape).astype("float32"))
    return encoder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run directory whose encoder.keras bt-train's save_encoder wrote from the mixed-precision encoder."""
    run = tmp_path_factory.mktemp("run")
    encoder = _mixed_encoder()
    save_encoder(encoder, str(run), CONTRACT)
    x = np.random.default_rng(1).standard_normal((6, SIZE, SIZE, 3)).astype("float32")
    np.save(run / "x.npy", x)
    return run, encoder, x


def test_the_mixed_encoder_itself_is_bfloat16_and_fused(saved):
    """The situation being fixed: saved as trained, the encoder would return bfloat16 and need bt_keras."""
    _, encoder, x = saved
    own = keras.ops.convert_to_numpy(encoder(x, training=False))
    reference = keras.ops.convert_to_numpy(float32_encoder(encoder)(x, training=False))
    assert keras.backend.standardize_dtype(encoder(x, training=False).dtype) == "bfloat16"
    assert np.abs(own.astype("float32") - reference).max() / np.abs(reference).max() > 1e-3
    assert non_keras_layers(encoder) == ["FusedBatchNormalization"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_saved_encoder_loads_without_bt_keras_in_float32(saved, tmp_path, backend):
    run, encoder, x = saved
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(run / "encoder.keras"), str(run / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the repository: bt_keras is not importable from the working directory
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["backend"] == backend and not info["bt_keras_imported"]
    assert info["dtype"] == "float32"
    assert "BatchNormalization" in info["layers"] and "FusedBatchNormalization" not in info["layers"]
    got = np.load(tmp_path / "y.npy")
    reference = keras.ops.convert_to_numpy(float32_encoder(encoder)(x, training=False))
    assert got.shape == reference.shape == (6, 32)
    assert np.abs(got - reference).max() <= 1e-5 * max(1.0, np.abs(reference).max())


def test_portable_copy_has_the_same_weights_and_leaves_the_source_alone(saved):
    _, encoder, _ = saved
    copy = portable_encoder(encoder)
    assert copy is not encoder and copy.compute_dtype == "float32" and non_keras_layers(copy) == []
    assert all(np.array_equal(a, b) for a, b in zip(encoder.get_weights(), copy.get_weights()))
    assert [w.shape for w in copy.weights] == [w.shape for w in encoder.weights]
    assert encoder.layers[1].compute_dtype == "bfloat16" and non_keras_layers(encoder)
    bns = [layer for layer in copy.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.synchronized for layer in bns)  # other backends refuse synchronized BN
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten()])
    assert portable_encoder(plain) is plain  # nothing to change


def test_an_encoder_that_cannot_be_rebuilt_is_still_saved(tmp_path, caplog):
    """The end of a long run must not lose its encoder to the portability step."""

    class Custom(keras.Model):  # subclassed, no get_config: cannot be rebuilt from a config
        def __init__(self):
            super().__init__(dtype="mixed_bfloat16")
            self.dense = keras.layers.Dense(4)

        def call(self, x):
            return self.dense(keras.ops.mean(x, axis=(1, 2)))

    model = Custom()
    model(np.zeros((1, 8, 8, 3), "float32"))
    with caplog.at_level("WARNING", logger="bt_keras"):
        path = save_portable_encoder(model, tmp_path / "enc.keras")
    assert Path(path).is_file() and "not as a portable float32 copy" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["enc.keras"]  # no temporary left


def _old_style(directory: Path, encoder) -> Path:
    """What bt-train wrote before: encoder.save() as trained (fused BN, mixed precision)."""
    directory.mkdir()
    encoder.save(directory / "encoder.keras")
    (directory / "preprocessing.json").write_text(CONTRACT.to_json())
    return directory / "encoder.keras"


@pytest.mark.slow
@pytest.mark.parametrize("style", ["portable", "old"])
def test_bt_eval_and_bt_export_accept_portable_and_old_files(saved, tmp_path, capsys, style):
    run, encoder, x = saved
    path = run / "encoder.keras" if style == "portable" else _old_style(tmp_path / "old", encoder)
    assert load_encoder(path).output_shape == (None, 32)
    argv = ["--encoder", str(path), "--train-data", "demo:train", "--test-data", "demo:test", "--protocol", "knn"]
    assert run_command("bt-eval", eval_cli._main, [*argv, "--k", "20"]) == 0
    out = capsys.readouterr().out
    report = json.loads((path.parent / "eval_report.json").read_text())  # beside the encoder file
    assert report["num_train"] == 1438 and report["num_test"] == 359 and report["feature_dim"] == 32
    assert "1438 train / 359 test images, 32-d features" in out and 0.0 <= report["knn"]["top1"] <= 1.0
    out_dir = tmp_path / "export"
    assert export_cli.main(["--encoder", str(path), "--out", str(out_dir), "--formats", "saved_model"]) == 0
    export_report = json.loads((out_dir / "export_report.json").read_text())
    assert export_report["parity"]["passed"]
    assert export_report["source"]["rebuilt_in_float32"] is (style == "old")
