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

    saved_model, folder, bomb, gif = sys.argv[1:5]
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
    ds = data.two_view_dataset("folder:" + folder, batch_size=4, image_size=16, skipped_path=folder + ".tsv")
    out["train_batch"] = list(next(iter(ds))[0].shape)
    out["skipped"] = open(folder + ".tsv").read()
    out["gif_first_frame"] = list(decode_rgb(tf.constant(open(gif, "rb").read())).shape)
    print(json.dumps(out), flush=True)
    # Control: the same limit stops the unguarded decode (so the limit above really binds).
    try:
        tf.io.decode_png(open(bomb, "rb").read(), channels=3)
        print("UNGUARDED DECODE FITS", flush=True)
    except Exception as e:
        print("unguarded decode failed:", type(e).__name__, flush=True)
    """
)


def test_bombs_cost_no_memory_in_serving_and_training(exported, tmp_path):
    saved_model, _ = exported
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"ok{i}.png").write_bytes(_png(np.full([20, 24, 3], 30 * i, np.uint8)))
    bomb = png_bomb(20480, 20000)
    for name in ("bomb1.png", "bomb2.png"):
        (folder / name).write_bytes(bomb)
    (tmp_path / "bomb.png").write_bytes(bomb)
    (tmp_path / "frames.gif").write_bytes(many_frame_gif(300, 1000))  # 900 MB if every frame is decoded
    env = dict(os.environ, MALLOC_ARENA_MAX="2", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    args = [str(saved_model), str(folder), str(tmp_path / "bomb.png"), str(tmp_path / "frames.gif")]
    proc = subprocess.run(
        [sys.executable, "-c", _UNDER_A_MEMORY_LIMIT, *args], capture_output=True, text=True, env=env, timeout=300
    )
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr[-3000:]
    out = json.loads(lines[0])
    assert out["serving"] == "refused"
    assert out["train_batch"] == [4, 16, 16, 3]
    rows = [r.split("\t") for r in out["skipped"].splitlines()]
    assert sorted(Path(r[0]).name for r in rows) == ["bomb1.png", "bomb2.png"]
    assert all(r[1].startswith("too large: 20000x20480 = 409,600,000 pixels") for r in rows)
    assert out["gif_first_frame"] == [1000, 1000, 3]
    assert "UNGUARDED DECODE FITS" not in proc.stdout  # failed, or the process was stopped
