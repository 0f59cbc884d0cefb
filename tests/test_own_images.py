"""Training on your own folder of photos (configs/my_photos.yaml), and source errors that name their key."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bt_keras.config import check_sources, config_from_dict, load_config, source_keys
from bt_keras.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MY_PHOTOS = os.path.join(ROOT, "configs", "my_photos.yaml")
# configs/my_photos.yaml at a size that trains in seconds (the file's sizes are for real photos).
TINY = [
    "data.image_size=64",
    "model.width=4",
    "model.projector_dims=[32,32]",
    "train.epochs=2",
    "train.batch_size=8",
    "optim.warmup_epochs=1",
]


def _write_photos(root, n, classes=None, seed=0):
    """``n`` small JPEGs of varied sizes, flat or spread over class sub-folders (PIL, no network)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / classes[i % len(classes)] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(40, 90, size=2)
        pixels = np.kron(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"IMG_{i:04d}.JPG", quality=85)
    return root


def _bt_train(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "bt_keras.cli.train", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )


def test_my_photos_config_is_the_documented_recipe():
    cfg = load_config(MY_PHOTOS)
    assert cfg.data.image_size == 224 and cfg.data.augment.preset == "imagenet"
    assert cfg.data.augment.blur.enabled and cfg.data.augment.solarize.enabled
    assert cfg.eval.train_source is None and cfg.eval.test_source is None  # no final kNN by default
    assert cfg.monitor.knn_every_epochs == 0
    assert [k for k, _, _ in source_keys(cfg)] == ["data.source"]


def test_a_flat_folder_is_an_unlabelled_training_source(tmp_path):
    """Without class sub-folders: every photo is used, there are no labels (so no kNN), counts come from it."""
    photos = _write_photos(tmp_path / "photos", 36, None)
    cfg = config_from_dict(None, [f"data.source=folder:{photos}", *TINY])
    info = cfg.data.info()
    assert (info.num_examples, info.has_labels, info.skipped) == (36, False, [])
    assert [k for k, _, _ in source_keys(cfg)] == ["data.source"]


@pytest.mark.slow
def test_bt_train_with_my_photos_on_a_generated_folder(tmp_path):
    """End to end with class sub-folders (the flat layout differs only in having no final kNN)."""
    classes = ["beach", "forest", "city"]
    photos = _write_photos(tmp_path / "photos", 36, classes)
    overrides = [f"data.source=folder:{photos}", *TINY]
    if classes:  # labelled: the final kNN evaluation runs, on a held-out folder
        held_out = _write_photos(tmp_path / "held_out", 12, classes, seed=1)
        overrides += [f"eval.train_source=folder:{photos}", f"eval.test_source=folder:{held_out}"]
    run = tmp_path / "run"
    proc = _bt_train("--config", MY_PHOTOS, *[a for o in overrides for a in ("--set", o)], "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == (36 // 8) * 2  # steps per epoch from the folder's 36 images
    assert (run / "encoder.keras").exists() and (run / "preprocessing.json").exists()
    assert json.loads((run / "preprocessing.json").read_text())["image_size"] == 64
    if classes:
        assert 0.0 <= summary["knn_trained"]["top1"] <= summary["knn_trained"]["top5"] <= 1.0
    else:
        assert "knn_trained" not in summary


# Each key that holds a source, the overrides that make a run open it, and the bad value.
BAD_PATHS = [
    ("data.source", []),
    ("data.val_source", []),
    ("eval.train_source", ["eval.test_source=demo:test"]),
    ("eval.test_source", ["eval.train_source=demo:train"]),
    ("monitor.knn_train_source", ["monitor.knn_every_epochs=1", "monitor.knn_val_source=demo:test"]),
    ("monitor.knn_val_source", ["monitor.knn_every_epochs=1", "monitor.knn_train_source=demo:train"]),
]


def _overrides(key, extra, missing):
    base = ["data.source=demo:train", *TINY] if key != "data.source" else list(TINY)
    return [*base, *extra, f"{key}=folder:{missing}"]


@pytest.mark.parametrize("key,extra", BAD_PATHS, ids=[k for k, _ in BAD_PATHS])
def test_check_sources_names_the_key(tmp_path, key, extra):
    cfg = config_from_dict(None, _overrides(key, extra, tmp_path / "missing"))
    with pytest.raises(DataError) as e:
        check_sources(cfg)
    assert str(e.value).startswith(f"{key}: folder:{tmp_path / 'missing'}: no such directory")


def test_labelled_keys_need_labels_and_folders_need_images(tmp_path):
    flat = _write_photos(tmp_path / "flat", 4)
    cfg = config_from_dict(
        None, ["data.source=demo:train", f"eval.train_source=folder:{flat}", "eval.test_source=demo:test"]
    )
    with pytest.raises(DataError, match=r"^eval\.train_source: folder:.*: has no labels \(no class sub-folders\)"):
        check_sources(cfg)
    check_sources(config_from_dict(None, [f"data.source=folder:{flat}"]))  # training needs no labels
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"^data\.source: folder:.*: no image files"):
        check_sources(config_from_dict(None, [f"data.source=folder:{tmp_path / 'empty'}"]))


@pytest.mark.parametrize("key,extra", BAD_PATHS, ids=[k for k, _ in BAD_PATHS])
def test_bt_train_bad_path_is_one_line_naming_the_key(tmp_path, capsys, key, extra):
    from bt_keras.cli.train import main

    argv = ["--config", MY_PHOTOS, "--run-dir", str(tmp_path / "run")]
    for override in _overrides(key, extra, tmp_path / "missing"):
        argv += ["--set", override]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    line = f"bt-train: error: {key}: folder:{tmp_path / 'missing'}: no such directory"
    assert err.startswith(line) and err.count("\n") == 1, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_shipped_config_with_only_data_source_overridden_says_which_key(tmp_path, monkeypatch, capsys):
    """The first-hour failure: a shipped config's eval sources still point at its own data."""
    from bt_keras.cli.train import main

    photos = _write_photos(tmp_path / "photos", 8)
    monkeypatch.chdir(tmp_path)  # the config's relative data/cifar10 paths do not exist here
    with pytest.raises(SystemExit) as e:
        main(["--config", os.path.join(ROOT, "configs", "cifar10_cpu.yaml"), "--set", f"data.source=folder:{photos}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert "eval.train_source: folder:data/cifar10/train: no such directory" in err
    assert "or to null to skip the final kNN evaluation" in err
