"""Image decoding and the evaluation / serving preprocessing contract.

One implementation serves the evaluation datasets, the training pipeline's
decoder and the exported SavedModel's ``serving_default`` signature, so what is
served is exactly what was evaluated.

Examples:

>>> import tensorflow as tf
>>> from bt_keras import preprocess
>>> png = tf.io.encode_png(tf.zeros([40, 60, 3], tf.uint8))
>>> x = preprocess.preprocess_for_eval(png, image_size=32)
>>> x.shape
TensorShape([32, 32, 3])
"""

from __future__ import annotations

import tensorflow as tf

# The contract itself has no TensorFlow in it; it is re-exported here, where it always was.
from bt_keras.contract import (  # noqa: F401
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_IMAGE_PIXELS,
    PreprocessingContract,
    default_crop_fraction,
    make_contract,
)


def _le16(raw, i):
    return raw[i] + 256 * raw[i + 1]


def _be16(raw, i):
    return 256 * raw[i] + raw[i + 1]


def _window(image_bytes, pos, n):
    """int32 [16]: the bytes at ``pos..pos+15``, zeros past the end (no copy of the whole file)."""
    piece = tf.strings.substr(image_bytes, tf.minimum(pos, n), 16) + b"\0" * 16
    return tf.cast(tf.io.decode_raw(tf.strings.substr(piece, 0, 16), tf.uint8), tf.int32)


# SOFn markers (C0-CF but C4 DHT, C8 JPG, CC DAC) carry the frame size; these have no length field.
_JPEG_SOF = [m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)]
_JPEG_STANDALONE = [0x01] + list(range(0xD0, 0xD9))


def _color_table_size(flags):
    # A GIF colour table holds 2^(1 + (flags & 7)) RGB entries when bit 7 is set.
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(flags, 7)), 0)


_SCALAR_STRING = tf.TensorSpec([], tf.string)
# The guards below are traced once per process (fixed input signatures): a pipeline or a
# SavedModel that decodes calls them, instead of rebuilding their hundred-odd ops per trace.
_traced_once = tf.function(input_signature=[_SCALAR_STRING], autograph=False)


@_traced_once
def gif_first_frame(image_bytes: tf.Tensor):
    """``(bytes holding only the first image, its (height, width))`` of a GIF, in the graph.

    TensorFlow's GIF decoder decodes every frame (``expand_animations=False``
    only keeps the first one afterwards: a 300-frame 1000 × 1000 GIF costs
    1.5 GB), so the byte stream is cut after the first image block and closed
    with a trailer. The walk visits the blocks (extensions, the image
    descriptor, the 255-byte data sub-blocks) with a ``tf.while_loop``, one
    block per step. A malformed stream is cut where the walk stopped, so the
    decoder then fails on it rather than reading further; the size is
    ``(-1, -1)`` then.

    Examples:

    >>> import io, numpy as np
    >>> from PIL import Image
    >>> frames = [Image.fromarray(np.full([8, 12, 3], v, np.uint8)) for v in (0, 255, 0)]
    >>> buf = io.BytesIO()
    >>> frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    >>> first, size = gif_first_frame(tf.constant(buf.getvalue()))
    >>> size.numpy().tolist(), tf.io.decode_gif(first).shape
    ([8, 12], TensorShape([1, 8, 12, 3]))
    """
    n = tf.strings.length(image_bytes)
    head = _window(image_bytes, 0, n)
    start = 13 + _color_table_size(head[10])
    # mode 0: at a block introducer; 1: in an extension's sub-blocks; 2: in the image's; 3: done; 4: malformed.
    init = (start, tf.constant(0), tf.constant(-1), tf.constant(-1))

    def step(pos, mode, height, width):
        w = _window(image_bytes, pos, n)
        b = w[0]
        is_ext, is_image = b == 0x21, b == 0x2C
        block_pos = tf.where(is_ext, pos + 2, tf.where(is_image, pos + 11 + _color_table_size(w[9]), pos))
        block_mode = tf.where(is_ext, 1, tf.where(is_image, 2, 4))
        # The frame's extent on the canvas: offset + size (left at 1, top at 3, width at 5, height at 7).
        height = tf.where((mode == 0) & is_image, _le16(w, 3) + _le16(w, 7), height)
        width = tf.where((mode == 0) & is_image, _le16(w, 1) + _le16(w, 5), width)
        sub_pos = pos + b + 1  # a data sub-block: its length byte, then the data; 0 ends the chain
        sub_mode = tf.where(b == 0, tf.where(mode == 2, 3, 0), mode)
        new_pos = tf.where(mode == 0, block_pos, sub_pos)
        new_mode = tf.where(mode == 0, block_mode, sub_mode)
        return new_pos, tf.where(pos >= n, 4, new_mode), height, width

    pos, mode, height, width = tf.while_loop(lambda pos, mode, h, w: mode < 3, step, init, maximum_iterations=n + 1)
    end = tf.minimum(pos, n)
    first = tf.strings.substr(image_bytes, 0, end) + b"\x3b"
    ok = mode == 3
    size = tf.where(ok, tf.stack([height, width]), -1)
    canvas = tf.stack([_le16(head, 8), _le16(head, 6)])
    # What the decoder allocates: the canvas for the output, the frame for its raster.
    return first, tf.cast(tf.where(ok, tf.maximum(size, canvas), -1), tf.int64)


