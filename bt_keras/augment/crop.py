"""Stage 1 of a view: cut its crop out of the image and resize it.

Three ways to the same crop: :func:`crop_resize` (a decoded image),
:func:`decode_crop_resize` (JPEG bytes: only the crop window is decoded) and,
for small same-size images, :func:`crop_resize_batch` (the whole batch in two
matrix products). :class:`~bt_keras.augment.views.TwoViews` chooses between
them.

Examples:

>>> import tensorflow as tf
>>> from bt_keras.augment import get_preset
>>> from bt_keras.augment.crop import crop_resize
>>> out = crop_resize(tf.zeros([40, 50, 3], tf.uint8), {"crop": tf.constant([0, 5, 30, 40])}, 16, get_preset("cifar"))
>>> out.shape, out.dtype
(TensorShape([16, 16, 3]), tf.uint8)
"""

from __future__ import annotations

import tensorflow as tf

from bt_keras.augment.config import AugmentConfig

__all__ = [
    "DCT_RATIOS",
    "MATRIX_METHODS",
    "covering_window",
    "crop_resize",
    "crop_resize_batch",
    "dct_ratio",
    "decode_crop",
    "decode_crop_resize",
    "decode_crop_resize_pair",
]

MATRIX_METHODS = ("bicubic", "bilinear")  # the kernels crop_resize_batch implements


def _keys_cubic(t):
    """Keys' cubic convolution kernel, a = -0.5 (TF's and PIL's bicubic)."""
    a = -0.5
    t = tf.abs(t)
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return tf.where(t <= 1.0, near, tf.where(t < 2.0, far, 0.0))


def _triangle(t):
    return tf.maximum(0.0, 1.0 - tf.abs(t))


def _resample_matrix(start, length, in_size: int, out_size: int, method: str, antialias: bool):
    """[B, out_size, in_size] weights resizing the window [start, start+length) of each row.

    Half-pixel centres as ``tf.image.resize``. Taps outside the window are
    dropped and the rest renormalised, and with antialias a window larger
    than the output widens the kernel: ``ScaleAndTranslate``'s rules (the
    antialiased ``tf.image.resize``).
    """
    kernel = _keys_cubic if method == "bicubic" else _triangle
    start = tf.cast(start, tf.float32)[:, None, None]
    length = tf.cast(length, tf.float32)[:, None, None]
    scale = length / out_size
    widen = tf.maximum(scale, 1.0) if antialias else 1.0
    centre = start + (tf.range(out_size, dtype=tf.float32)[None, :, None] + 0.5) * scale - 0.5
    j = tf.range(in_size, dtype=tf.float32)[None, None, :]
    w = kernel((j - centre) / widen)
    w = tf.where((j >= start) & (j < start + length), w, 0.0)
    return w / tf.reduce_sum(w, axis=-1, keepdims=True)


