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
from bt_keras.contract import (  # noqa: E402, F401
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessingContract,
    default_crop_fraction,
    make_contract,
)


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/BMP/GIF bytes to a uint8 [H, W, 3] RGB image.

    JPEGs use the exact integer DCT (bit-compatible with other decoders on
    4:4:4 files); grayscale, RGBA, palette and 16-bit images become 3-channel
    uint8; an animated GIF gives its first frame. Undecodable bytes raise
    ``tf.errors.InvalidArgumentError``.
    """
    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False),
    )
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
    out = tf.image.resize(tf.cast(crop, tf.float32), [image_size, image_size], method="bilinear", antialias=False)
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
) -> tf.Tensor:
    """Encoded bytes or a uint8 image → normalised float32 [image_size, image_size, 3]."""
    x = image_bytes_or_pixels
    if x.dtype == tf.string:
        x = decode_rgb(x)
    return normalize(center_crop_resize(x, image_size, crop_fraction), mean, std)