@_traced_once
def jpeg_size(image_bytes: tf.Tensor) -> tf.Tensor:
    """int64 ``(height, width)`` from a JPEG's frame header (SOFn marker), else ``(-1, -1)``; never raises.

    Walks the marker segments from the start (a ``tf.while_loop``, one
    segment per step) up to the first SOFn, as ``tf.io.extract_jpeg_shape``
    does, but answers ``(-1, -1)`` instead of raising on a malformed file.

    Examples:

    >>> jpeg = tf.io.encode_jpeg(tf.zeros([6, 10, 3], tf.uint8))
    >>> jpeg_size(jpeg).numpy().tolist(), jpeg_size(tf.constant(b"\\xff\\xd8 junk")).numpy().tolist()
    ([6, 10], [-1, -1])
    """
    n = tf.strings.length(image_bytes)
    # state: position of the next marker, 0 walking / 1 found / 2 malformed, height, width
    init = (tf.constant(2), tf.constant(0), tf.constant(-1), tf.constant(-1))

    def step(pos, state, height, width):
        w = _window(image_bytes, pos, n)
        fill = (w[0] == 0xFF) & (w[1] == 0xFF)  # fill bytes before a marker
        marker = w[1]
        is_sof = tf.reduce_any(marker == _JPEG_SOF)
        standalone = tf.reduce_any(marker == _JPEG_STANDALONE)
        ends = (marker == 0xD9) | (marker == 0xDA)  # end of image, or scan data before any frame header
        bad = (w[0] != 0xFF) | (pos + 9 > n) | (~fill & ends)
        new_state = tf.where(bad, 2, tf.where(fill, 0, tf.where(is_sof, 1, 0)))
        new_pos = tf.where(fill, pos + 1, tf.where(standalone, pos + 2, pos + 2 + _be16(w, 2)))
        found = (new_state == 1) & ~bad
        return new_pos, new_state, tf.where(found, _be16(w, 5), height), tf.where(found, _be16(w, 7), width)

    _, state, height, width = tf.while_loop(lambda p, s, h, w: s == 0, step, init, maximum_iterations=n + 1)
    return tf.cast(tf.where(state == 1, tf.stack([height, width]), -1), tf.int64)


