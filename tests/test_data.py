"""Input pipelines: sources, bad files, TFRecords, TFDS, sharding, reproducibility."""

from __future__ import annotations

import io
import json
from dataclasses import replace as dataclasses_replace

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bt_keras import data
from bt_keras.cli import UserError
from bt_keras.data import DataConfig, DataError
from bt_keras.preprocess import CIFAR10_MEAN, CIFAR10_STD, preprocess_for_eval


def _graph_ops(ds) -> set:
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())
    ops = {n.op for n in graph.node}
    for fn in graph.library.function:
        ops |= {n.op for n in fn.node_def}
    return ops


def _epoch(ds):
    return [tuple(t.numpy() for t in batch) for batch in ds]


def _jpeg(array, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- #
# Demo set and NumPy arrays
# --------------------------------------------------------------------------- #


def test_demo_set_is_the_digits_upsampled_with_a_fixed_split():
    x_train, y_train = data.load_demo("train")
    x_test, y_test = data.load_demo("test")
    assert x_train.shape == (1438, 32, 32, 3) and x_test.shape == (359, 32, 32, 3)
    assert x_train.dtype == np.uint8 and x_train.max() == 255 and x_train.min() == 0
    assert (x_train[..., 0] == x_train[..., 2]).all()  # gray digits replicated to RGB
    assert set(np.unique(y_train)) == set(range(10)) and set(np.unique(y_test)) == set(range(10))
    from sklearn.datasets import load_digits

    from bt_keras.data.demo import _digits

    digits = load_digits()
    images, target = _digits()  # scikit-learn's file, read without importing scikit-learn
    np.testing.assert_array_equal(images, digits.images)
    np.testing.assert_array_equal(target, digits.target)
    small = tf.image.resize(tf.cast(x_test[:, :, :, :1], tf.float32), [8, 8], method="area").numpy()[..., 0]
    # Each test image is one of the originals (by nearest original), with the original label.
    dist = ((small[:, None] * 16 / 255 - digits.images[None]) ** 2).sum(axis=(2, 3))
    assert (digits.target[dist.argmin(axis=1)] == y_test).mean() > 0.97
    np.testing.assert_array_equal(data.load_demo("test")[0], x_test)  # fixed, not re-drawn
    with pytest.raises(DataError, match="demo"):
        data.load_demo("validation")


def test_two_view_dataset_on_arrays_static_shapes_and_full_batches():
    x = np.random.default_rng(0).integers(0, 256, (50, 36, 30), dtype=np.uint8)  # grayscale [N, H, W]
    ds = data.two_view_dataset(x, batch_size=16, image_size=24, augment="imagenet", seed=1)
    assert ds.element_spec[0].shape == (16, 24, 24, 3) and ds.element_spec[1].shape == (16, 24, 24, 3)
    batches = _epoch(ds)
    assert len(batches) == 3  # 50 // 16, the remainder dropped
    for a, b in batches:
        assert a.dtype == np.float32 and np.isfinite(a).all()
        assert (np.abs(a - b).max(axis=(1, 2, 3)) > 0.1).all()  # the two views of each image differ
    assert "PyFunc" not in _graph_ops(ds) and "EagerPyFunc" not in _graph_ops(ds)


def test_epochs_reshuffle_and_runs_repeat_exactly_given_the_seed():
    # (Different seeds giving different views: tests/test_augment.py.)
    x = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)

    def make(seed):
        return data.two_view_dataset(x, batch_size=32, image_size=32, seed=seed, deterministic=True)

    ds = make(3)
    e1, e2 = _epoch(ds), _epoch(ds)
    assert not np.allclose(e1[0][0], e2[0][0])  # a new pass is a new epoch
    # A restarted run with the same seed sees the same epochs in the same sequence, also
    # through .repeat() (how the trainer consumes it).
    repeated = [tuple(t.numpy() for t in batch) for batch in make(3).repeat().take(4)]
    for u, v in zip(e1 + e2, repeated):
        np.testing.assert_array_equal(u[0], v[0])
        np.testing.assert_array_equal(u[1], v[1])