def crop_resize_batch(images, crops, image_size: int, config: AugmentConfig, channels_first: bool = False, flip=None):
    """Every example's crop of a same-size uint8 batch [B, H, W, 3], resized.

    Returns uint8 [B, S, S, 3] (or float32 [B, 3, S, S] with integer values
    0..255 when ``channels_first``). Two batched matrix products with
    per-example resampling matrices replace B separate slice + resize
    kernels: at small sizes (CIFAR) this removes most of the per-image
    overhead. Equals :func:`crop_resize` up to ±1 away from the crop border
    and within a few levels at it (border rule of the antialiased resize).

    Args:
        images: uint8 [B, H, W, 3], static H and W.
        crops: int32 [B, 4] boxes (top, left, height, width).
        image_size: output side S.
        config: a resolved config (``crop.method`` bicubic or bilinear).
        channels_first: return float32 [B, 3, S, S] for the pixel stage.
        flip: optional bool [B], mirrors those examples' outputs.

    Examples:

    >>> from bt_keras.augment import get_preset
    >>> x = tf.zeros([2, 20, 20, 3], tf.uint8)
    >>> crop_resize_batch(x, tf.constant([[0, 0, 10, 10], [5, 5, 15, 15]]), 8, get_preset("cifar")).shape
    TensorShape([2, 8, 8, 3])
    """
    method = config.crop.method
    if method not in MATRIX_METHODS:
        raise ValueError(f"crop_resize_batch supports bicubic and bilinear, not {method}")
    h, w = int(images.shape[1]), int(images.shape[2])
    aa = bool(config.crop.antialias)
    rows = _resample_matrix(crops[:, 0], crops[:, 2], h, image_size, method, aa)  # [B, S, H]
    cols = _resample_matrix(crops[:, 1], crops[:, 3], w, image_size, method, aa)  # [B, S, W]
    if flip is not None:  # reversed output columns: the flip costs nothing here
        cols = tf.where(flip[:, None, None], tf.reverse(cols, axis=[1]), cols)
    x = tf.transpose(tf.cast(images, tf.float32), [0, 3, 1, 2])  # [B, 3, H, W]
    x = tf.matmul(rows[:, None], x)  # [B, 3, S, W]
    x = tf.matmul(x, cols[:, None], transpose_b=True)  # [B, 3, S, S]
    x = tf.clip_by_value(tf.round(x), 0.0, 255.0)
    if channels_first:
        x.set_shape([images.shape[0], 3, image_size, image_size])
        return x
    out = tf.cast(tf.transpose(x, [0, 2, 3, 1]), tf.uint8)
    out.set_shape([images.shape[0], image_size, image_size, 3])
    return out


def _resize(crop, image_size: int, config: AugmentConfig):
    method = config.crop.method

    def plain():
        return tf.image.resize(crop, [image_size, image_size], method=method)

    if config.crop.antialias and method != "nearest":
        shape = tf.shape(crop)
        # Antialiasing only changes downscaling; upscaling takes the faster kernel.
        out = tf.cond(
            tf.reduce_any(shape[:2] > image_size),
            lambda: tf.image.resize(crop, [image_size, image_size], method=method, antialias=True),
            plain,
        )
    else:
        out = plain()
    out = tf.saturate_cast(tf.round(out), tf.uint8)
    out.set_shape([image_size, image_size, 3])
    return out


def crop_resize(image, params: dict, image_size: int, config: AugmentConfig):
    """Cuts ``params["crop"]`` out of a uint8 [H, W, 3] image and resizes it; uint8 [S, S, 3].

    The flip is left to :func:`~bt_keras.augment.pixel.apply_batch`, which
    does it on the image while it is in cache anyway.

    Args:
        image: uint8 [H, W, 3].
        params: a dict with ``crop``, int32 [4] (top, left, height, width).
        image_size: output side S.
        config: a resolved config (``crop.method``, ``crop.antialias``).
    """
    box = params["crop"]
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], 3])
    return _resize(crop, image_size, config)


# ScaleAndTranslate kernels of the antialiased tf.image.resize methods the DCT-scaled path serves.
_ANTIALIAS_KERNELS = {"bicubic": "keyscubic", "bilinear": "triangle"}
DCT_RATIOS = (2, 4, 8)  # the downscaling factors libjpeg's DCT scaling offers (DecodeAndCropJpeg's ``ratio``)


def dct_ratio(box, image_size: int, config: AugmentConfig):
    """int32 DCT downscaling factor for a crop: the largest of 1, 2, 4, 8 keeping it ≥ ``image_size``.

    1 (decode at full resolution) unless the config resizes with an
    antialiased bicubic or bilinear kernel and both sides of ``box`` are at
    least ``ratio × image_size``: the scaled crop is then still downscaled, so
    no detail the output can hold is lost.

    Examples:

    >>> from bt_keras.augment import get_preset
    >>> [int(dct_ratio(tf.constant([0, 0, s, s]), 224, get_preset("imagenet"))) for s in (300, 448, 900, 1792)]
    [1, 2, 4, 8]
    """
    if not _dct_scalable(config):
        return tf.constant(1, tf.int32)
    return tf.bitwise.left_shift(tf.constant(1, tf.int32), _ratio_index(box, image_size))


def _dct_scalable(config: AugmentConfig) -> bool:
    return bool(config.crop.antialias) and config.crop.method in _ANTIALIAS_KERNELS


