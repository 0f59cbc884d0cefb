"""BarlowTwins: fit, metrics, saving/loading, NaN guard, mixed precision."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import bt_keras
from bt_keras.checkpointing import TrainingGuard, restore_checkpoint, save_checkpoint


def _model(dim=32, **kwargs):
    enc = bt_keras.small_cnn(widths=(4, 8), input_shape=(8, 8, 3))
    model = bt_keras.BarlowTwins(enc, projector_dims=(16, 16, dim), **kwargs)
    model.build((None, 8, 8, 3))
    return model


def _pairs(n=32, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 3), np.float32)
    y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)


def test_projector_structure():
    proj = bt_keras.build_projector((64, 32, 16))
    proj.build((None, 10))
    kinds = [type(layer).__name__ for layer in proj.layers]
    bn = "FusedBatchNormalization"  # a keras.layers.BatchNormalization
    assert kinds == ["Dense", bn, "ReLU", "Dense", bn, "ReLU", "Dense"]
    assert all(not layer.use_bias for layer in proj.layers if isinstance(layer, keras.layers.Dense))
    assert all(layer.synchronized for layer in proj.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_fit_logs_all_metrics_and_loss_decreases():
    keras.utils.set_random_seed(0)
    model = _model()
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    history = model.fit(_pairs(), epochs=8, verbose=0).history
    assert set(history) >= {"loss", "on_diag", "off_diag", "learning_rate", "embedding_std"}
    assert history["loss"][-1] < history["loss"][0]
    np.testing.assert_allclose(
        np.array(history["loss"]), np.array(history["on_diag"]) + 0.0051 * np.array(history["off_diag"]), rtol=1e-4
    )
    assert all(0 < s < 2 for s in history["embedding_std"])
    assert history["learning_rate"][-1] == pytest.approx(3e-3)


def test_fit_on_tuple_of_arrays_and_evaluate():
    model = _model()
    model.compile(optimizer=bt_keras.LARS(0.1))
    x = np.random.default_rng(1).random((16, 8, 8, 3), np.float32)
    model.fit((x, x[::-1]), batch_size=8, epochs=1, verbose=0)
    logs = model.evaluate(_pairs(), verbose=0, return_dict=True)
    assert math.isfinite(logs["loss"]) and logs["loss"] > 0


def test_keras_file_round_trip(tmp_path):
    model = _model(lambd=0.01, loss_method="gram")
    model.compile(optimizer=bt_keras.LARS(0.1))
    model.fit(_pairs(), epochs=1, verbose=0)
    x = np.random.default_rng(2).random((4, 8, 8, 3), np.float32)
    path = tmp_path / "bt.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, bt_keras.BarlowTwins)
    assert (loaded.lambd, loaded.loss_method, loaded.projector_dims) == (0.01, "gram", (16, 16, 32))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    model.encoder.save(tmp_path / "enc.keras")
    enc = keras.saving.load_model(tmp_path / "enc.keras", safe_mode=True)
    np.testing.assert_allclose(enc.predict(x, verbose=0), model.encoder.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_checkpoint_restores_model_and_optimizer_state(tmp_path):
    model = _model()
    model.compile(optimizer=bt_keras.LARS(bt_keras.WarmupCosine(0.5, 2, 20)))
    model.fit(_pairs(), epochs=1, verbose=0)
    path = str(tmp_path / "ckpt" / "latest.weights.h5")
    save_checkpoint(model, path)
    other = _model()
    other.compile(optimizer=bt_keras.LARS(bt_keras.WarmupCosine(0.5, 2, 20)))
    assert restore_checkpoint(other, path) == 4
    for a, b in zip(model.weights + model.optimizer.variables, other.weights + other.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(other.optimizer.learning_rate) == pytest.approx(float(model.optimizer.learning_rate))
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["latest.weights.h5"]  # no temp files left


def test_nan_loss_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.random((48, 8, 8, 3), np.float32)
    x[40] = np.nan  # In the 6th batch of 8: step 6, in the second epoch of 4 steps.
    ds = tf.data.Dataset.from_tensor_slices((x, x)).batch(8)
    model = _model()
    model.compile(optimizer=bt_keras.LARS(0.1))
    path = str(tmp_path / "latest.weights.h5")
    guard = TrainingGuard(path)
    model.fit(ds.take(4), epochs=1, verbose=0, callbacks=[guard])  # one good epoch: checkpoint at step 4
    model.fit(ds.skip(4), epochs=1, verbose=0, callbacks=[guard])
    assert guard.nan_step == 6
    fresh = _model()
    fresh.compile(optimizer=bt_keras.LARS(0.1))
    assert restore_checkpoint(fresh, path) == 4
    assert all(np.isfinite(np.asarray(w)).all() for w in fresh.weights)


def _after_good_epochs(tmp_path, epochs=1):
    """An SGD model that trained good epochs (of 4 steps) under a TrainingGuard; the bytes of the last
    epoch's checkpoint."""
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    path = tmp_path / "latest.weights.h5"
    guard = TrainingGuard(str(path))
    model.fit(_pairs(), epochs=epochs, verbose=0, callbacks=[guard])
    return model, path, guard, path.read_bytes()


