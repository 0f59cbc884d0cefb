"""Training monitors: the TensorBoard scalars and image are really written (read back
from the event files), the report picture exists, and the indicators mean what they say."""

import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import bt_keras
from bt_keras import callbacks as cbs
from bt_keras.losses import barlow_twins_terms, cross_correlation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_events(log_dir):
    """{tag: [(step, value)]} from every event file under ``log_dir``; images as decoded arrays."""
    out = {}
    for path in glob.glob(os.path.join(str(log_dir), "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                value = tf.make_ndarray(v.tensor)
                plugin = v.metadata.plugin_data.plugin_name
                if plugin == "images":
                    value = tf.io.decode_png(value[2]).numpy()
                elif plugin == "histograms":
                    value = value.shape
                else:
                    value = float(value)
                out.setdefault(v.tag, []).append((event.step, value))
    return out


def _tiny_model():
    keras.utils.set_random_seed(0)
    encoder = bt_keras.small_cnn(widths=(8, 16), input_shape=(16, 16, 3), sync_batchnorm=False)
    model = bt_keras.BarlowTwins(encoder, projector_dims=(64, 64), sync_batchnorm=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_callbacks_write_scalars_image_and_report(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((128, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 4, 128)
    pairs = tf.data.Dataset.from_tensor_slices((x, x + 0.05 * rng.random(x.shape).astype("float32"))).batch(
        32, drop_remainder=True
    )
    model = _tiny_model()
    log_dir = str(tmp_path / "logs" / "monitor")
    views = (x[:64], x[64:])
    history_path = str(tmp_path / "history.csv")
    callbacks = [
        keras.callbacks.CSVLogger(history_path),
        cbs.KnnMonitor(
            (x[:96], y[:96]),
            (x[96:], y[96:]),
            every_epochs=2,
            k=10,
            log_dir=log_dir,
            csv_path=str(tmp_path / "knn.csv"),
        ),
        cbs.RepresentationHealth(views, log_dir),
        cbs.CorrelationImage(views, log_dir, max_side=32),
        cbs.TrainingReport(str(tmp_path / "report.png"), history_path, str(tmp_path / "knn.csv"), lambd=0.0051),
    ]
    weights_before = None

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            nonlocal weights_before
            weights_before = [v.numpy().copy() for v in model.weights]

    model.fit(pairs, epochs=3, verbose=0, callbacks=[Snapshot()] + callbacks)
    # The monitors ran after the snapshot of the last epoch and ran in inference mode: nothing changed.
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(weights_before, model.weights))

    events = read_events(log_dir)
    assert [s for s, _ in events["knn/top1"]] == [1, 2]  # every 2 epochs, and the last one
    assert all(0.0 <= v <= 1.0 for _, v in events["knn/top1"] + events["knn/top5"])
    for tag in (
        "health/embedding_std",
        "health/embedding_std_min",
        "health/effective_rank",
        "health/effective_rank_ratio",
        "health/dead_fraction",
        "health/embedding_dead_fraction",
        "correlation/diag_mean",
        "correlation/off_diag_rms",
        "health/embedding_dim_std",
    ):
        assert [s for s, _ in events[tag]] == [0, 1, 2], tag
    assert all(1.0 <= v <= 16.0 for _, v in events["health/effective_rank"])
    images = events["correlation/C"]
    assert [s for s, _ in images] == [0, 1, 2]
    assert images[0][1].shape == (256, 256, 3) and images[0][1].dtype == np.uint8
    assert len(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))) == 1  # one shared writer

    knn_rows = open(tmp_path / "knn.csv").read().splitlines()
    assert knn_rows[0] == "epoch,top1,top5,seconds" and len(knn_rows) == 3
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "report.png"))).numpy()
    assert png.shape[0] > 200 and png.shape[1] > 400 and png.std() > 10  # a real picture, not blank


def test_health_separates_collapse_from_spread():
    rng = np.random.default_rng(0)
    healthy = rng.normal(size=(512, 64))
    collapsed = np.ones((512, 64)) + 1e-4 * rng.normal(size=(512, 64))
    one_direction = rng.normal(size=(512, 1)) * rng.normal(size=(1, 64))
    h = cbs.representation_health(healthy, healthy)
    assert 0.9 < h["embedding_std"] < 1.1 and h["effective_rank"] > 50 and h["dead_fraction"] == 0
    c = cbs.representation_health(collapsed, collapsed)
    assert c["embedding_std"] < 0.01
    assert cbs.representation_health(one_direction, one_direction)["effective_rank"] < 1.01
    partly_dead = healthy.copy()
    partly_dead[:, :16] *= 1e-4
    assert cbs.representation_health(partly_dead, partly_dead)["dead_fraction"] == 0.25


