"""bt-embed: embeddings of a real folder, the neighbour grid, near duplicates, projector files, bad input.

The folder is built here from a few real photos (CIFAR-10 JPEGs when the
shared data is present, synthetic JPEGs otherwise), with an exact copy of one
image (under a file name holding a tab), a recompressed copy of another, and a
truncated JPEG. The encoder is tiny: its embedding is the normalised pixels,
so similar images have similar embeddings without any training.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from bt_keras.contract import make_contract
from bt_keras.preprocess import preprocess_for_eval

SIZE = 16
THRESHOLD = 0.995
CLASSES = ("airplane", "cat", "ship")


def _synthetic_jpegs(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.float32)
        image = tf.image.resize(coarse[None], [32, 32], method="bilinear")[0].numpy()
        pixels = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
        out.append(tf.io.encode_jpeg(pixels, quality=95).numpy())
    return out


@pytest.fixture(scope="module")
def photos(request, tmp_path_factory):
    """``(root, {name: path})``: 4 photos per class, plus an exact copy, a recompressed copy and a broken file."""
    root = tmp_path_factory.mktemp("photos")
    try:
        cifar = request.getfixturevalue("cifar10_dir")
        data = {c: [p.read_bytes() for p in sorted((cifar / "test" / c).glob("*.jpg"))[:4]] for c in CLASSES}
    except pytest.skip.Exception:  # no shared data here (under BT_KERAS_REQUIRE_DATA=1 this fails instead)
        jpegs = _synthetic_jpegs(4 * len(CLASSES))
        data = {c: jpegs[4 * i : 4 * i + 4] for i, c in enumerate(CLASSES)}
    for c, images in data.items():
        (root / c).mkdir()
        for i, b in enumerate(images):
            (root / c / f"{i}.jpg").write_bytes(b)
    files = {"a": root / "cat" / "0.jpg", "b": root / "ship" / "1.jpg"}
    # Exact copy under an odd name (a tab), in another class; a recompressed copy of b.
    files["a_copy"] = root / "airplane" / "copy of\ta.jpg"
    files["a_copy"].write_bytes(files["a"].read_bytes())
    files["b_recompressed"] = root / "cat" / "b recompressed.jpg"
    decoded = tf.io.decode_jpeg(files["b"].read_bytes(), channels=3)
    files["b_recompressed"].write_bytes(tf.io.encode_jpeg(decoded, quality=85).numpy())
    files["broken"] = root / "ship" / "broken.jpg"
    files["broken"].write_bytes(files["b"].read_bytes()[:120])
    return root, {k: str(v) for k, v in files.items()}


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A tiny encoder (the normalised pixels, flattened) saved as ``.keras``."""
    path = tmp_path_factory.mktemp("enc") / "encoder.keras"
    keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten()]).save(path)
    return str(path)


