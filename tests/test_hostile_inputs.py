"""Hostile inputs: decompression bombs, animations, odd files and names, partial outputs.

Every case is a real file built here (bombs are small compressed PNGs with
huge headers, loops are real symbolic links, the FIFO is a real FIFO). Where
memory is the point, a subprocess runs under an address-space limit
(``RLIMIT_AS``) that the unguarded decode would exceed.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bt_keras import data
from bt_keras.data.validation import parse_tsv_field
from bt_keras.preprocess import decode_rgb, gif_first_frame, header_size

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- #
# Files built for the tests
# --------------------------------------------------------------------------- #


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(height: int, width: int) -> bytes:
    """A valid grayscale PNG of zeros: ~400 KB at 20480 × 20000, which decodes to 1.2 GB of RGB.

    Built in milliseconds: after a full flush, deflate encodes each 64-row
    chunk of zeros to the same bytes, so one encoded chunk is repeated; the
    Adler-32 of n zero bytes is ``(n mod 65521) << 16 | 1``.
    """
    assert height % 64 == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    rows = b"\0" * (width + 1) * 64  # a filter byte and the pixels, 64 rows
    first = compressor.compress(rows) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(rows) + compressor.flush(zlib.Z_FULL_FLUSH)
    deflate = first + again * (height // 64 - 1) + compressor.flush()
    adler = (((width + 1) * height % 65521) << 16) | 1
    idat = b"\x78\xda" + deflate + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_header(height: int, width: int) -> bytes:
    """Only a PNG signature and IHDR: enough for a refusal, undecodable otherwise."""
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def _gif(frames: list, **kw) -> bytes:
    buf = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(buf, format="GIF", save_all=len(images) > 1, append_images=images[1:], **kw)
    return buf.getvalue()


def many_frame_gif(frames: int, side: int) -> bytes:
    """A GIF of ``frames`` constant ``side``² frames (each a few KB of LZW): decoding all costs frames × side² × 3."""
    one = _gif([np.full([side, side, 3], 40, np.uint8)])
    start = one.index(b"\x21\xf9") if b"\x21\xf9" in one else one.index(b"\x2c")
    block = one[start:-1]  # graphic control extension + image block, without the trailer
    return one[:start] + block * frames + b"\x3b"


def webp_bomb(height: int, width: int) -> bytes:
    """A lossless WebP (VP8L) of one colour: 28 bytes whatever its size (up to 16383 × 16383).

    Every prefix code is a simple code of one symbol, so each pixel costs no bits.
    """
    bits = []

    def put(value, count):
        bits.extend((value >> i) & 1 for i in range(count))

    put(width - 1, 14), put(height - 1, 14), put(0, 4)  # size, no alpha, version 0
    put(0, 3)  # no transform, no colour cache, no meta prefix codes
    for _ in range(5):  # green, red, blue, alpha, distance: simple code, 1 symbol (0), 1 bit
        put(1, 1), put(0, 3)
    bits += [0] * (-len(bits) % 8)
    body = b"\x2f" + bytes(sum(b << i for i, b in enumerate(bits[k : k + 8])) for k in range(0, len(bits), 8))
    body += b"\0" * (len(body) % 2)
    chunk = b"VP8L" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def huge_canvas_gif(side: int = 60000) -> bytes:
    """A 1-pixel-frame GIF whose logical screen says ``side`` × ``side`` (the decoder allocates the canvas)."""
    gif = bytearray(_gif([np.zeros([1, 1, 3], np.uint8)]))
    gif[6:10] = struct.pack("<HH", side, side)
    return bytes(gif)


def _png(array) -> bytes:
    return tf.io.encode_png(array).numpy()


def _jpeg_with_size(height: int, width: int) -> bytes:
    """A small real JPEG whose SOF0 marker announces ``height`` × ``width``."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros([8, 8, 3], np.uint8)).save(buf, "JPEG")
    jpeg = bytearray(buf.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


# --------------------------------------------------------------------------- #
# Class 1: sizes from headers, refused before decoding
# --------------------------------------------------------------------------- #


def test_header_sizes_are_read_without_decoding():
    assert header_size(tf.constant(png_header(20000, 30000))).numpy().tolist() == [20000, 30000]
    assert header_size(tf.constant(huge_canvas_gif(60000))).numpy().tolist() == [60000, 60000]
    bmp = io.BytesIO()
    Image.fromarray(np.zeros([7, 9, 3], np.uint8)).save(bmp, "BMP")
    assert header_size(tf.constant(bmp.getvalue())).numpy().tolist() == [7, 9]
    for junk in (b"", b"GIF8", b"\x89PNG\r\n\x1a\n", b"BM" + b"\xff" * 3, b"hello"):
        assert header_size(tf.constant(junk)).numpy().tolist() == [-1, -1]
    assert header_size(tf.constant(_jpeg_with_size(30000, 40000))).numpy().tolist() == [30000, 40000]
    rng = np.random.default_rng(0)
    for mode, kw in [
        ("RGB", {}),
        ("RGB", {"progressive": True}),
        ("L", {}),
        ("RGB", {"exif": b"Exif\0\0" + b"x" * 300}),
    ]:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, [13, 21, 3], dtype=np.uint8)).convert(mode).save(buf, "JPEG", **kw)
        jpeg = tf.constant(buf.getvalue())
        assert header_size(jpeg).numpy().tolist() == tf.io.extract_jpeg_shape(jpeg)[:2].numpy().tolist() == [13, 21]
    for junk in (b"\xff\xd8", b"\xff\xd8\xff\xe0\xff\xff", b"\xff\xd8\xff\xda" + b"\0" * 20):
        assert header_size(tf.constant(junk)).numpy().tolist() == [-1, -1]