def test_non_deterministic_order_gives_the_same_views():
    x = np.random.default_rng(2).integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)

    def views(deterministic):
        ds = data.two_view_dataset(x, batch_size=32, image_size=32, seed=5, deterministic=deterministic)
        a = np.concatenate([b[0] for b in _epoch(ds)])
        return np.sort(a.reshape(len(a), -1).sum(axis=1))

    np.testing.assert_allclose(views(True), views(False), rtol=1e-6)


def test_eval_dataset_uses_the_serving_preprocessing_keeps_order_and_remainder():
    x = np.random.default_rng(3).integers(0, 256, (21, 40, 48, 3), dtype=np.uint8)
    y = np.arange(21) % 4
    ds = data.eval_dataset((x, y), batch_size=8, image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_fraction=0.875)
    batches = _epoch(ds)
    assert [len(b[1]) for b in batches] == [8, 8, 5]
    labels = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(labels, y)
    assert batches[0][1].dtype == np.int32
    ref = preprocess_for_eval(tf.constant(x[9]), 32, mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_fraction=0.875)
    np.testing.assert_allclose(batches[1][0][1], ref.numpy(), atol=1e-6)
    with pytest.raises(DataError, match="no labels"):
        data.eval_dataset(x, batch_size=8, image_size=32)


def test_config_modules_do_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, bt_keras.data.config, bt_keras.augment.config; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_data_config_is_the_one_path_to_datasets():
    from bt_keras.contract import default_crop_fraction

    cfg = DataConfig(
        source="demo:test", image_size=32, augment="imagenet", val_source="demo:test", seed=2, deterministic=True
    )
    assert cfg.augment == data.DataConfig(augment="imagenet").augment and hash(cfg) == hash(dataclasses_replace(cfg))
    assert cfg.crop_fraction is None and cfg.contract().crop_fraction == default_crop_fraction(32)
    assert cfg.contract().mean == cfg.mean == cfg.augment.mean
    assert cfg.count() == 359 and cfg.info().class_names is None and cfg.info().has_labels
    a = _epoch(cfg.train_dataset(64, seed_offset=1).take(1))
    b = data.two_view_dataset("demo:test", batch_size=64, image_size=32, augment="imagenet", seed=3, deterministic=True)
    b = _epoch(b.take(1))
    np.testing.assert_array_equal(a[0][0], b[0][0])
    ((x, y),) = _epoch(cfg.eval_dataset(400))
    assert x.shape == (359, 32, 32, 3)
    with pytest.raises(DataError, match="crop_fraction"):
        DataConfig(crop_fraction=0.0)
    with pytest.raises(DataError, match="val_source"):
        DataConfig().eval_dataset(8)


def test_data_config_validation_and_yaml_loader():
    from bt_keras.config import ConfigError, config_from_dict

    cfg = config_from_dict({"data": {"source": "demo:test", "image_size": 32, "cache": False, "seed": 3}})
    assert isinstance(cfg.data, DataConfig) and cfg.data.cache is False
    assert cfg.data.mean == CIFAR10_MEAN
    a, b = next(iter(cfg.data.train_dataset(batch_size=16)))
    assert a.shape == (16, 32, 32, 3)
    with pytest.raises(ConfigError, match="image_size"):
        config_from_dict({"data": {"image_size": 0}})
    with pytest.raises(ConfigError, match="validate"):
        config_from_dict({"data": {"validate": "sometimes"}})
    with pytest.raises(UserError, match="^cannot read 'ftp://x'; use demo"):
        data.two_view_dataset("ftp://x", batch_size=4)  # the API names the source; check_sources adds the key
    with pytest.raises(DataError, match="fewer than one batch"):
        data.two_view_dataset("demo:test", batch_size=1000)


def test_input_context_gives_per_replica_batches_and_disjoint_shards():
    x = np.random.default_rng(4).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y = np.arange(40)
    seen = []
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=4)
        ds = data.two_view_dataset((x, y), batch_size=8, image_size=32, input_context=ctx)
        assert ds.element_spec[0].shape == (2, 32, 32, 3)  # 8 global / 4 replicas
        ev = data.eval_dataset((x, y), batch_size=8, image_size=32, input_context=ctx)
        seen.append(np.concatenate([b[1] for b in _epoch(ev)]))
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(40))


