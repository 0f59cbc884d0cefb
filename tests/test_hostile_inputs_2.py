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