@pytest.mark.parametrize(
    "make",
    [
        lambda: png_header(20000, 20000),
        lambda: huge_canvas_gif(60000),
        lambda: _jpeg_with_size(30000, 30000),
    ],
    ids=["png", "gif-canvas", "jpeg"],
)
def test_oversized_images_are_refused_before_decoding(make):
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
        decode_rgb(tf.constant(make()))


def test_a_real_bomb_is_a_valid_png():
    bomb = png_bomb(128, 64)
    assert decode_rgb(tf.constant(bomb)).shape == (128, 64, 3)
    assert header_size(tf.constant(png_bomb(20480, 20000))).numpy().tolist() == [20480, 20000]


def test_quick_validation_flags_bombs_from_their_headers():
    from bt_keras.data.validation import quick_check

    for bomb in (png_header(20000, 20000), huge_canvas_gif(60000), _jpeg_with_size(30000, 30000)):
        assert int(quick_check(tf.constant(bomb))) == 5  # "too large", then diagnosed with the exact size
    assert int(quick_check(tf.constant(_png(np.zeros([8, 8, 3], np.uint8))))) == 0


def test_the_limit_is_a_parameter():
    image = _png(np.zeros([100, 120, 3], np.uint8))
    assert decode_rgb(tf.constant(image), max_pixels=12_000).shape == (100, 120, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
        decode_rgb(tf.constant(image), max_pixels=11_999)


def test_only_the_first_gif_frame_is_decoded():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, [12, 10, 3], dtype=np.uint8) for _ in range(3)]
    gif = _gif(frames)
    first, size = gif_first_frame(tf.constant(gif))
    first = first.numpy()
    assert size.numpy().tolist() == [12, 10] and len(first) < len(gif) / 2
    assert tf.io.decode_gif(first).shape[0] == 1  # one frame left in the stream
    # Same pixels as the first frame of the full decode.
    np.testing.assert_array_equal(decode_rgb(tf.constant(gif)).numpy(), tf.io.decode_gif(gif)[0].numpy())
    # The rest of the stream is never read: garbage after the first image does not matter.
    corrupt = first[:-1] + b"\x21\xf9\x04" + b"\xff" * 64
    np.testing.assert_array_equal(decode_rgb(tf.constant(corrupt)).numpy(), tf.io.decode_gif(gif)[0].numpy())


# --------------------------------------------------------------------------- #
# Class 1 and 8: the exported models (one small export for the module)
# --------------------------------------------------------------------------- #