# --------------------------------------------------------------------------- #
# A folder of broken and odd files
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    (root / "cats").mkdir()
    (root / "dogs" / "nested").mkdir(parents=True)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    good = {
        "cats/rgb.jpg": _jpeg(rgb),
        "cats/UPPER.JPG": _jpeg(rgb[::-1]),
        "cats/cmyk.jpeg": _jpeg(rgb, **{}) if False else None,
        "cats/gray.png": _png(Image.fromarray(rgb[..., 0], "L")),
        "cats/rgba.png": _png(Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA")),
        "cats/palette.png": _png(Image.fromarray(rgb).convert("P")),
        "dogs/deep16.png": _png(Image.fromarray((np.arange(40 * 50).reshape(40, 50) * 32).astype(np.uint16))),
        "dogs/anim.gif": None,
        "dogs/tiny.png": _png(Image.fromarray(np.full((1, 1, 3), 200, np.uint8))),
        "dogs/ñandú photo.png": _png(Image.fromarray(rgb[:, ::-1])),
        "dogs/wide.jpg": _jpeg(rng.integers(0, 256, (6, 1200, 3), dtype=np.uint8)),
        "dogs/nested/image.Bmp": None,
    }
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG")
    good["cats/cmyk.jpeg"] = buf.getvalue()
    buf = io.BytesIO()
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    good["dogs/anim.gif"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[::-1, ::-1])).save(buf, "BMP")  # unlike the other files
    good["dogs/nested/image.Bmp"] = buf.getvalue()
    full = _jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    bad = {
        "cats/empty.jpg": (b"", "empty file"),
        "cats/truncated.jpg": (full[: len(full) // 2], "truncated"),
        "dogs/text.jpg": (b"this is a text file, not a picture\n" * 3, "not an image: text content"),
        "dogs/random.png": (rng.integers(0, 256, 500, dtype=np.uint8).tobytes(), "not an image"),
    }
    for name, payload in good.items():
        (root / name).write_bytes(payload)
    for name, (payload, _) in bad.items():
        (root / name).write_bytes(payload)
    (root / "cats" / "notes.txt").write_text("labels are folder names\n")
    return root, sorted(good), {k: v[1] for k, v in bad.items()}


@pytest.mark.parametrize("cache", [None, False])
def test_odd_folder_uses_every_good_file_and_lists_the_bad_ones(odd_folder, tmp_path, caplog, cache):
    root, good, bad = odd_folder
    source = f"folder:{root}"
    skipped = tmp_path / "run" / "skipped.tsv"
    info = data.source_info(source, cache=cache)
    assert info.num_examples == len(good) and info.class_names == ["cats", "dogs"]
    ds = data.two_view_dataset(
        source, batch_size=len(good), image_size=32, augment="imagenet", skipped_path=str(skipped), cache=cache
    )
    ((a, b),) = _epoch(ds)  # one epoch is one full batch: every good file was used
    assert a.shape == (len(good), 32, 32, 3) and np.isfinite(a).all() and np.isfinite(b).all()
    err = caplog.text  # the library logs the summary (the CLIs show it on stderr)
    assert f"skipped {len(bad)} of {len(good) + len(bad)} files: see {skipped}" in err
    rows = [line.split("\t") for line in skipped.read_text().splitlines()]
    listed = {path[len(str(root)) + 1 :]: reason for path, reason in rows}
    for name, reason in bad.items():
        assert reason in listed[name], (name, listed[name])
    assert listed["cats/notes.txt"].startswith("ignored:")
    assert set(listed) == set(bad) | {"cats/notes.txt"}
    assert "PyFunc" not in _graph_ops(ds) and "EagerPyFunc" not in _graph_ops(ds)

    ev = _epoch(data.eval_dataset(source, batch_size=4, image_size=16, crop_fraction=1.0, cache=cache))
    labels = np.concatenate([y for _, y in ev])
    assert len(labels) == len(good) and sorted(labels) == sorted(int(g.startswith("dogs")) for g in good)


def test_odd_formats_decode_to_three_channel_uint8(odd_folder):
    root, good, _ = odd_folder
    x = {name: data.decode_rgb(tf.io.read_file(str(root / name))).numpy() for name in good}
    for name, img in x.items():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
    assert x["dogs/tiny.png"].shape == (1, 1, 3) and x["dogs/wide.jpg"].shape == (6, 1200, 3)
    deep = x["dogs/deep16.png"][..., 0].astype(int)
    expected = (np.arange(40 * 50).reshape(40, 50) * 32) / 65535 * 255
    assert np.abs(deep - expected).max() <= 1  # 16-bit scaled, not truncated
    assert (x["cats/gray.png"][..., 0] == x["cats/gray.png"][..., 2]).all()


def test_folder_without_usable_images_is_an_error_naming_the_path(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=str(tmp_path)) as e:
        data.two_view_dataset(f"folder:{tmp_path}", batch_size=2)
    assert "no usable image" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match="no image files"):
        data.count_examples(f"folder:{tmp_path / 'c'}")
    with pytest.raises(DataError, match="no such directory"):
        data.count_examples(f"folder:{tmp_path / 'missing'}")


def test_quick_validation_without_decoding_catches_structural_damage(odd_folder):
    root, good, bad = odd_folder
    info = data.source_info(f"folder:{root}", cache=False, validate="quick")
    listed = {p[len(str(root)) + 1 :] for p, r in info.skipped if not r.startswith("ignored")}
    assert listed == set(bad) and info.num_examples == len(good)


def test_folder_through_a_non_local_filesystem():
    # ram:// goes through tf.io.gfile like gs:// does.
    root = "ram://bt_keras_test_folder"
    rng = np.random.default_rng(9)
    for i in range(6):
        tf.io.gfile.makedirs(f"{root}/c{i % 2}")
        with tf.io.gfile.GFile(f"{root}/c{i % 2}/{i}.jpg", "wb") as f:
            f.write(_jpeg(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)))
    assert data.count_examples(f"folder:{root}") == 6
    a, b = next(iter(data.two_view_dataset(f"folder:{root}", batch_size=6, image_size=16, cache=False)))
    assert a.shape == (6, 16, 16, 3)