def _ratio_index(box, image_size: int):
    """log2 of the DCT ratio: how many of 2, 4, 8 × ``image_size`` both sides of the box reach."""
    return tf.reduce_sum(tf.cast(tf.minimum(box[2], box[3]) >= tf.constant(DCT_RATIOS) * image_size, tf.int32))


def _scaled_window(box, ratio: int):
    """The window of whole 1/``ratio``-scale pixels covering ``box``, and the box's sub-pixel start in it.

    The scaled image is ceil(H / ratio) × ceil(W / ratio) and its pixel j
    covers [j·ratio, (j+1)·ratio) of the original, so the window never
    leaves the scaled image.
    """
    top, left, height, width = box[0], box[1], box[2], box[3]
    y0, x0 = top // ratio, left // ratio
    y1 = (top + height + ratio - 1) // ratio
    x1 = (left + width + ratio - 1) // ratio
    f = lambda v: tf.cast(v, tf.float32)
    start = tf.stack([f(top) / ratio - f(y0), f(left) / ratio - f(x0)])
    return tf.stack([y0, x0, y1 - y0, x1 - x0]), start


def decode_crop(jpeg_bytes, box, image_size: int, config: AugmentConfig):
    """Stage 1's decode alone: the crop window of a JPEG at the scale :func:`decode_crop_resize` uses.

    Returns the uint8 window (the box itself at full resolution, the whole
    scaled pixels covering it at 1/2, 1/4 or 1/8). For benchmarks that
    split the crop cost into decoding and resizing.

    Examples:

    >>> from bt_keras.augment import get_preset
    >>> jpeg = tf.io.encode_jpeg(tf.zeros([1000, 1000, 3], tf.uint8))
    >>> decode_crop(jpeg, tf.constant([1, 1, 500, 600]), 224, get_preset("imagenet")).shape
    TensorShape([251, 301, 3])
    """

    def scaled(ratio):
        return lambda: tf.raw_ops.DecodeAndCropJpeg(
            contents=jpeg_bytes, crop_window=_scaled_window(box, ratio)[0], channels=3, ratio=ratio
        )

    full = lambda: tf.io.decode_and_crop_jpeg(jpeg_bytes, box, channels=3)
    if not _dct_scalable(config):
        return full()
    out = tf.switch_case(_ratio_index(box, image_size), [full] + [scaled(r) for r in DCT_RATIOS])
    out.set_shape([None, None, 3])
    return out


def _dct_scaled(jpeg_bytes, box, ratio: int, image_size: int, config: AugmentConfig):
    """Decodes the crop at 1/``ratio`` scale (libjpeg's scaled IDCT), then the remaining antialiased resize.

    ``ScaleAndTranslate`` maps the output exactly onto the box's sub-pixel
    position in the decoded window (the antialiased ``tf.image.resize`` is
    the same op without the translation), so only the filter differs from
    the full-resolution path: libjpeg's scaled IDCT, then the kernel widened
    by the remaining factor, instead of the kernel widened by the whole one.
    """
    window, start = _scaled_window(box, ratio)
    crop = tf.raw_ops.DecodeAndCropJpeg(contents=jpeg_bytes, crop_window=window, channels=3, ratio=ratio)
    f = lambda v: tf.cast(v, tf.float32)
    scale = tf.stack([image_size * ratio / f(box[2]), image_size * ratio / f(box[3])])
    out = tf.raw_ops.ScaleAndTranslate(
        images=crop[None],
        size=[image_size, image_size],
        scale=scale,
        translation=-start * scale,
        kernel_type=_ANTIALIAS_KERNELS[config.crop.method],
        antialias=True,
    )[0]
    out = tf.saturate_cast(tf.round(out), tf.uint8)
    out.set_shape([image_size, image_size, 3])
    return out