SIZE = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny encoder exported as SavedModel and ONNX; ``(saved_model dir, onnx file)``."""
    from bt_keras import encoders, export

    out = tmp_path_factory.mktemp("export") / "ex"
    result = export.export_encoder(encoders.small_cnn(widths=(4,)), out, SIZE, crop_fraction=1.0)
    return Path(result.saved_model_dir), Path(result.onnx_path)


_UNDER_A_MEMORY_LIMIT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    import tensorflow as tf
    from bt_keras import data
    from bt_keras.preprocess import decode_rgb

    saved_model, folder, bomb, gif, webp = sys.argv[1:6]
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    good = tf.io.encode_png(np.full([20, 24, 3], 7, np.uint8))
    serve(image_bytes=tf.stack([good]))  # warm: everything traced and allocated before the limit
    decode_rgb(good)

    def vm_bytes():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

    limit = vm_bytes() + 700 * 2**20  # a 20480 x 20000 RGB decode alone needs 1.2 GB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = {}
    try:
        serve(image_bytes=tf.constant([open(bomb, "rb").read()]))
        out["serving"] = "answered"
    except tf.errors.InvalidArgumentError as e:
        out["serving"] = "refused" if "image too large" in str(e) else str(e)[:300]
    try:
        serve(image_bytes=tf.constant([open(webp, "rb").read()]))
        out["serving_webp"] = "answered"
    except tf.errors.InvalidArgumentError as e:
        out["serving_webp"] = "refused" if "image too large" in str(e) else str(e)[:300]
    # What bt-train and bt-data run first: list, validate (decode every image once), cache.
    info = data.source_info("folder:" + folder)
    out["usable"] = info.num_examples
    out["skipped"] = info.skipped
    out["gif_first_frame"] = list(decode_rgb(tf.constant(open(gif, "rb").read())).shape)
    print(json.dumps(out), flush=True)
    # Control: the same limit stops the unguarded decode (so the limit above really binds).
    try:
        tf.io.decode_png(open(bomb, "rb").read(), channels=3)
        print("UNGUARDED DECODE FITS", flush=True)
    except (tf.errors.ResourceExhaustedError, MemoryError) as e:
        print("unguarded decode ran out of memory:", type(e).__name__, flush=True)
    try:
        tf.io.decode_image(open(webp, "rb").read(), channels=3, expand_animations=False)
        print("UNGUARDED WEBP DECODE FITS", flush=True)
    except (tf.errors.ResourceExhaustedError, MemoryError) as e:
        print("unguarded WebP decode ran out of memory:", type(e).__name__, flush=True)
    """
)