# --------------------------------------------------------------------------- #
# TFRecords and bt-data
# --------------------------------------------------------------------------- #


def test_tfrecord_round_trip_through_bt_data(odd_folder, tmp_path, capsys):
    from bt_keras.cli.data import main

    root, good, bad = odd_folder
    out = tmp_path / "shards"
    assert main([str(root), str(out), "--name", "train", "--shards", "3"]) == 0
    printed = capsys.readouterr()
    assert f"wrote {len(good)} images in 3 shards" in printed.out
    info = json.loads((out / "train.bt-data.json").read_text())
    assert info["num_examples"] == len(good) and info["class_names"] == ["cats", "dogs"]
    rows = (out / "train.skipped.tsv").read_text().splitlines()
    assert len(rows) == len(bad) + 1  # + notes.txt
    # Reasons are the decoder's words, not TensorFlow's stack; the summary names the published file.
    assert not [r for r in rows if "Graph execution" in r or "Detected at node" in r or "File " in r], rows
    assert f"see {out}/train.skipped.tsv" in printed.err

    source = f"tfrecord:{out}/train-*.tfrecord"
    assert data.count_examples(source) == len(good)
    from_records = _epoch(data.eval_dataset(source, batch_size=64, image_size=16, crop_fraction=1.0))
    from_folder = _epoch(data.eval_dataset(f"folder:{root}", batch_size=64, image_size=16, crop_fraction=1.0))

    xr = np.concatenate([b[0] for b in from_records])
    yr = np.concatenate([b[1] for b in from_records])
    xf = np.concatenate([b[0] for b in from_folder])
    yf = np.concatenate([b[1] for b in from_folder])
    # The shards hold the images in a shuffled order: match each to its folder twin.
    dist = np.abs(xr[:, None] - xf[None]).reshape(len(xr), len(xf), -1).max(axis=2)
    match = dist.argmin(axis=1)
    assert sorted(match) == list(range(len(xf)))  # a one-to-one match
    assert dist.min(axis=1).max() < 1e-5  # the same bytes, the same decoder
    np.testing.assert_array_equal(yr, yf[match])

    ((a, b),) = _epoch(data.two_view_dataset(source, batch_size=len(good), image_size=32, cache=False))
    assert a.shape == (len(good), 32, 32, 3)

    capsys.readouterr()
    assert main([str(tmp_path / "missing"), str(tmp_path / "out2")]) == 2  # one-line user error
    err = capsys.readouterr().err.strip()
    assert err.startswith("bt-data: error: folder:") and "no such directory" in err and "\n" not in err