@_traced_once
def header_size(image_bytes: tf.Tensor) -> tf.Tensor:
    """int64 ``(height, width)`` read from a JPEG, PNG, GIF, BMP or WebP header, else ``(-1, -1)``; never raises.

    Nothing is decoded: PNG's IHDR, a GIF's logical screen (its canvas;
    :func:`gif_first_frame` also reads the first frame's extent), a BMP's info
    header (absolute height: negative means top-down), a WebP's first chunk
    (:func:`_webp_size`) are read from the first 30 bytes, a JPEG's frame
    header by :func:`jpeg_size`. These are every format ``tf.io.decode_image``
    decodes; :func:`decode_rgb` refuses bytes whose size is not read here.

    Examples:

    >>> header_size(tf.io.encode_png(tf.zeros([3, 5, 1], tf.uint8))).numpy().tolist()
    [3, 5]
    >>> header_size(tf.constant(b"not an image")).numpy().tolist()
    [-1, -1]
    """
    head = tf.strings.substr(tf.strings.substr(image_bytes, 0, 32) + b"\0" * 32, 0, 32)
    raw = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)
    n = tf.strings.length(image_bytes)
    be32 = tf.constant([2**24, 2**16, 2**8, 1], tf.int64)
    png = tf.stack([tf.reduce_sum(raw[20:24] * be32), tf.reduce_sum(raw[16:20] * be32)])
    gif = tf.stack([raw[8] + 256 * raw[9], raw[6] + 256 * raw[7]])
    le32 = raw[18:26] * tf.constant([1, 2**8, 2**16, 2**24] * 2, tf.int64)
    width, height = tf.reduce_sum(le32[:4]), tf.reduce_sum(le32[4:])
    height = tf.where(height >= 2**31, 2**32 - height, height)  # two's complement: top-down rows
    bmp = tf.stack([height, width])
    is_png = (tf.strings.substr(head, 0, 8) == b"\x89PNG\r\n\x1a\n") & (n >= 24)
    is_gif = (tf.strings.substr(head, 0, 4) == b"GIF8") & (n >= 13)
    is_bmp = (tf.strings.substr(head, 0, 2) == b"BM") & (n >= 26)
    others = tf.where(is_png, png, tf.where(is_gif, gif, tf.where(is_bmp, bmp, _webp_size(head, raw, n))))
    return tf.cond(tf.io.is_jpeg(image_bytes), lambda: jpeg_size(image_bytes), lambda: others)


def _webp_size(head, raw, n):
    """int64 ``(height, width)`` of a WebP from its first chunk (VP8X, VP8L or VP8), else ``(-1, -1)``.

    A few dozen bytes of lossless WebP can announce 16383 × 16383 pixels, so the
    size is read like the other formats'. VP8X (extended: animation, alpha,
    metadata) holds the canvas, 24-bit width - 1 and height - 1 at bytes 24-29;
    VP8L (lossless) 14-bit width - 1 and height - 1 after its 0x2f signature at
    byte 20; VP8 (lossy) 14-bit width and height after its start code at 23-25.

    Args:
        head: the first 32 bytes (zero-padded), a string.
        raw: the same bytes as int64 [32].
        n: the length of the whole file.
    """
    is_webp = (tf.strings.substr(head, 0, 4) == b"RIFF") & (tf.strings.substr(head, 8, 4) == b"WEBP")
    fourcc = tf.strings.substr(head, 12, 4)
    vp8x = tf.stack([raw[27] + 256 * raw[28] + 65536 * raw[29] + 1, raw[24] + 256 * raw[25] + 65536 * raw[26] + 1])
    and_ = tf.bitwise.bitwise_and
    shift = tf.bitwise.right_shift
    lossless_w = raw[21] + 256 * and_(raw[22], 0x3F) + 1
    lossless_h = shift(raw[22], 6) + 4 * raw[23] + 1024 * and_(raw[24], 0x0F) + 1
    vp8l = tf.stack([lossless_h, lossless_w])
    vp8 = tf.stack([and_(raw[28] + 256 * raw[29], 0x3FFF), and_(raw[26] + 256 * raw[27], 0x3FFF)])
    # Each size is read only from bytes the file has (the head is zero-padded to 32).
    is_vp8x = (fourcc == b"VP8X") & (n >= 30)
    is_vp8l = (fourcc == b"VP8L") & (raw[20] == 0x2F) & (n >= 25)
    is_vp8 = (fourcc == b"VP8 ") & (tf.strings.substr(head, 23, 3) == b"\x9d\x01\x2a") & (n >= 30)
    size = tf.where(is_vp8x, vp8x, tf.where(is_vp8l, vp8l, tf.where(is_vp8, vp8, tf.constant(-1, tf.int64))))
    return tf.where(is_webp, size, tf.constant([-1, -1], tf.int64))


def refuse_above(size: tf.Tensor, max_pixels) -> tf.Operation:
    """An assertion op: ``size`` (height, width) has at most ``max_pixels`` pixels.

    Put decoding under ``tf.control_dependencies([refuse_above(size, limit)])``
    so that an oversized image raises ``InvalidArgumentError`` ("image too
    large") before any pixel memory is allocated.
    """
    size = tf.cast(size, tf.int64)
    max_pixels = tf.cast(max_pixels, tf.int64)
    return tf.debugging.Assert(
        size[0] * size[1] <= max_pixels,
        ["image too large: more pixels than the limit (max_image_pixels)", max_pixels, "height, width:", size],
    )


