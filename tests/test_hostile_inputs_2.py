"""Hostile inputs and faults, round two: bt-embed, WebP, HDF5 weights, locks, the export clients.

Each case is a real file or a real process built here; bombs run in one
subprocess under an address-space limit (``RLIMIT_AS``) that decoding or
reading them would exceed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_hostile_inputs import webp_bomb

from bt_keras.contract import make_contract

REPO = Path(__file__).resolve().parents[1]


def _colour_folder(root: Path, n: int) -> dict:
    """``n`` PNGs of distinct flat colours under ``root/c``; {path: colour}."""
    (root / "c").mkdir(parents=True)
    colours = {}
    for i in range(n):
        colour = np.array([10 + 20 * i, 200 - 10 * i, 7 * i], np.uint8)
        path = root / "c" / f"{i:03d}.png"
        path.write_bytes(tf.io.encode_png(np.broadcast_to(colour, [8, 8, 3])).numpy())
        colours[str(path)] = colour
    return colours


def _mean_encoder():
    """The mean colour of the (unnormalised, mean 0 std 1) image: rows say which file they came from."""
    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])


def _rows(out: Path) -> list:
    with open(out / "index.tsv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_bt_embed_lists_a_folder_once_and_carries_paths_with_rows(tmp_path):
    from bt_keras.embed import embed_source

    colours = _colour_folder(tmp_path / "src", 12)
    contract = make_contract(8, mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255), crop_fraction=1.0)
    added = []

    def progress(done, total):
        # A file that sorts first appears while the folder is being embedded.
        if not added:
            late = tmp_path / "src" / "c" / "000-late.png"
            late.write_bytes(tf.io.encode_png(np.full([8, 8, 3], 255, np.uint8)).numpy())
            added.append(late)

    out = tmp_path / "out"
    result = embed_source(
        f"folder:{tmp_path / 'src'}", _mean_encoder(), out, contract=contract, batch_size=4, progress=progress
    )
    assert added and result.num_images == 12
    emb, rows = np.load(out / "embeddings.npy"), _rows(out)
    assert len(rows) == 12
    for r in rows:
        np.testing.assert_allclose(emb[int(r["row"])], colours[r["path"]], atol=0.5)
    # The thumbnails come from the same listing: row 0 is 000.png, not the late file.
    view = result._views([int(rows[0]["uid"])], 8)[0]
    np.testing.assert_array_equal(view[0, 0], colours[rows[0]["path"]])


def test_a_carriage_return_in_a_file_name_cannot_add_a_row(tmp_path):
    from bt_keras.embed import EmbeddingWriter, read_index

    w = EmbeddingWriter(str(tmp_path), capacity=3, dim=2)
    names = ["a\rb.jpg", "plain.jpg", "c\r\nd.jpg"]
    w.add(np.zeros([3, 2]), [0, 1, 2], names, [-1, -1, -1], ["", "\r", ""])
    assert w.close() == 3
    assert [r["path"] for r in read_index(str(tmp_path))] == names
    assert [r["class"] for r in read_index(str(tmp_path))] == ["", "\r", ""]


def _webp(height, width, channels=3, **kw) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, [height, width, channels], dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="WEBP", **kw)
    return buf.getvalue()


def test_webp_sizes_are_read_from_every_chunk_kind_and_bombs_refused():
    from bt_keras.data.validation import QUICK_REASONS, quick_check, sniff
    from bt_keras.preprocess import decode_rgb, header_size

    cases = {
        b"VP8 ": _webp(37, 53, quality=80),
        b"VP8L": _webp(37, 53, lossless=True),
        b"VP8X": _webp(37, 53, channels=4, quality=80),  # with alpha (TensorFlow decodes it to RGBA only)
    }
    for chunk, data in cases.items():
        assert data[12:16] == chunk and sniff(data) == "WebP"
        assert header_size(tf.constant(data)).numpy().tolist() == [37, 53]
        if chunk != b"VP8X":
            assert decode_rgb(tf.constant(data)).shape == (37, 53, 3)
    bomb = webp_bomb(16383, 16383)
    assert len(bomb) == 28 and header_size(tf.constant(bomb)).numpy().tolist() == [16383, 16383]
    assert QUICK_REASONS[int(quick_check(tf.constant(bomb)))].startswith("too large")
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
        decode_rgb(tf.constant(bomb))
    assert decode_rgb(tf.constant(webp_bomb(5, 7))).shape == (5, 7, 3)  # the bomb's bitstream is real
    # A header whose size cannot be read is refused, not decoded unbounded.
    with pytest.raises(tf.errors.InvalidArgumentError, match="image size unreadable"):
        decode_rgb(tf.constant(b"RIFF\x10\0\0\0WEBPVP8?" + b"\0" * 20))


def test_a_lock_naming_this_process_or_not_a_lock_is_stale(tmp_path, caplog):
    import socket

    from bt_keras.errors import RunLocked
    from bt_keras.run_lock import RunDirectoryLock

    run = tmp_path / "run"
    run.mkdir()
    lock = run / ".lock"
    # What a restarted container leaves: this host, this very PID, a lock nobody here holds.
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    with RunDirectoryLock(run) as held:
        assert held.held
        with pytest.raises(RunLocked, match=f"in use by process {os.getpid()}"):
            RunDirectoryLock(run).acquire()  # but one this process does hold is still refused
    for junk in ("", "[1]", '"abc"', "null", "1e300", '{"host": "h", "pid": 1e300}', "{", "\xff"):
        lock.write_text(junk, encoding="latin-1")
        caplog.clear()
        with caplog.at_level("WARNING", logger="bt_keras"), RunDirectoryLock(run) as held:
            assert held.holder()["pid"] == os.getpid()
        assert "is empty or not a lock" in caplog.text, junk
        assert os.listdir(run) == []


# ---- bt-embed publishes its outputs as bt-export does


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def embed_case(tmp_path):
    """A folder of 6 images, a mean-colour encoder file with its contract, and ``run(out, *flags)`` of bt-embed."""
    from bt_keras.cli.embed import main

    _colour_folder(tmp_path / "src", 6)
    encoder = tmp_path / "enc.keras"
    _mean_encoder().save(encoder)

    def run(out, *flags, capsys=None):
        argv = [f"folder:{tmp_path / 'src'}", "--encoder", str(encoder), "--image-size", "8", "--out", str(out)]
        try:
            code = main([*argv, "--crop-fraction", "1", *map(str, flags)])
        except SystemExit as e:
            code = e.code
        return code

    return tmp_path, run


def test_bt_embed_publishes_all_or_nothing(embed_case, capsys):
    import signal

    from bt_keras.embed.api import _out_lock

    tmp_path, run = embed_case
    out = tmp_path / "emb"
    assert run(out, "--duplicates", "0.99", "--projector") == 0
    assert sorted(os.listdir(tmp_path)) == ["emb", "enc.keras", "src"]
    assert {"duplicates.tsv", "projector", "embeddings.npy", "index.tsv"} <= set(os.listdir(out))
    before = (out / "embeddings.npy").read_bytes()
    capsys.readouterr()

    # A second run into the same --out while one writes it: refused in one line.
    with _out_lock(out):
        assert run(out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is being written by another bt-embed (process" in err, err

    # SIGTERM half-way through an --overwrite: one line, 130, the earlier output untouched, no temporaries.
    def stop(result):
        os.kill(os.getpid(), signal.SIGTERM)

    from bt_keras.embed import api

    real = api._embed_into

    def embed_then_stop(*args, **kwargs):
        result = real(*args, **kwargs)
        stop(result)
        return result

    api._embed_into = embed_then_stop
    try:
        assert run(out, "--overwrite") == 130
    finally:
        api._embed_into = real
    assert capsys.readouterr().err == "bt-embed: interrupted\n"
    assert (out / "embeddings.npy").read_bytes() == before and (out / "duplicates.tsv").exists()
    assert sorted(os.listdir(tmp_path)) == ["emb", "enc.keras", "src"]

    # --overwrite replaces every output: no duplicates.tsv or projector/ of the earlier run stays;
    # temporaries a killed run left (its pid is gone) are removed.
    dead = _dead_pid()
    (tmp_path / f".emb.bt-embed-tmp-{dead}-x1").mkdir()
    (tmp_path / f".emb.bt-embed-old-{dead}-x2").write_text("old")
    assert run(out, "--overwrite") == 0
    assert sorted(os.listdir(out)) == [
        *["ann.faiss", "ann.json"],  # the nearest-neighbour index, built with the embeddings
        *["embeddings.json", "embeddings.npy", "index.tsv", "skipped.tsv"],
    ]
    assert sorted(os.listdir(tmp_path)) == ["emb", "enc.keras", "src"]


# ---- the ONNX client and --onnx encoders; bt-export --overwrite


def _onnx_model(path: Path, in_shape, out_shape, op: str) -> Path:
    """A tiny ONNX model with bt-export's metadata: Identity (4-D out) or ReduceMean over H, W."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Identity", ["images"], ["embedding"])]
    if op == "mean":
        nodes = [helper.make_node("ReduceMean", ["images"], ["embedding"], axes=[1, 2], keepdims=0)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    contract = make_contract(8, crop_fraction=1.0)
    meta = {
        "preprocessing": contract.to_json(),
        "image_size": "8",
        "mean": json.dumps(list(contract.mean)),
        "std": json.dumps(list(contract.std)),
        "crop_fraction": "1.0",
        "layout": "NHWC",
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def _onnx_client():
    sys.path.insert(0, str(REPO / "export"))
    try:
        import onnx_client
    finally:
        sys.path.pop(0)
    return onnx_client


def _one_line_exit_2(main, argv, capsys, prog: str) -> str:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"{prog}: error: ") and err.count("\n") == 1, (code, err)
    assert "Traceback" not in err
    return err


def test_onnx_models_of_the_wrong_shape_are_one_line(tmp_path, capsys):
    from bt_keras.cli.embed import main as embed_main
    from bt_keras.cli.eval import main as eval_main

    four_d = _onnx_model(tmp_path / "4d.onnx", ["batch", 8, 8, 3], ["batch", 8, 8, 3], "identity")
    batch_one = _onnx_model(tmp_path / "b1.onnx", [1, 8, 8, 3], [1, 3], "mean")
    good = _onnx_model(tmp_path / "ok.onnx", ["batch", 8, 8, 3], ["batch", 3], "mean")
    _colour_folder(tmp_path / "src", 2)
    png = tmp_path / "ok.png"
    png.write_bytes(tf.io.encode_png(np.zeros([8, 8, 3], np.uint8)).numpy())
    client = _onnx_client()
    for model in (four_d, batch_one):
        err = _one_line_exit_2(
            embed_main,
            [f"folder:{tmp_path / 'src'}", "--onnx", str(model), "--out", str(tmp_path / "e")],
            capsys,
            "bt-embed",
        )
        assert "expected images [batch, S, S, 3] (any batch) to embeddings [batch, dim]" in err
        argv = [
            "--onnx",
            str(model),
            "--train-data",
            f"folder:{tmp_path / 'src'}",
            "--test-data",
            f"folder:{tmp_path / 'src'}",
        ]
        assert "(any batch)" in _one_line_exit_2(eval_main, argv, capsys, "bt-eval")
        assert "(any batch)" in _one_line_exit_2(client.main, [str(model), str(png)], capsys, "onnx_client")
    # The ONNX client: --batch, --out in a missing folder, TIFF (the SavedModel refuses it too).
    assert "--batch" in _one_line_exit_2(client.main, [str(good), str(png), "--batch", "-1"], capsys, "onnx_client")
    err = _one_line_exit_2(
        client.main, [str(good), str(png), "--out", str(tmp_path / "no/x.npy")], capsys, "onnx_client"
    )
    assert "does not exist" in err
    tiff = tmp_path / "a.tif"
    Image.fromarray(np.zeros([8, 8, 3], np.uint8)).save(tiff)
    assert "not a JPEG, PNG, GIF, BMP or WebP" in _one_line_exit_2(
        client.main, [str(good), str(tiff)], capsys, "onnx_client"
    )
    assert client.main([str(good), str(png), "--out", str(tmp_path / "x.npy")]) == 0
    assert np.load(tmp_path / "x.npy").shape == (1, 3)


@pytest.mark.slow  # two small exports (ONNX conversion)
def test_export_limits_reach_the_onnx_client_and_overwrite_leaves_no_old_format(tmp_path, capsys):
    from bt_keras import encoders
    from bt_keras.export import export_encoder

    out = tmp_path / "ex"
    enc = encoders.small_cnn(widths=(4,))
    result = export_encoder(enc, out, 16, crop_fraction=1.0, max_image_pixels=5000)
    client = _onnx_client().OnnxEncoder(str(result.onnx_path))
    assert client.max_pixels == 5000 and client.metadata["max_image_pixels"] == "5000"
    big = tf.io.encode_png(np.zeros([80, 80, 3], np.uint8)).numpy()  # 6400 pixels: the SavedModel refuses it
    with pytest.raises(ValueError, match="image too large"):
        client.embed_bytes([big])
    assert client.embed_bytes([tf.io.encode_png(np.zeros([70, 70, 3], np.uint8)).numpy()]).shape == (1, 4)
    assert (out / "onnx" / "encoder.onnx").exists()
    # Fewer formats with --overwrite: the previous model's ONNX file goes, the report names the new one.
    export_encoder(enc, out, 16, formats=("saved_model",), crop_fraction=1.0, overwrite=True)
    assert not (out / "onnx" / "encoder.onnx").exists()
    assert json.loads((out / "export_report.json").read_text())["formats"] == ["saved_model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]


def test_bt_embed_and_bt_eval_apply_the_runs_pixel_limit(tmp_path, capsys):
    from bt_keras.cli.embed import main as embed_main
    from bt_keras.cli.eval import main as eval_main

    run = tmp_path / "run"
    run.mkdir()
    _mean_encoder().save(run / "encoder.keras")
    (run / "preprocessing.json").write_text(make_contract(8, crop_fraction=1.0).to_json())
    (run / "config.yaml").write_text("data:\n  max_image_pixels: 100\n")
    for c in ("a", "b"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i, side in enumerate((8, 8, 11)):  # 121 pixels: above the run's limit
            png = tf.io.encode_png(np.full([side, side, 3], 40 * i, np.uint8)).numpy()
            (tmp_path / "src" / c / f"{i}.png").write_bytes(png)
    src = f"folder:{tmp_path / 'src'}"
    argv = [src, "--run", str(run), "--out", str(tmp_path / "f"), "--seed", "-1"]
    assert "expected an integer from 0 to 2**32-1" in _one_line_exit_2(embed_main, argv, capsys, "bt-embed")
    assert embed_main([src, "--run", str(run), "--out", str(tmp_path / "e")]) == 0
    with open(tmp_path / "e" / "skipped.tsv", encoding="utf-8") as f:
        reasons = [line.split("\t")[1] for line in f.read().splitlines()]
    assert len(reasons) == 2 and all("more than data.max_image_pixels (100)" in r for r in reasons), reasons
    assert eval_main(["--run", str(run), "--train-data", src, "--test-data", src, "--k", "1"]) == 0
    assert json.loads((run / "eval_report.json").read_text())["num_train"] == 4


# ---- HDF5 weights that declare gigabytes in a few kilobytes


def _h5_bomb(weights: bytes, side: int = 40000) -> bytes:
    """``weights`` (a Keras ``.weights.h5``) with its largest dataset redeclared as ``side``² float32, gzip-chunked.

    Nothing is written into the new dataset, so the file stays a few KB; reading it allocates side² × 4 bytes.
    """
    import h5py

    buf = io.BytesIO(weights)
    with h5py.File(buf, "a") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        target = max(names, key=lambda n: f[n].size)
        del f[target]
        f.create_dataset(target, shape=(side, side), dtype="float32", chunks=(256, 256), compression="gzip")
    return buf.getvalue()


_HDF5_UNDER_A_MEMORY_LIMIT = textwrap.dedent(
    """
    import json, resource, sys
    import keras
    from bt_keras import backbones, checkpointing, encoders
    from bt_keras.errors import CheckpointUnreadable, UserError
    from bt_keras.saving import load_encoder

    keras_file, weights_file, checkpoint, preset = sys.argv[1:5]
    enc = encoders.small_cnn(widths=(4,))
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    model.compile(optimizer="sgd", loss="mse")
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 1500 * 2**20, vm + 1500 * 2**20))  # each bomb declares 6.4 GB
    out = {}
    for key, call in [
        ("keras", lambda: load_encoder(keras_file)),
        ("init_weights", lambda: backbones.load_initial_weights(enc, weights_file, "small_cnn")),
        ("checkpoint", lambda: checkpointing.restore_checkpoint(model, checkpoint)),
        ("preset", lambda: backbones._check_preset_weights(preset, "model.encoder keras_hub:" + preset)),
    ]:
        try:
            call()
            out[key] = "read"
        except (UserError, CheckpointUnreadable) as e:
            out[key] = str(e)
        except Exception as e:
            out[key] = type(e).__name__ + ": " + str(e)[:200]
    print(json.dumps(out), flush=True)
    """
)


@pytest.mark.slow  # one subprocess (TensorFlow import) for every HDF5 bomb
def test_hdf5_datasets_declaring_gigabytes_are_refused_before_reading(tmp_path):
    from bt_keras import encoders

    enc = encoders.small_cnn(widths=(4,))
    enc.save(tmp_path / "good.keras")
    with zipfile.ZipFile(tmp_path / "good.keras") as z, zipfile.ZipFile(tmp_path / "bomb.keras", "w") as out:
        for m in z.infolist():
            data = z.read(m)
            out.writestr(m, _h5_bomb(data) if m.filename == "model.weights.h5" else data)
    enc.save_weights(tmp_path / "init.weights.h5")
    (tmp_path / "init.weights.h5").write_bytes(_h5_bomb((tmp_path / "init.weights.h5").read_bytes()))
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    model.save_weights(tmp_path / "latest.weights.h5")
    (tmp_path / "latest.weights.h5").write_bytes(_h5_bomb((tmp_path / "latest.weights.h5").read_bytes()))
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "model.weights.h5").write_bytes((tmp_path / "init.weights.h5").read_bytes())
    assert (tmp_path / "bomb.keras").stat().st_size < 40_000
    env = dict(os.environ, MALLOC_ARENA_MAX="2", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    args = [tmp_path / "bomb.keras", tmp_path / "init.weights.h5", tmp_path / "latest.weights.h5", tmp_path / "preset"]
    proc = subprocess.run(
        [sys.executable, "-c", _HDF5_UNDER_A_MEMORY_LIMIT, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr[-3000:]
    out = json.loads(lines[-1])
    declares = "declares (40000, 40000) float32 (6,400,000,000 bytes), more than the file's"
    assert out["keras"].startswith(f"cannot load {tmp_path / 'bomb.keras'}: 'model.weights.h5': its dataset"), out
    assert out["init_weights"].startswith(f"model.init_weights: {tmp_path / 'init.weights.h5'}: its dataset"), out
    assert out["checkpoint"].startswith(f"checkpoint {tmp_path / 'latest.weights.h5'} cannot be read"), out
    assert out["preset"].startswith("model.encoder keras_hub:"), out
    assert all(declares in out[k] for k in ("keras", "init_weights", "preset")), out
    assert "declares (40000, 40000) float32" in out["checkpoint"]


def test_a_checkpoint_fingerprint_that_is_not_an_object_is_one_line(tmp_path):
    import h5py

    from bt_keras import checkpointing
    from bt_keras.errors import CheckpointUnreadable

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    path = str(tmp_path / "latest.weights.h5")
    checkpointing.save_checkpoint(model, path, checkpointing.state_fingerprint(model))
    for value in (5, "5", "[1]"):
        with h5py.File(path, "a") as f:
            f.attrs[checkpointing.FINGERPRINT_ATTR] = value
        with pytest.raises(CheckpointUnreadable, match="attribute is not a JSON object"):
            checkpointing.restore_checkpoint(model, path)


# ---- bt-data: one shard open at a time; SIGTERM


def test_bt_data_writes_more_shards_than_open_files_allow(tmp_path):
    import resource

    from bt_keras.data import write_tfrecords

    (tmp_path / "src").mkdir()
    png = tf.io.encode_png(np.zeros([4, 4, 3], np.uint8)).numpy()
    for i in range(160):
        (tmp_path / "src" / f"{i:03d}.png").write_bytes(png)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 100, hard))  # fewer than the 160 shards
    try:
        info = write_tfrecords(f"folder:{tmp_path / 'src'}", str(tmp_path / "out"), num_shards=160)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert info["num_examples"] == 160 and set(info["counts"].values()) == {1}
    assert len(list((tmp_path / "out").glob("train-*-of-00160.tfrecord"))) == 160


# ---- one line instead of a traceback


def _train_error(argv, capsys) -> str:
    from bt_keras.cli import train as train_cli

    with pytest.raises(SystemExit) as stop:
        train_cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, (stop.value.code, err)
    return err


def test_configs_that_never_end_or_repeat_a_section_are_one_line(tmp_path, capsys):
    assert "is not a regular file" in _train_error(["--config", "/dev/zero"], capsys)
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  steps: 1\ndata:\n  image_size: 32\ntrain:\n  steps: 2\n")
    err = _train_error(["--config", str(twice)], capsys)
    assert "line 5: the key 'train' appears twice in one mapping (first on line 1)" in err
    huge = tmp_path / "huge.yaml"
    huge.write_text(f"data:\n  max_image_pixels: {2**70}\n")
    assert "data.max_image_pixels: must be at most 2**63-1" in _train_error(["--config", str(huge)], capsys)


def test_bt_embed_odd_class_names_backends_and_huge_queries(embed_case, tmp_path, capsys, monkeypatch):
    from test_hostile_inputs import png_bomb

    root, run = embed_case
    (root / "src" / "c").rename(root / "src" / "$\\bogus$")  # mathtext in a neighbour grid title
    bomb = tmp_path / "query.png"
    bomb.write_bytes(png_bomb(20480, 20000))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert run(tmp_path / "e1", "--neighbors", "2") == 0
    err = capsys.readouterr().err
    assert err == "bt-embed: runs on TensorFlow; KERAS_BACKEND='jax' ignored\n", err
    assert (tmp_path / "e1" / "neighbors.png").is_file()
    monkeypatch.delenv("KERAS_BACKEND")
    assert run(tmp_path / "e2", "--neighbors", "2", "--query", bomb) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bt-embed: error: --query {bomb}: too large: 20000x20480 = 409,600,000 pixels"), err
    assert err.count("\n") == 1 and not (tmp_path / "e2").exists()


def test_bt_export_and_bt_eval_refuse_bad_inputs_in_one_line(tmp_path, capsys, monkeypatch):
    from bt_keras.cli.eval import main as eval_main
    from bt_keras.cli.export import main as export_main

    enc = tmp_path / "enc.keras"
    _mean_encoder().save(enc)
    weird = tmp_path / "weird.keras"
    with zipfile.ZipFile(enc) as z, zipfile.ZipFile(weird, "w") as out:
        for m in z.infolist():
            out.writestr(m, b'{"config": []}' if m.filename == "config.json" else z.read(m))
    out = str(tmp_path / "x")
    cases = [
        ([weird], "no preprocessing contract found"),
        ([weird, "--image-size", "8"], "cannot load"),
        ([enc, "--image-size", "8", "--max-image-pixels", str(2**70)], "expected an integer from 1 to 2**63-1"),
        ([enc, "--image-size", "8", "--max-image-pixels", "63"], "max_image_pixels must be from 64 (the encoder's 8x8"),
        ([enc, "--image-size", "8", "--name", "n" * 300], "--name must be at most 200 characters, got 300"),
    ]
    for extra, message in cases:
        err = _one_line_exit_2(export_main, ["--out", out, "--encoder", *map(str, extra)], capsys, "bt-export")
        assert message in err, err
    assert not os.path.exists(out)
    _colour_folder(tmp_path / "src", 2)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    src = f"folder:{tmp_path / 'src'}"
    argv = ["--encoder", str(enc), "--image-size", "8", "--train-data", src, "--test-data", src, "--protocol", "knn"]
    assert eval_main([*argv, "--report", str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().err.startswith("bt-eval: runs on TensorFlow; KERAS_BACKEND='jax' ignored\n")
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # bt-eval switched it
    assert export_main(["--out", out, "--encoder", str(enc), "--image-size", "8", "--formats", "saved_model"]) == 0
    assert capsys.readouterr().err == "bt-export: runs on TensorFlow; KERAS_BACKEND='jax' ignored\n"


def test_tfserving_client_answers_odd_replies_in_one_line(tmp_path, capsys):
    import http.server
    import threading

    replies = {"/v1/models/text:predict": (200, b"<html>not json</html>"), "/v1/models/list:predict": (400, b"[1, 2]")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            code, body = replies[self.path]
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.path.insert(0, str(REPO / "export"))
    try:
        import tfserving_client
    finally:
        sys.path.pop(0)
    png = tmp_path / "a.png"
    png.write_bytes(tf.io.encode_png(np.zeros([4, 4, 3], np.uint8)).numpy())
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        for model, message in [
            ("text", "no JSON 'predictions' list): <html>not json</html>"),
            ("list", "HTTP 400: [1, 2]"),
        ]:
            assert tfserving_client.main([str(png), "--url", url, "--model", model]) == 2
            err = capsys.readouterr().err
            assert err.startswith("tfserving_client: error: ") and message in err and err.count("\n") == 1, err
    finally:
        server.shutdown()
    with pytest.raises(SystemExit) as stop:
        tfserving_client.main([str(png), "--version", "0"])
    assert stop.value.code == 2 and "expected an integer from 1 to 2**63-1, got '0'" in capsys.readouterr().err


def test_resuming_a_checkpoint_of_another_backend_names_the_backend(tmp_path):
    import h5py

    from bt_keras import checkpointing
    from bt_keras.errors import UserError

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    path = str(tmp_path / "latest.weights.h5")
    fingerprint = checkpointing.state_fingerprint(model)
    checkpointing.save_checkpoint(model, path, {**fingerprint, "keras backend": "jax", "variables": "5 variables"})
    with pytest.raises(UserError, match="it was written on the 'jax' backend, this run is on 'tensorflow'"):
        checkpointing.restore_checkpoint(model, path)
    with h5py.File(path, "a") as f:  # a checkpoint of before the backend was recorded: as before
        f.attrs[checkpointing.FINGERPRINT_ATTR] = json.dumps({"variables": fingerprint["variables"]})
    assert checkpointing.restore_checkpoint(model, path) == 0


def test_bt_data_on_sigterm_says_interrupted_and_leaves_no_staging(tmp_path, capsys):
    import signal

    from bt_keras.cli.data import main
    from bt_keras.data import tfrecords

    _colour_folder(tmp_path / "src", 4)
    real = tfrecords._write_shards

    def write_then_stop(*args, **kwargs):
        counts = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the real signal, after the shards, before publishing
        return counts

    tfrecords._write_shards = write_then_stop
    try:
        code = main([f"folder:{tmp_path / 'src'}", str(tmp_path / "out"), "--shards", "2"])
    finally:
        tfrecords._write_shards = real
    assert code == 130 and capsys.readouterr().err.endswith("bt-data: interrupted\n")
    assert os.listdir(tmp_path / "out") == []