def test_tfrecord_with_bad_records_single_file_sharding(tmp_path, capsys):
    path = str(tmp_path / "mixed.tfrecord")
    rng = np.random.default_rng(1)
    with tf.io.TFRecordWriter(path) as w:
        for i in range(10):
            img = _jpeg(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
            feats = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[img])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 3])),
            }
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
        w.write(b"definitely not an Example")
        junk = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\xff\xd8\xff garbage"]))}
        w.write(tf.train.Example(features=tf.train.Features(feature=junk)).SerializeToString())
    source = f"tfrecord:{path}"
    info = data.source_info(source)
    assert info.num_examples == 10 and info.has_labels
    reasons = dict(info.skipped)
    assert "not a tf.train.Example" in reasons[f"{path}#10"] and "JPEG" in reasons[f"{path}#11"]
    labels = []
    for i in range(2):  # one file, two pipelines: sharded by record
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)
        labels.append(
            np.concatenate(
                [y for _, y in _epoch(data.eval_dataset(source, batch_size=4, image_size=16, input_context=ctx))]
            )
        )
    assert len(labels[0]) + len(labels[1]) == 10


# --------------------------------------------------------------------------- #
# TFDS (mock data: no download) and the real CIFAR-10 JPEG folder
# --------------------------------------------------------------------------- #


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=40):
        ds = data.two_view_dataset("tfds:cifar10:train", batch_size=16, image_size=32, augment="cifar")
        batches = _epoch(ds)
        assert len(batches) == 2 and batches[0][0].shape == (16, 32, 32, 3)
        ev = _epoch(data.eval_dataset("tfds:cifar10:test", batch_size=16, image_size=32, crop_fraction=1.0))
        labels = np.concatenate([y for _, y in ev])
        assert len(labels) == 40 and labels.min() >= 0 and labels.max() <= 9
        assert len(data.source_info("tfds:cifar10:train").class_names) == 10
        assert "PyFunc" not in _graph_ops(ds)
    with pytest.raises(DataError, match="tfds:cifar10"):
        data.count_examples("tfds:cifar10:train", data_dir="/nonexistent/tfds")


def test_cifar10_jpeg_folder(cifar10_dir, tmp_path):
    source = f"folder:{cifar10_dir / 'test'}"
    info = data.source_info(source)
    assert info.num_examples == 10_000 and not info.skipped
    assert info.class_names == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    ds = data.two_view_dataset(source, batch_size=256, image_size=32, skipped_path=str(tmp_path / "s.tsv"))
    a, b = next(iter(ds))
    assert a.shape == (256, 32, 32, 3)
    # Normalised with CIFAR statistics: roughly zero mean, unit spread over a batch.
    assert abs(float(tf.reduce_mean(a))) < 0.5 and 0.6 < float(tf.math.reduce_std(a)) < 1.5
    assert (tmp_path / "s.tsv").read_text() == ""
    images, labels = next(
        iter(
            data.eval_dataset(
                source, batch_size=100, image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_fraction=1.0
            )
        )
    )
    assert images.shape == (100, 32, 32, 3) and set(labels.numpy()) == {0}  # sorted: airplanes first