def _bt_embed(*args):
    return subprocess.run(
        [sys.executable, "-m", "bt_keras.cli.embed", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def embedded(photos, encoder_file, tmp_path_factory):
    """One bt-embed run with every option; ``(out dir, process, photos)``."""
    root, files = photos
    out = tmp_path_factory.mktemp("embedded") / "out"
    proc = _bt_embed(
        f"folder:{root}",
        "--encoder",
        encoder_file,
        "--image-size",
        SIZE,
        "--crop-fraction",
        1.0,
        "--out",
        out,
        "--batch-size",
        5,
        "--neighbors",
        2,
        "--query",
        files["a"],
        "--query",
        files["b"],
        "--duplicates",
        THRESHOLD,
        "--projector",
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc, files


def _index(out):
    with open(out / "index.tsv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.slow  # the one bt-embed subprocess (module fixture)
def test_embeddings_equal_the_encoders_on_the_same_preprocessing(embedded, encoder_file):
    out, proc, files = embedded
    emb = np.load(out / "embeddings.npy")
    rows = _index(out)
    paths = [r["path"] for r in rows]
    assert len(rows) == len(emb) == 3 * 4 + 2  # the broken file is not embedded
    assert files["a_copy"] in paths and files["broken"] not in paths  # the tab survived the TSV quoting
    assert [int(r["row"]) for r in rows] == list(range(len(rows)))
    assert {r["class"] for r in rows} == set(CLASSES)
    assert all(r["class"] == CLASSES[int(r["label"])] == r["path"].split("/")[-2] for r in rows)
    encoder = keras.saving.load_model(encoder_file)
    c = make_contract(SIZE, crop_fraction=1.0)
    x = tf.stack([preprocess_for_eval(tf.io.read_file(p), SIZE, c.mean, c.std, c.crop_fraction) for p in paths])
    np.testing.assert_allclose(emb, encoder(x).numpy(), atol=1e-5)
    summary = json.loads((out / "embeddings.json").read_text())
    assert summary["num_images"] == len(emb) and summary["num_skipped"] == 1
    assert proc.stdout.count("\n") == 1 and f"{len(emb)} images" in proc.stdout


@pytest.mark.slow  # the one bt-embed subprocess (module fixture)
def test_duplicates_are_the_copies_and_nothing_else(embedded):
    out, _, files = embedded
    with open(out / "duplicates.tsv", encoding="utf-8", newline="") as f:
        found = list(csv.DictReader(f, delimiter="\t"))
    pairs = {frozenset((r["path_a"], r["path_b"])) for r in found}
    assert pairs == {frozenset((files["a"], files["a_copy"])), frozenset((files["b"], files["b_recompressed"]))}
    # Nothing else reaches the threshold: every pair, by brute force.
    emb = np.load(out / "embeddings.npy")
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    i, j = np.nonzero(np.triu(sims >= THRESHOLD, k=1))
    assert len(i) == len(found) == 2
    for r in found:
        assert float(r["similarity"]) == pytest.approx(sims[int(r["row_a"]), int(r["row_b"])], abs=1e-5)


@pytest.mark.slow  # the one bt-embed subprocess (module fixture)
def test_neighbour_grid_first_neighbour_is_the_duplicate(embedded, photos, encoder_file, tmp_path):
    import bt_keras
    from bt_keras.frozen import load_frozen_encoder

    out, _, files = embedded
    grid = tf.io.decode_png(tf.io.read_file(str(out / "neighbors.png"))).numpy()
    assert grid.shape[0] > grid.shape[1] / 3 * 1.5  # two query rows of three pictures
    # The same through the Python API: the first neighbour of each query is its copy.
    root, _ = photos
    frozen = load_frozen_encoder(encoder=encoder_file, image_size=SIZE, crop_fraction=1.0)
    result = bt_keras.embed_source(f"folder:{root}", frozen, str(tmp_path / "api"), batch_size=64)
    np.testing.assert_array_equal(result.embeddings(), np.load(out / "embeddings.npy"))
    path, queries, idx, sims = result.write_neighbors(2, queries=[files["a"], files["b"]])
    paths = [r["path"] for r in result.index()]
    assert [paths[i] for i in queries] == [files["a"], files["b"]]
    assert [paths[i] for i in idx[:, 0]] == [files["a_copy"], files["b_recompressed"]]
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-6) and sims[1, 0] >= THRESHOLD > sims[1, 1]
    # A query that is not in the set is embedded on the spot: the copy finds its original.
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(open(files["a"], "rb").read())
    _, queries, idx, _ = result.write_neighbors(1, queries=[str(outside)])
    assert queries.tolist() == [-1] and paths[idx[0, 0]] in (files["a"], files["a_copy"])


@pytest.mark.slow  # the one bt-embed subprocess (module fixture)
def test_projector_files_load_in_tensorboards_plugin(embedded):
    from google.protobuf import text_format
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin
    from werkzeug.test import Client

    out, _, _ = embedded
    logdir = out / "projector"
    emb = np.load(out / "embeddings.npy")
    config = text_format.Parse((logdir / "projector_config.pbtxt").read_text(), ProjectorConfig())
    (embedding,) = config.embeddings
    assert list(embedding.tensor_shape) == list(emb.shape)
    plugin = ProjectorPlugin(base_plugin.TBContext(logdir=str(logdir)))
    apps = plugin.get_plugin_apps()
    name = embedding.tensor_name

    def get(route):
        response = Client(apps[route]).get(f"{route}?run=.&name={name}")
        assert response.status_code == 200, response.data[:200]
        return response.data

    np.testing.assert_allclose(np.frombuffer(get("/tensor"), np.float32).reshape(emb.shape), emb, rtol=1e-6)
    metadata = get("/metadata").decode().splitlines()
    assert metadata[0] == "label\tclass\tpath" and len(metadata) == len(emb) + 1
    assert all(len(line.split("\t")) == 3 for line in metadata)  # the tab in a file name did not add a column
    sprite = tf.io.decode_png(get("/sprite_image")).numpy()
    side = math.ceil(math.sqrt(len(emb)))
    assert sprite.shape == (side * embedding.sprite.single_image_dim[1], side * embedding.sprite.single_image_dim[0], 3)


@pytest.mark.slow  # the one bt-embed subprocess (module fixture)
def test_bad_images_are_skipped_and_reported(embedded):
    out, proc, files = embedded
    with open(out / "skipped.tsv", encoding="utf-8") as f:
        skipped = [line.rstrip("\n").split("\t") for line in f]
    assert [s[0] for s in skipped] == [files["broken"]] and "JPEG" in skipped[0][1]
    assert "skipped 1 of 15 files" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--duplicates", "2"], "expected a cosine similarity in [-1, 1]"),
        (["--neighbors", "0"], "--neighbors"),
        (["--query", "x.jpg"], "--query needs --neighbors K"),
        (["--neighbors", "2", "--query", "/no/such.jpg"], "--query /no/such.jpg: no such file"),
        (["--out", "gs://bucket/emb"], "give a local directory"),
        (["--encoder", "/no/such.keras"], "--encoder /no/such.keras: no such file"),
        (["--overwrite-nothing"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_are_one_line_errors_with_exit_2(args, message, tmp_path, capsys):
    from bt_keras.cli.embed import main

    argv = ["folder:/tmp", "--out", str(tmp_path / "o"), *args]
    if "--encoder" not in args:
        argv += ["--run", str(tmp_path)]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("bt-embed: error:")


@pytest.mark.slow  # the one bt-embed subprocess (module fixture)
def test_existing_embeddings_are_not_replaced_without_overwrite(embedded, capsys):
    from bt_keras.cli.embed import main

    out, _, _ = embedded
    before = (out / "embeddings.npy").read_bytes()
    code = main(["folder:/tmp", "--run", str(out), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--overwrite" in err and (out / "embeddings.npy").read_bytes() == before


def test_index_quoting_cannot_be_spoofed(tmp_path):
    from bt_keras.embed import EmbeddingWriter, read_index

    w = EmbeddingWriter(str(tmp_path), capacity=4, dim=2)
    odd = ['a"b.jpg', "c\nd.jpg", "e\tf.jpg"]
    w.add(np.zeros([3, 2]), [5, 6, 7], odd, [-1, -1, -1], ["", "", ""])
    assert w.close() == 3
    assert [r["path"] for r in read_index(str(tmp_path))] == odd
    assert np.load(tmp_path / "embeddings.npy").shape == (3, 2)  # re-packed to the rows written
    assert len(list(csv.reader(io.StringIO((tmp_path / "index.tsv").read_text()), delimiter="\t"))) == 4


@pytest.mark.slow  # an ONNX conversion
def test_an_onnx_encoder_embeds_like_keras(tmp_path):
    import bt_keras
    from bt_keras.export import export_encoder
    from bt_keras.frozen import load_frozen_encoder

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()]
    )
    images = np.random.default_rng(0).integers(0, 256, [9, 20, 24, 3], dtype=np.uint8)
    c = make_contract(SIZE)
    want = bt_keras.embed_source(images, model, str(tmp_path / "keras"), contract=c, batch_size=4).embeddings()
    result = export_encoder(model, tmp_path / "export", SIZE, formats=("onnx",))
    frozen = load_frozen_encoder(onnx=str(result.onnx_path))  # the contract from its metadata
    assert frozen.contract == c and frozen.numpy_fn is not None
    got = bt_keras.embed_source(images, frozen, str(tmp_path / "onnx"), batch_size=4)
    np.testing.assert_allclose(got.embeddings(), want, rtol=1e-4, atol=1e-5)
    assert [r["path"] for r in got.index()] == [f"arrays#{i}" for i in range(9)]