def test_cross_correlation_matches_the_loss_and_heatmap_keeps_the_diagonal():
    z_a = tf.random.normal([64, 48], seed=1)
    z_b = z_a + 0.5 * tf.random.normal([64, 48], seed=2)
    c = cross_correlation(z_a, z_b).numpy()
    terms = barlow_twins_terms(z_a, z_b, method="dense")
    np.testing.assert_allclose(np.sum((np.diag(c) - 1) ** 2), float(terms.on_diag), rtol=1e-4)
    np.testing.assert_allclose(np.sum(c**2) - np.sum(np.diag(c) ** 2), float(terms.off_diag), rtol=1e-4)
    img = cbs.correlation_heatmap(np.eye(1000), max_side=100, cell=1)
    assert img.shape == (100, 100, 3)
    red, white = img[np.arange(100), np.arange(100)], img[0, 1]
    assert (red[:, 0] > 100).all() and (red[:, 2] < 60).all()  # +1 → dark red
    assert (white > 240).all()  # 0 → white


def test_time_budget_stops_training_and_drives_the_learning_rate():
    model = _tiny_model()
    x = np.random.default_rng(0).random((64, 16, 16, 3)).astype("float32")
    pairs = tf.data.Dataset.from_tensor_slices((x, x[::-1])).batch(32, drop_remainder=True).repeat()
    seen = []
    ticks = iter(range(10**6))  # a simulated clock: every reading is 0.25 s after the previous one
    budget = cbs.TimeBudget(1.5, learning_rate=lambda f: 1e-3 * (1 - f), clock=lambda: 0.25 * next(ticks))

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(model.optimizer.learning_rate))

    model.fit(pairs, epochs=1000, steps_per_epoch=5, verbose=0, callbacks=[budget, Record()])
    # Each step counts 0.25 s, except the first (tracing): 1 + 6 steps fill the 1.5-s budget.
    assert budget.elapsed == 1.5 and budget.steps == len(seen) == 7 and budget.first_step_seconds == 0.25
    assert seen == pytest.approx([1e-3 * (1 - 0.25 * k / 1.5) for k in (0, 0, 1, 2, 3, 4, 5)])


