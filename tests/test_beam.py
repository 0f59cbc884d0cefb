"""``--runner DirectRunner`` (Apache Beam, two worker processes) against the in-process path.

- ``bt-embed``: the same rows, paths, labels and skipped files, and embeddings
  within 1e-6, read back from the shards as one set (neighbours, duplicates and
  the index work on it);
- ``bt-data``: the same TFRecord contents (as a set of serialized records),
  the same sidecar counts and the same skipped list.

The photos are a few real CIFAR-10 JPEGs (synthetic JPEGs without the shared
data), plus a truncated JPEG, a file name holding a tab and a text file.
"""

from __future__ import annotations

import csv
import importlib.util
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

# Not importorskip: importing Beam costs every worker's collection, also where these tests are deselected.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("apache_beam") is None, reason="Apache Beam not installed (pip install 'bt_keras[beam]')"
)

SIZE = 16
BEAM = ["--runner", "DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


@pytest.fixture(scope="module")
def photos(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    try:
        cifar = request.getfixturevalue("cifar10_dir")
        data = {c: [p.read_bytes() for p in sorted((cifar / "test" / c).glob("*.jpg"))[:5]] for c in ("cat", "ship")}
    except pytest.skip.Exception:  # no shared data here
        rng = np.random.default_rng(0)
        jpegs = [tf.io.encode_jpeg(rng.integers(0, 256, [32, 32, 3], dtype=np.uint8)).numpy() for _ in range(10)]
        data = {"cat": jpegs[:5], "ship": jpegs[5:]}
    for c, images in data.items():
        (root / c).mkdir()
        for i, b in enumerate(images):
            (root / c / f"{i}.jpg").write_bytes(b)
    (root / "cat" / "odd\tname.jpg").write_bytes(data["ship"][0])
    (root / "ship" / "broken.jpg").write_bytes(data["ship"][1][:150])
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "encoder.keras"
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(8, 3), keras.layers.GlobalAveragePooling2D()]
    )
    model.save(path)
    return str(path)


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t"))


@pytest.mark.slow  # Beam starts two worker processes (each imports TensorFlow)
def test_bt_embed_on_beam_equals_in_process(photos, encoder_file, tmp_path, capsys):
    from bt_keras.cli.embed import main
    from bt_keras.embed import EmbeddingSet

    common = [f"folder:{photos}", "--encoder", encoder_file, "--image-size", str(SIZE), "--batch-size", "4"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    extra = ["--num-shards", "3", "--neighbors", "2", "--duplicates", "0.999"]
    assert main([*common, "--out", str(tmp_path / "beam"), *extra, *BEAM]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and out.out.count("\n") == 2  # one line per run
    local, beam = tmp_path / "local", tmp_path / "beam"
    assert _rows(beam / "index.tsv") == _rows(local / "index.tsv")
    assert (beam / "skipped.tsv").read_text() == (local / "skipped.tsv").read_text()
    assert "broken.jpg" in (beam / "skipped.tsv").read_text()
    manifest = json.loads((beam / "embeddings.shards.json").read_text())
    assert len(manifest["shards"]) == 3 and not (beam / "embeddings.npy").exists()
    beam_set = EmbeddingSet.open(str(beam))
    np.testing.assert_allclose(np.asarray(beam_set.embeddings()), np.load(local / "embeddings.npy"), atol=1e-6, rtol=0)
    # The copy under the odd name is found as a duplicate, through the index over the shards.
    pairs = _rows(beam / "duplicates.tsv")[1:]
    assert any("odd\tname.jpg" in (p[3] + p[4]) for p in pairs) and (beam / "neighbors.png").exists()
    assert json.loads((beam / "embeddings.json").read_text())["ann_index"]["rows"] == len(beam_set.embeddings())


def test_beam_flags_without_runner_are_refused(capsys):
    from bt_keras.cli.embed import main

    with pytest.raises(SystemExit) as exit_info:  # argparse's own error path
        main(["folder:/tmp", "--run", "/tmp", "--out", "/tmp/x", "--direct_num_workers=2"])
    code = exit_info.value.code
    err = capsys.readouterr().err
    assert code == 2 and "unrecognized arguments: --direct_num_workers=2" in err and err.count("\n") == 1


def _records(folder):
    return sorted(r.numpy() for r in tf.data.TFRecordDataset(sorted(map(str, folder.glob("train-*.tfrecord")))))


@pytest.mark.slow  # Beam starts two worker processes (each imports TensorFlow)
def test_bt_data_on_beam_writes_the_same_records(photos, tmp_path, capsys):
    from bt_keras.cli.data import main

    assert main([f"folder:{photos}", str(tmp_path / "local"), "--shards", "3"]) == 0
    assert main([f"folder:{photos}", str(tmp_path / "beam"), "--shards", "3", *BEAM]) == 0
    assert "Traceback" not in capsys.readouterr().err
    local, beam = tmp_path / "local", tmp_path / "beam"
    records = _records(beam)
    assert records == _records(local) and len(records) == 11  # 10 photos + the odd name; not the broken one
    a, b = (json.loads((d / "train.bt-data.json").read_text()) for d in (local, beam))
    assert {k: v for k, v in a.items() if k != "counts"} == {k: v for k, v in b.items() if k != "counts"}
    assert sorted(a["counts"]) == sorted(b["counts"]) and sum(b["counts"].values()) == 11
    assert (beam / "train.skipped.tsv").read_text() == (local / "train.skipped.tsv").read_text()
    assert sorted(p.name for p in beam.iterdir()) == sorted(p.name for p in local.iterdir())  # no staging left


@pytest.mark.parametrize("prog", ["bt-embed", "bt-data"])
def test_runner_on_a_source_that_is_not_a_folder_is_one_line(prog, tmp_path, capsys):
    from bt_keras.cli import data, embed

    if prog == "bt-embed":
        code = embed.main(["tfrecord:/no/*.tfrecord", "--run", str(tmp_path), "--out", str(tmp_path / "o"), *BEAM])
    else:
        code = data.main(["tfrecord:/no/*.tfrecord", str(tmp_path / "o"), *BEAM])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--runner" in err and "folder:PATH" in err, err
