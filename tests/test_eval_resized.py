"""``benchmarks/eval_resized.py``: an encoder's weights in a copy that takes another input size, and the
kNN it reports against ``bt-eval``'s on the same encoder."""

import json
import os
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import eval_resized  # noqa: E402

from bt_keras.encoders import small_cnn  # noqa: E402
from bt_keras.evaluation.protocol import evaluate  # noqa: E402
from bt_keras.frozen import FrozenEncoder  # noqa: E402
from bt_keras.preprocess import PreprocessingContract  # noqa: E402
from bt_keras.training import save_encoder  # noqa: E402


def _encoder():
    keras.utils.set_random_seed(0)
    return small_cnn(widths=(8, 16), input_shape=(32, 32, 3), sync_batchnorm=False)


def test_the_copy_takes_the_new_size_and_keeps_every_weight():
    encoder = _encoder()
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    same = eval_resized.resized_encoder(encoder, 32)
    np.testing.assert_array_equal(same.predict(x, verbose=0), encoder.predict(x, verbose=0))
    smaller = eval_resized.resized_encoder(encoder, 24)
    assert smaller.input_shape == (None, 24, 24, 3)
    for a, b in zip(smaller.get_weights(), encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert smaller.predict(x[:, :24, :24], verbose=0).shape == (4, encoder.output_shape[-1])


def test_an_encoder_whose_weights_depend_on_the_size_is_refused():
    flat = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
    with pytest.raises(SystemExit, match="depend on its input size") as refused:
        eval_resized.resized_encoder(flat, 16)
    assert "\n" not in str(refused.value)


@pytest.mark.slow  # kNN end to end on the demo digits
def test_at_the_trained_size_it_reports_what_bt_eval_reports_and_at_another_size_a_real_knn(tmp_path, capsys):
    encoder = _encoder()
    contract = PreprocessingContract(image_size=32, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), crop_fraction=1.0)
    save_encoder(encoder, str(tmp_path), contract)
    sources = ["--train-data", "demo:train", "--test-data", "demo:test"]
    reference = evaluate(FrozenEncoder.from_keras(encoder, contract), "demo:train", "demo:test", protocol="knn")
    results = {}
    for size in (32, 24):
        eval_resized.main([str(tmp_path), "--image-size", str(size), *sources])
        results[size] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results[32]["knn"]["top1"] == pytest.approx(reference["knn"]["top1"])
    assert (results[24]["trained_at"], results[24]["evaluated_at"]) == (32, 24)
    assert 0.1 < results[24]["knn"]["top1"] <= 1.0  # ten classes: above chance even at random init


@pytest.mark.slow  # kNN end to end on the demo digits
def test_without_source_flags_the_runs_own_sources_are_used_and_none_is_one_line(tmp_path, capsys):
    save_encoder(_encoder(), str(tmp_path), PreprocessingContract(image_size=32, crop_fraction=1.0))
    # A benchmarks/ablations.py run: eval sources unset, the kNN monitor's set.
    (tmp_path / "config.yaml").write_text("monitor:\n  knn_train_source: demo:train\n  knn_val_source: demo:test\n")
    eval_resized.main([str(tmp_path), "--image-size", "24"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["knn"]["top1"] > 0.1
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 1\n")
    with pytest.raises(SystemExit, match="names no labelled sources; give --train-data and --test-data"):
        eval_resized.main([str(tmp_path), "--image-size", "24"])