def decode_crop_resize(jpeg_bytes, params: dict, image_size: int, config: AugmentConfig):
    """JPEG bytes → decode only the crop window → uint8 [S, S, 3].

    A crop at least 2× the output on both sides is decoded at 1/2, 1/4 or
    1/8 scale by libjpeg's DCT scaling (:func:`dct_ratio`), which costs a
    fraction of the full-resolution decode and leaves the antialiased resize
    a fraction of the pixels; the result stays within the tolerance stated
    in ``docs/performance.md`` of the full-resolution path (measured on
    photos at ratio 2: mean absolute difference about half a level of 255). Other crops
    take the full-resolution path: ``decode_and_crop_jpeg``, then the resize.

    Args:
        jpeg_bytes: a scalar string tensor holding a JPEG.
        params, image_size, config: as in :func:`crop_resize`.

    Examples:

    >>> from bt_keras.augment import get_preset
    >>> jpeg = tf.io.encode_jpeg(tf.zeros([20, 30, 3], tf.uint8))
    >>> decode_crop_resize(jpeg, {"crop": tf.constant([2, 3, 8, 8])}, 4, get_preset("cifar")).shape
    TensorShape([4, 4, 3])
    """
    box = params["crop"]

    def full_resolution():
        return _resize(tf.io.decode_and_crop_jpeg(jpeg_bytes, box, channels=3), image_size, config)

    if not _dct_scalable(config):
        return full_resolution()
    branches = [full_resolution] + [lambda r=r: _dct_scaled(jpeg_bytes, box, r, image_size, config) for r in DCT_RATIOS]
    # One branch per ratio: DecodeAndCropJpeg takes it as a static attribute.
    return tf.switch_case(_ratio_index(box, image_size), branches)


def covering_window(box_a, box_b):
    """int32 [4] (top, left, height, width): the smallest box holding both boxes.

    Examples:

    >>> covering_window(tf.constant([0, 5, 20, 20]), tf.constant([10, 0, 30, 15])).numpy().tolist()
    [0, 0, 40, 25]
    """
    top_left = tf.minimum(box_a[:2], box_b[:2])
    bottom_right = tf.maximum(box_a[:2] + box_a[2:], box_b[:2] + box_b[2:])
    return tf.concat([top_left, bottom_right - top_left], 0)


def decode_crop_resize_pair(jpeg_bytes, params_a: dict, params_b: dict, image_size: int, config: AugmentConfig):
    """Both views' crops of one JPEG, each as :func:`decode_crop_resize` cuts it.

    When neither crop is DCT-scaled, the window covering both is decoded once
    and each crop is cut from it: the entropy decoding, which libjpeg does
    for every row down to a window's bottom whatever its width, is paid once
    instead of twice (decoding measured 1.2–1.7× cheaper at 224×224 and
    500×375 in the streamed pipeline, ``docs/performance.md``). Pixels equal
    a full decode's, except near a window's edge where libjpeg's chroma
    upsampling lacks its neighbours (the same holds for one window per crop).

    Args:
        jpeg_bytes: a scalar string tensor holding a JPEG.
        params_a, params_b: dicts with each view's ``crop``.
        image_size, config: as in :func:`crop_resize`.

    Examples:

    >>> from bt_keras.augment import get_preset
    >>> jpeg = tf.io.encode_jpeg(tf.zeros([40, 30, 3], tf.uint8))
    >>> a, b = decode_crop_resize_pair(jpeg, {"crop": tf.constant([0, 0, 20, 20])},
    ...                                {"crop": tf.constant([10, 5, 30, 25])}, 16, get_preset("imagenet"))
    >>> a.shape, b.shape
    (TensorShape([16, 16, 3]), TensorShape([16, 16, 3]))
    """
    box_a, box_b = params_a["crop"], params_b["crop"]

    def once():
        window = covering_window(box_a, box_b)
        pixels = tf.io.decode_and_crop_jpeg(jpeg_bytes, window, channels=3)
        return tuple(
            _resize(
                tf.slice(pixels, tf.concat([box[:2] - window[:2], [0]], 0), tf.concat([box[2:], [3]], 0)),
                image_size,
                config,
            )
            for box in (box_a, box_b)
        )

    if not _dct_scalable(config):
        return once()

    def separately():
        return (
            decode_crop_resize(jpeg_bytes, params_a, image_size, config),
            decode_crop_resize(jpeg_bytes, params_b, image_size, config),
        )

    scaled = (_ratio_index(box_a, image_size) > 0) | (_ratio_index(box_b, image_size) > 0)
    return tf.cond(scaled, separately, once)