def _benchmark_script(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def _labelled_split(root, n, seed, num_classes=3):
    """CIFAR-like labelled JPEG class folders written by benchmarks/make_cifar10_folders.py (no download)."""
    make, _ = _benchmark_script("make_cifar10_folders")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    x = rng.normal(80, 30, (n, 32, 32, 3)) + 120 * (y[:, None, None, None] == np.arange(3))
    make.write_split(np.clip(x, 0, 255).astype(np.uint8), y, root)
    return x, y


def test_make_cifar10_folders_reads_back_as_a_labelled_folder(tmp_path):
    make, _ = _benchmark_script("make_cifar10_folders")
    _, y = _labelled_split(tmp_path / "train", 30, seed=0)
    info = data.source_info(f"folder:{tmp_path / 'train'}")
    assert info.num_examples == 30 and info.class_names == list(make.CLASS_NAMES[:3])
    labels = np.concatenate(
        [b.numpy() for _, b in data.eval_dataset(f"folder:{tmp_path / 'train'}", batch_size=64, image_size=32)]
    )
    assert sorted(labels.tolist()) == sorted(y.tolist())


def _quality(*args):
    import subprocess
    import sys

    _, path = _benchmark_script("make_cifar10_folders")
    quality = path.with_name("quality.py")
    return subprocess.run(
        [sys.executable, str(quality), *args], capture_output=True, text=True, timeout=600, cwd=path.parents[1]
    )


@pytest.mark.slow
def test_quality_benchmark_bad_data_is_one_line_exit_2(tmp_path):
    _labelled_split(tmp_path / "train", 12, seed=0)
    _labelled_split(tmp_path / "test", 6, seed=1)
    cases = [
        (
            ["--data", f"folder:{tmp_path / 'missing'}"],
            f"--data: folder:{tmp_path / 'missing'}/train: no such directory",
        ),
        (["--data", f"folder:{tmp_path}"], "has 12 usable images, fewer than one batch (train.batch_size=128)"),
    ]
    for args, message in cases:
        proc = _quality(*args, "--minutes", "0.1", "--out", str(tmp_path / "out"))
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("quality.py")]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_quality_benchmark_runs_on_a_small_labelled_folder(tmp_path):
    _labelled_split(tmp_path / "data" / "train", 48, seed=0)
    _labelled_split(tmp_path / "data" / "test", 12, seed=1)
    out = tmp_path / "out"
    proc = _quality(
        "--data", f"folder:{tmp_path / 'data'}", "--minutes", "0.05", "--supervised-minutes", "0.05",
        "--curve-bank", "20", "--set", "train.batch_size=16", "--out", str(out),
        "--set", "model.encoder=small_cnn", "--set", "model.width=4", "--set", "model.projector_dims=[32,32]",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["num_train"] == 48 and results["data"]["num_test"] == 12
    assert results["data"]["curve_bank"] == 20
    assert results["barlow_twins"]["steps"] >= 1 and results["barlow_twins"]["curve"][0]["epoch"] == 0
    for row in results["rows"].values():
        assert 0.0 <= row["top1"] <= row["top5"] <= 1.0
    assert (out / "run" / "encoder.keras").exists() and (out / "table.md").exists()


def test_a_folder_under_home_is_expanded_and_a_missing_one_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """``folder:~/photos`` (the shell leaves ``~`` after ``folder:`` alone) works in every command."""
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full([8, 8, 3], 40 * i, np.uint8)).save(home / "photos" / f"{i}.png")
    monkeypatch.setenv("HOME", str(home))
    assert data.count_examples("folder:~/photos") == 3
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        data.count_examples("folder:missing")
    assert str(e.value) == (
        f"folder:missing: no such directory (looked for {tmp_path / 'missing'}, "
        f"relative to the working directory {tmp_path})"
    )


def test_a_file_rewritten_under_the_same_name_is_prepared_again(tmp_path):
    """The per-process cache of prepared sources keys on sizes and times, not names alone."""
    from bt_keras.data import prepare as prepare_module

    for i in range(2):
        Image.fromarray(np.full([8, 8, 3], 10 * i, np.uint8)).save(tmp_path / f"{i}.png")
    first = prepare_module.prepare(f"folder:{tmp_path}", cache=True)
    assert prepare_module.prepare(f"folder:{tmp_path}", cache=True) is first  # unchanged: the cached one
    Image.fromarray(np.full([9, 9, 3], 200, np.uint8)).save(tmp_path / "1.png")  # same name, new content
    second = prepare_module.prepare(f"folder:{tmp_path}", cache=True)
    assert second is not first and second.num_examples == 2
    prepare_module.PREPARED.clear()
    assert prepare_module.prepare(f"folder:{tmp_path}", cache=True) is not second


def test_the_prepared_cache_is_bounded_by_the_bytes_it_holds():
    from bt_keras.data import prepare as prepare_module

    cache = prepare_module.PreparedCache(entries=4, max_bytes=1000)
    big = [prepare_module.prepare(np.zeros([n, 16, 16, 3], np.uint8), cache=True) for n in (2, 3)]  # 1,536 B, 2,304 B
    cache.put("a", big[0])
    cache.put("b", big[1])
    assert cache.get("a") is None and cache.get("b") is big[1]  # the newest stays even above the bound