@pytest.mark.slow
def test_bt_train_config_switches_the_monitors_on(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bt_keras.cli.train",
            "--config",
            os.path.join(ROOT, "configs", "demo.yaml"),
            "--run-dir",
            str(run),
            "--set",
            "model.width=4",
            "--set",
            "model.projector_dims=[32,32,32]",
            "--set",
            "train.batch_size=64",
            "--set",
            "train.verbose=0",
            "--set",
            "train.epochs=2",
            "--set",
            "eval.train_source=null",
            "--set",
            "monitor.knn_every_epochs=1",
            "--set",
            "monitor.knn_train_source=demo:train",
            "--set",
            "monitor.knn_val_source=demo:test",
            "--set",
            "monitor.knn_max_train=300",
            "--set",
            "monitor.knn_max_val=100",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_events(run / "logs" / "monitor")
    assert [s for s, _ in events["knn/top1"]] == [0, 1]
    assert [s for s, _ in events["correlation/C"]] == [0, 1]
    assert "health/effective_rank" in events
    assert (run / "report.png").exists() and (run / "knn.csv").exists()
    assert "knn_top1" not in open(run / "history.csv").readline()  # history.csv keeps its own columns
    assert json.loads((run / "summary.json").read_text())["steps"] == 2 * (1438 // 64)


MIRRORED_SCRIPT = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from bt_keras.config import config_from_dict
from bt_keras.training import train
cfg = config_from_dict({"data": {"source": "demo:train", "augment": {"preset": "cifar", "flip": {"enabled": False}}},
    "model": {"encoder": "small_cnn", "width": 4, "projector_dims": [32, 32]},
    "optim": {"name": "adamw", "lr_weights": 0.004, "warmup_epochs": 0},
    "train": {"epochs": 1, "batch_size": 64, "strategy": "mirrored", "verbose": 0},
    "eval": {"train_source": None},
    "monitor": {"knn_every_epochs": 1, "knn_train_source": "demo:train", "knn_val_source": "demo:test",
                "knn_max_train": 200, "knn_max_val": 100, "probe_batch": 32}})
summary = train(cfg, sys.argv[1])
print("STEPS", summary["steps"])
"""


@pytest.mark.slow
def test_monitors_run_under_a_two_replica_strategy(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(run)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"STEPS {1438 // 64}" in proc.stdout
    events = read_events(run / "logs" / "monitor")
    assert [s for s, _ in events["knn/top1"]] == [0] and [s for s, _ in events["correlation/C"]] == [0]
    assert (run / "report.png").exists()


def _blue_pixels(png):
    """Pixels of matplotlib's first colour (#1f77b4): curves and bars, never the frame or text."""
    return np.all(np.abs(png[..., :3].astype(int) - [31, 119, 180]) < 30, axis=-1)


def test_report_shows_the_final_knn_instead_of_an_empty_panel(tmp_path):
    """No kNN monitor: the right panel is the final kNN, trained vs random init; with nothing, one panel."""
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,off_diag,on_diag\n0,900,3000,880\n1,700,2500,680\n2,500,2000,480\n")
    final = {"knn_trained": {"top1": 0.9, "top5": 1.0}, "knn_random_init": {"top1": 0.3, "top5": 0.7}}
    png = tf.io.decode_png(tf.io.read_file(cbs.write_run_report(str(tmp_path), final, lambd=0.0051))).numpy()
    assert png.shape[1] > 1000
    right = _blue_pixels(png[:, png.shape[1] // 2 :])
    assert right.sum() > 2000  # the trained and random-init top-1 bars
    columns = np.flatnonzero(right.any(axis=0))
    assert np.any(np.diff(columns) > 20)  # two separate bars, not one
    png = tf.io.decode_png(tf.io.read_file(cbs.write_run_report(str(tmp_path), {}))).numpy()
    assert png.shape[1] < 700 and _blue_pixels(png).sum() > 100  # the loss panel alone


def test_report_marks_the_final_knn_on_the_monitor_curve(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,loss\n0,900\n1,700\n")
    (tmp_path / "knn.csv").write_text("epoch,top1,top5,seconds\n0,0.5,0.8,1\n1,0.6,0.9,1\n")
    with_final = cbs.write_run_report(str(tmp_path), {"knn_trained": {"top1": 0.7, "top5": 0.95}})
    a = tf.io.decode_png(tf.io.read_file(with_final)).numpy()
    b = tf.io.decode_png(tf.io.read_file(cbs.write_run_report(str(tmp_path), {}))).numpy()
    assert a.shape == b.shape and a.shape[1] > 1000  # the monitor keeps its panel either way
    black = lambda png: np.all(png[..., :3] < 40, axis=-1)[:, png.shape[1] // 2 :].sum()
    assert black(a) > black(b) + 50  # the star of the final evaluation


def test_history_csv_has_no_phantom_validation_columns(tmp_path):
    x = np.random.default_rng(0).random((64, 16, 16, 3)).astype("float32")
    pairs = tf.data.Dataset.from_tensor_slices((x, x[::-1])).batch(32, drop_remainder=True)
    path = tmp_path / "history.csv"
    model = _tiny_model()
    model.fit(pairs, epochs=2, verbose=0, callbacks=[cbs.HistoryCSV(str(path), append=True)])
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert rows[0] == ["epoch", "embedding_std", "learning_rate", "loss", "off_diag", "on_diag"]
    assert len(rows) == 3 and "NA" not in sum(rows, [])
    # Resumed: the same columns, appended, no second header.
    model.fit(pairs, epochs=3, initial_epoch=2, verbose=0, callbacks=[cbs.HistoryCSV(str(path), append=True)])
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert len(rows) == 4 and rows[3][0] == "2" and len(rows[3]) == 6
    # Validation data: real val_ numbers, as with Keras' CSVLogger.
    model.fit(pairs, epochs=1, verbose=0, validation_data=pairs, callbacks=[cbs.HistoryCSV(str(tmp_path / "v.csv"))])
    header, row = [line.split(",") for line in (tmp_path / "v.csv").read_text().splitlines()]
    assert "val_loss" in header and "NA" not in row


def test_history_csv_keeps_the_columns_of_an_older_file(tmp_path):
    """Resuming a run whose history.csv came from Keras' CSVLogger keeps its val_* columns aligned."""
    x = np.random.default_rng(0).random((32, 16, 16, 3)).astype("float32")
    pairs = tf.data.Dataset.from_tensor_slices((x, x[::-1])).batch(32, drop_remainder=True)
    path = tmp_path / "history.csv"
    model = _tiny_model()
    model.fit(pairs, epochs=1, verbose=0, callbacks=[keras.callbacks.CSVLogger(str(path), append=True)])
    header = path.read_text().splitlines()[0].split(",")
    assert "val_loss" in header  # Keras' own logger: the phantom columns
    model.fit(pairs, epochs=2, initial_epoch=1, verbose=0, callbacks=[cbs.HistoryCSV(str(path), append=True)])
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and len(lines[2].split(",")) == len(header)
    assert dict(zip(header, lines[2].split(",")))["loss"] != "NA"
