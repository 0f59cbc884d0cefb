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
    """A valid grayscale PNG of zeros: a few hundred KB that decode to height × width × 3 bytes."""
    compressor = zlib.compressobj(9)
    rows = b"\0" * (width + 1) * 64  # 64 rows (filter byte + pixels) per call
    body = [compressor.compress(rows) for _ in range(height // 64)]
    body.append(compressor.compress(b"\0" * (width + 1) * (height % 64)) + compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(body)) + _chunk(b"IEND", b"")


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