def test_weights_that_overflowed_after_a_finite_loss_are_not_checkpointed(tmp_path):
    """A learning rate far too high: the step's loss and gradients are finite, its update is not.

    The epoch ends right after that step, so without the weight check the epoch's checkpoint
    would hold the overflowed weights as the "last good" one.
    """
    model, path, guard, good = _after_good_epochs(tmp_path)
    model.optimizer.learning_rate.assign(3e38)  # float32's largest: any gradient above 1.2 overflows
    history = model.fit(_pairs().take(1), epochs=1, verbose=0, callbacks=[guard]).history
    assert math.isfinite(history["loss"][0])  # the step itself looked fine
    assert not all(np.isfinite(np.asarray(w)).all() for w in model.weights)
    assert (guard.nan_step, guard.nan_in) == (5, "weights") and model.stop_training
    assert path.read_bytes() == good  # the last good checkpoint, untouched


def test_huge_but_finite_weights_are_not_checkpointed_when_the_next_loss_is_not_finite(tmp_path):
    """A learning rate far too high whose update leaves the weights finite but enormous: the epoch ends
    right after it, and only the next step's loss shows the divergence. That epoch's checkpoint
    is held until a finite loss confirms it, so the last good checkpoint stays on disk."""
    model, path, guard, good = _after_good_epochs(tmp_path)
    model.optimizer.learning_rate.assign(1e20)
    seen = []  # the weights when the first epoch (of one step) ended: finite, and their largest magnitude
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(
            (
                all(np.isfinite(np.asarray(w)).all() for w in model.weights),
                max(float(np.abs(np.asarray(w)).max()) for w in model.weights),
            )
        )
    )
    history = model.fit(_pairs().take(1), epochs=2, verbose=0, callbacks=[record, guard]).history
    assert math.isfinite(history["loss"][0])  # step 5 looked fine...
    assert seen[0][0] and seen[0][1] > 1e10  # ...and left finite, enormous weights when its epoch ended
    assert (guard.nan_step, guard.nan_in) == (6, "loss")  # step 6's loss shows it
    assert path.read_bytes() == good  # the last good checkpoint, untouched
    assert os.listdir(tmp_path) == ["latest.weights.h5"]


def test_the_last_epochs_held_checkpoint_is_written_when_training_ends(tmp_path):
    _, path, _, _ = _after_good_epochs(tmp_path, epochs=2)
    fresh = _model()
    fresh.compile(optimizer=keras.optimizers.SGD(0.01))
    assert restore_checkpoint(fresh, str(path)) == 8  # the last epoch's, written at the end


def test_mixed_precision_keeps_the_loss_in_float32():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = _model()
        x = np.random.default_rng(4).random((8, 8, 8, 3), np.float32)
        z_a, terms = model._terms((x, x[::-1]), training=True)
        assert z_a.dtype == tf.bfloat16
        assert terms.loss.dtype == terms.on_diag.dtype == terms.off_diag.dtype == tf.float32
        model.compile(optimizer=bt_keras.LARS(0.1))
        history = model.fit(_pairs(), epochs=1, verbose=0).history
        assert math.isfinite(history["loss"][0])
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


class _OwnEncoder(keras.Model):
    """A user's subclassed encoder with no ``compute_output_shape``: BarlowTwins traces it."""

    def __init__(self, pool=True):
        super().__init__()
        self.conv = keras.layers.Conv2D(8, 3)
        self.pool = pool

    def call(self, x):
        x = self.conv(x)
        return keras.ops.mean(x, axis=(1, 2)) if self.pool else x


def test_an_encoder_must_output_batch_by_dim_said_in_one_line():
    feature_map = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3)])
    with pytest.raises(ValueError, match=r"outputs \(None, 14, 14, 8\): end it with .*GlobalAveragePooling2D"):
        bt_keras.BarlowTwins(feature_map, projector_dims=(16,))
    model = bt_keras.BarlowTwins(_OwnEncoder(pool=False), projector_dims=(16,))
    with pytest.raises(ValueError, match=r"needs an encoder whose output is \[batch, dim\]"):
        model.build((None, 16, 16, 3))


def test_a_subclassed_encoder_without_compute_output_shape_trains():
    x = np.random.default_rng(0).random((8, 16, 16, 3)).astype("float32")
    model = bt_keras.BarlowTwins(_OwnEncoder(), projector_dims=(16,))
    model.compile(optimizer="adam")
    pairs = tf.data.Dataset.from_tensor_slices((x, x[::-1])).batch(4, drop_remainder=True)
    history = model.fit(pairs, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and model.encoder.conv.kernel.shape == (3, 3, 3, 8)