@pytest.mark.slow  # a subprocess that imports TensorFlow and loads the export
def test_bombs_cost_no_memory_in_serving_and_training(exported, tmp_path):
    """Serving refuses a bomb and training's validation skips it, within 700 MB more address space."""
    saved_model, _ = exported
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"ok{i}.png").write_bytes(_png(np.full([20, 24, 3], 30 * i, np.uint8)))
    bomb = png_bomb(20480, 20000)
    for name in ("bomb1.png", "bomb2.png"):
        (folder / name).write_bytes(bomb)
    (tmp_path / "bomb.png").write_bytes(bomb)
    (folder / "webp.png").write_bytes(webp_bomb(16383, 16383))  # 28 bytes of lossless WebP, 805 MB of RGB
    (tmp_path / "frames.gif").write_bytes(many_frame_gif(300, 1000))  # 900 MB if every frame is decoded
    env = dict(os.environ, MALLOC_ARENA_MAX="2", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    args = [str(saved_model), str(folder), str(tmp_path / "bomb.png"), str(tmp_path / "frames.gif")]
    args.append(str(folder / "webp.png"))
    proc = subprocess.run(
        [sys.executable, "-c", _UNDER_A_MEMORY_LIMIT, *args], capture_output=True, text=True, env=env, timeout=300
    )
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr[-3000:]
    out = json.loads(lines[0])
    assert out["serving"] == out["serving_webp"] == "refused"
    assert out["usable"] == 4
    rows = dict((Path(r[0]).name, r[1]) for r in out["skipped"])
    assert sorted(rows) == ["bomb1.png", "bomb2.png", "webp.png"]
    assert rows["bomb1.png"].startswith("too large: 20000x20480 = 409,600,000 pixels")
    assert rows["bomb2.png"].startswith("too large: 20000x20480 = 409,600,000 pixels")
    assert rows["webp.png"].startswith("too large: 16383x16383 = 268,402,689 pixels")
    assert out["gif_first_frame"] == [1000, 1000, 3]
    # Each control ran out of memory: as an exception, or (an allocation C++ cannot recover from) an abort.
    aborted = proc.returncode in (-6, -9)
    for control in ("unguarded decode", "unguarded WebP decode"):
        assert f"{control} ran out of memory" in proc.stdout or aborted, (proc.returncode, proc.stdout)
    assert "UNGUARDED DECODE FITS" not in proc.stdout and "UNGUARDED WEBP DECODE FITS" not in proc.stdout


# --------------------------------------------------------------------------- #
# Classes 1, 3, 5, 7: what a folder may hold
# --------------------------------------------------------------------------- #


@pytest.fixture
def hostile_folder(tmp_path):
    """A class folder with good images and everything that must be skipped, or visited once."""
    root = tmp_path / "photos"
    cats = root / "cats"
    cats.mkdir(parents=True)
    for i in range(3):
        (cats / f"ok{i}.png").write_bytes(_png(np.full([20, 24, 3], 40 * i, np.uint8)))
    (cats / "again").symlink_to(".")  # a loop: the folder inside itself
    (root / "all").symlink_to("cats")  # a second link to a real folder
    os.mkfifo(cats / "pipe.png")
    (cats / "zero.png").symlink_to("/dev/zero")
    (cats / "gone.png").symlink_to(cats / "nowhere.png")
    (cats / "a\ttab.png").write_bytes(_png(np.zeros([8, 8, 3], np.uint8)))  # usable: only the name is odd
    (cats / "evil\nfake.png\tnot an image: spoofed\n.png").write_bytes(b"not an image")
    os.close(os.open(os.fsencode(cats) + b"/caf\xe9.png", os.O_CREAT | os.O_WRONLY))  # not UTF-8
    (cats / "bomb.png").write_bytes(png_header(20000, 20000))
    (cats / "frames.gif").write_bytes(many_frame_gif(5, 16))
    return root


def test_folder_walk_skips_what_is_not_a_regular_image_file(hostile_folder, tmp_path):
    from bt_keras.data.validation import report_skipped

    # What training and bt-data see: the preparation (listing, validation) and its TSV.
    info = data.source_info(f"folder:{hostile_folder}", cache=True)
    assert info.num_examples == 5  # ok0-2, the tab name, the GIF's first frame: each once, no loop
    skipped_tsv = tmp_path / "skipped.tsv"
    report_skipped(info.skipped, info.num_examples, str(skipped_tsv))
    rows = [line.split("\t") for line in skipped_tsv.read_text(encoding="utf-8").splitlines()]
    assert all(len(r) == 2 for r in rows)  # no name adds a row or a field
    reasons = {os.path.basename(parse_tsv_field(path)): reason for path, reason in rows}
    assert reasons["pipe.png"] == "not a regular file (a FIFO): not opened"
    assert reasons["zero.png"] == "not a regular file (a character device): not opened"
    assert reasons["gone.png"] == "unreadable: dangling symbolic link"
    assert reasons["caf\udce9.png"].startswith("file name is not valid UTF-8")
    assert reasons["bomb.png"].startswith("too large: 20000x20000")
    assert reasons["evil\nfake.png\tnot an image: spoofed\n.png"].startswith("not an image")
    assert "caf\\xe9.png" in skipped_tsv.read_text(encoding="utf-8")  # the undecodable byte, escaped
    assert any(r.startswith("ignored: a directory already visited") for r in reasons.values())


def test_an_unreadable_file_in_the_size_sample_is_skipped_like_any_other(tmp_path):
    root = tmp_path / "few"
    root.mkdir()
    (root / "a_gone.png").symlink_to(root / "missing.png")  # first in the sort order: in the size sample
    (root / "b_unreadable.png").write_bytes(_png(np.zeros([8, 8, 3], np.uint8)))
    os.chmod(root / "b_unreadable.png", 0)
    for i in range(3):
        (root / f"c{i}.png").write_bytes(_png(np.full([8, 8, 3], i, np.uint8)))
    info = data.source_info(f"folder:{root}")
    assert info.num_examples == 3 + (os.geteuid() == 0)  # root reads mode-0 files
    assert dict((os.path.basename(p), r) for p, r in info.skipped)["a_gone.png"] == "unreadable: dangling symbolic link"


# --------------------------------------------------------------------------- #
# Classes 2 and 3: bt-data publishes whole; damaged TFRecords are reported
# --------------------------------------------------------------------------- #


def _bt_data(capsys, *args) -> tuple:
    from bt_keras.cli.data import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _names(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir())


def test_bt_data_replaces_an_output_only_as_a_whole(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.png").write_bytes(_png(np.full([8, 8, 3], i, np.uint8)))
    out = tmp_path / "out"
    assert _bt_data(capsys, src, out, "--shards", "4")[0] == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(first) == [f"train-0000{i}-of-00004.tfrecord" for i in range(4)] + [
        "train.bt-data.json",
        "train.skipped.tsv",
    ]

    code, _, err = _bt_data(capsys, src, out, "--shards", "2")  # refused: the first output is kept as it was
    assert code == 2 and "already holds a 'train' output" in err and "--overwrite" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first

    code, printed, _ = _bt_data(capsys, src, out, "--shards", "2", "--overwrite")
    assert code == 0 and f"{out}/train-*.tfrecord" in printed
    assert _names(out) == [f"train-0000{i}-of-00002.tfrecord" for i in range(2)] + [
        "train.bt-data.json",
        "train.skipped.tsv",
    ]  # no stale shard of the 4-shard output for the printed glob to pick up
    assert data.count_examples(f"tfrecord:{out}/train-*.tfrecord") == 6

    # Shards of two outputs under one glob are refused rather than mixed.
    (out / "train-00003-of-00004.tfrecord").write_bytes(first["train-00003-of-00004.tfrecord"])
    with pytest.raises(data.DataError, match="mixes shards of different bt-data outputs"):
        data.count_examples(f"tfrecord:{out}/train-*.tfrecord")


def _truncated_tfrecord(path: Path, records: int = 6) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(records):
            feats = {
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[_png(np.zeros([8, 8, 3], np.uint8) + i)])
                )
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - len(whole) // 4])  # the tail of the file is lost


def test_a_truncated_tfrecord_reports_its_lost_records(tmp_path, capsys):
    path = tmp_path / "photos.tfrecord"  # no sidecar: counted by reading
    _truncated_tfrecord(path)
    info = data.source_info(f"tfrecord:{path}")
    assert 0 < info.num_examples < 6
    ((where, reason),) = info.skipped
    assert where == str(path) and reason.startswith("corrupt or truncated TFRecord: the ")
    assert f"after record {info.num_examples} cannot be read" in reason

    # bt-data failing half-way (the damaged tail) publishes nothing and keeps an earlier output.
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.bt-data.json").write_text("{}")
    code, _, err = _bt_data(capsys, f"tfrecord:{path}", out, "--overwrite")
    assert code == 2 and "Nothing was published" in err and err.count("\n") == 1
    assert _names(out) == ["train.bt-data.json"]  # no partial shard, no staging directory left


# --------------------------------------------------------------------------- #
# Classes 1, 7, 8: the ONNX client and bt-eval answer in one line
# --------------------------------------------------------------------------- #


def _onnx_client():
    sys.path.insert(0, str(REPO / "export"))
    try:
        import onnx_client
    finally:
        sys.path.pop(0)
    return onnx_client


@pytest.mark.slow  # the module's one export (a few seconds), shared
def test_savedmodel_and_onnx_answer_hostile_requests_alike(exported):
    saved_model, onnx_path = exported
    loaded = tf.saved_model.load(str(saved_model))
    serve_float, serve_bytes = loaded.signatures["serve_float"], loaded.signatures["serving_default"]
    client = _onnx_client().OnnxEncoder(str(onnx_path))

    x = np.random.default_rng(0).normal(size=[3, SIZE, SIZE, 3]).astype(np.float32)
    x[1, 2, 3, 0] = np.nan
    x[2, 0, 0, 2] = np.inf
    for got in (serve_float(images=tf.constant(x))["embedding"].numpy(), client.embed_pixels(x)):
        assert np.isnan(got[1:]).all() and np.isfinite(got[0]).all()  # a NaN row per non-finite image, only there

    empty = np.zeros([0, SIZE, SIZE, 3], np.float32)
    assert serve_float(images=tf.constant(empty))["embedding"].shape == (0, 4)
    assert serve_bytes(image_bytes=tf.constant([], tf.string))["embedding"].shape == (0, 4)
    assert client.embed_pixels(empty).shape == (0, 4) and client.embed_bytes([]).shape == (0, 4)

    for bomb in (huge_canvas_gif(60000), png_bomb(20480, 20000), png_bomb(12800, 10000)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
            serve_bytes(image_bytes=tf.constant([bomb]))
        with pytest.raises(ValueError, match="image too large"):
            client.embed_bytes([bomb])
    gif = many_frame_gif(4, 16)  # both take the first frame
    np.testing.assert_allclose(
        serve_bytes(image_bytes=tf.constant([gif]))["embedding"].numpy(), client.embed_bytes([gif]), atol=1e-5
    )


@pytest.mark.slow  # the module's one export (a few seconds), shared
def test_onnx_client_errors_are_one_line(exported, tmp_path):
    _, onnx_path = exported
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(20480, 20000))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(onnx_path.read_bytes()[:1000])
    ok = tmp_path / "ok.png"
    ok.write_bytes(_png(np.zeros([20, 20, 3], np.uint8)))
    cases = [
        ([onnx_path, bomb], "image too large"),
        ([onnx_path, fifo], "not a regular file"),
        ([corrupt, ok], "not a loadable ONNX model"),
    ]
    script = "import sys; sys.path.insert(0, sys.argv[1]); import onnx_client; sys.exit(onnx_client.main(sys.argv[2:]))"
    for args, expected in cases:
        proc = subprocess.run(
            [sys.executable, "-c", script, str(REPO / "export"), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("onnx_client: error: ") and expected in proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow  # the module's one export (a few seconds), shared
def test_bt_eval_on_broken_models_is_one_line(exported, tmp_path, capsys):
    import keras

    from bt_keras.cli.eval import main

    saved_model, _ = exported
    broken = tmp_path / "sm"
    import shutil

    shutil.copytree(saved_model, broken)
    (broken / "saved_model.pb").write_bytes(b"\x0a\xff\xff not a SavedModel")
    run4d = tmp_path / "run4d"
    run4d.mkdir()
    inputs = keras.Input((SIZE, SIZE, 3))
    keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs)).save(run4d / "encoder.keras")
    contract = {"image_size": SIZE, "mean": [0, 0, 0], "std": [1, 1, 1], "crop_fraction": 1.0}
    (run4d / "preprocessing.json").write_text(json.dumps(contract))
    run_bad_json = tmp_path / "runjson"
    run_bad_json.mkdir()
    (run_bad_json / "encoder.keras").write_bytes((run4d / "encoder.keras").read_bytes())
    (run_bad_json / "preprocessing.json").write_text('{"image_size": 1e400}')
    data_flags = ["--train-data", "demo:train", "--test-data", "demo:test"]
    for flags, expected in [
        (["--saved-model", broken], "cannot load it"),
        (["--run", run4d], "expected [2, dim]"),
        (["--run", run_bad_json], "cannot read"),
    ]:
        assert main([*map(str, flags), *data_flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bt-eval: error: ") and expected in err and err.count("\n") == 1


def test_the_serving_pixel_limit_is_an_export_setting(tmp_path):
    """``bt-export --max-image-pixels`` / ``export_encoder(max_image_pixels=)``: the limit serving enforces."""
    from bt_keras import encoders, export
    from bt_keras.cli import export as export_cli

    result = export.export_encoder(
        encoders.small_cnn(widths=(4,)), tmp_path / "ex", SIZE, formats=("saved_model",), max_image_pixels=2000
    )
    serve = tf.saved_model.load(str(result.saved_model_dir)).signatures["serving_default"]
    small = tf.io.encode_png(np.full([40, 40, 3], 9, np.uint8))  # 1,600 pixels
    large = tf.io.encode_png(np.full([50, 50, 3], 9, np.uint8))  # 2,500 pixels
    assert serve(image_bytes=tf.stack([small]))["embedding"].shape == (1, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
        serve(image_bytes=tf.stack([large]))
    recorded = json.loads((result.saved_model_dir / "assets.extra" / "preprocessing.json").read_text())
    assert recorded["max_image_pixels"] == 2000
    argv = ["--encoder", "x.keras", "--out", str(tmp_path / "o"), "--max-image-pixels", "0"]
    assert export_cli.main(argv) == 2