@tf.function(input_signature=[_SCALAR_STRING, tf.TensorSpec([], tf.int64)], autograph=False)
def _decode_rgb_limited(image_bytes, max_pixels):
    def jpeg():
        with tf.control_dependencies([refuse_above(tf.io.extract_jpeg_shape(image_bytes)[:2], max_pixels)]):
            return tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE")

    def gif():
        first, size = gif_first_frame(image_bytes)
        with tf.control_dependencies([refuse_above(size, max_pixels)]):
            return tf.io.decode_image(first, channels=3, dtype=tf.uint8, expand_animations=False)

    def other():
        size = header_size(image_bytes)
        # A size the header check cannot read is refused, not decoded unbounded.
        known = tf.debugging.Assert(
            size[0] >= 0, ["image size unreadable: not a JPEG, PNG, GIF, BMP or WebP header (decoding refused)"]
        )
        with tf.control_dependencies([known, refuse_above(size, max_pixels)]):
            return tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)

    is_gif = tf.strings.substr(image_bytes, 0, 4) == b"GIF8"
    return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, lambda: tf.cond(is_gif, gif, other))


def decode_rgb(image_bytes: tf.Tensor, max_pixels: int = MAX_IMAGE_PIXELS) -> tf.Tensor:
    """Decodes JPEG/PNG/BMP/GIF bytes to a uint8 [H, W, 3] RGB image, refusing oversized ones first.

    JPEGs use the exact integer DCT (bit-compatible with other decoders on
    4:4:4 files); grayscale, RGBA, palette and 16-bit images become 3-channel
    uint8; an animated GIF gives its first frame, and only that frame is
    decoded (:func:`gif_first_frame`). Before any decoding the size is read
    from the header (``tf.io.extract_jpeg_shape`` for JPEG, :func:`header_size`
    and the first frame's extent otherwise) and an image of more than
    ``max_pixels`` pixels raises ``tf.errors.InvalidArgumentError`` ("image
    too large"), so a decompression bomb costs no memory. Undecodable bytes
    raise ``tf.errors.InvalidArgumentError`` too.

    Args:
        image_bytes: a scalar string tensor.
        max_pixels: the largest height × width accepted.

    Examples:

    >>> bomb = tf.io.encode_png(tf.zeros([200, 300, 1], tf.uint8))
    >>> decode_rgb(bomb).shape
    TensorShape([200, 300, 3])
    >>> decode_rgb(bomb, max_pixels=50_000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tensorflow.python.framework.errors_impl.InvalidArgumentError: ...image too large...
    """
    image = _decode_rgb_limited(image_bytes, tf.constant(max_pixels, tf.int64))
    image.set_shape([None, None, 3])
    return image


def center_crop_resize(image: tf.Tensor, image_size: int, crop_fraction: float | None = None) -> tf.Tensor:
    """Central square of ``crop_fraction`` × the shorter side, resized to ``image_size``.

    ``None`` takes :func:`~bt_keras.contract.default_crop_fraction` of ``image_size``.

    Returns float32 in [0, 255] with static shape [image_size, image_size, 3].
    Bilinear without antialiasing: the op every exporter and runtime supports.
    """
    if crop_fraction is None:
        crop_fraction = default_crop_fraction(image_size)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.cast(tf.cast(tf.minimum(height, width), tf.float32) * crop_fraction, tf.int32)
    side = tf.maximum(side, 1)
    top = (height - side) // 2
    left = (width - side) // 2
    crop = image[top : top + side, left : left + side, :]
    # The resize reads uint8 as it is (same values as from a float32 copy, without 4 bytes per pixel of it).
    out = tf.image.resize(crop, [image_size, image_size], method="bilinear", antialias=False)
    out.set_shape([image_size, image_size, 3])
    return out


def normalize(image_0_255: tf.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tf.Tensor:
    """Maps a float image in [0, 255] to ``(x / 255 - mean) / std`` (float32)."""
    x = tf.cast(image_0_255, tf.float32) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def preprocess_for_eval(
    image_bytes_or_pixels: tf.Tensor,
    image_size: int,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    crop_fraction: float | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tf.Tensor:
    """Encoded bytes or a uint8 image → normalised float32 [image_size, image_size, 3].

    Bytes are decoded by :func:`decode_rgb`, which refuses images of more than ``max_pixels`` pixels.
    """
    x = image_bytes_or_pixels
    if x.dtype == tf.string:
        x = decode_rgb(x, max_pixels)
    return normalize(center_crop_resize(x, image_size, crop_fraction), mean, std)
