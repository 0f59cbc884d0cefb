"""Large photos: the DCT-scaled crop-decode and the blur at its arithmetic cost.

The DCT-scaled path (``decode_crop_resize`` on crops ≥ 2× the output) is
checked against the full-resolution path (decode the crop, antialiased
resize) within the tolerance stated in docs/performance.md; other formats and
small crops must not change at all; the blur that reads a materialised padded
copy must equal the blur it replaced within float32 rounding.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bt_keras import augment
from bt_keras.augment import crop as crop_mod
from bt_keras.augment.crop import (
    _resize,
    dct_ratio,
    decode_crop,
    decode_crop_resize,
    decode_crop_resize_pair,
)
from bt_keras.augment.pixel import _gaussian_blur
from bt_keras.augment.views import TwoViews
from bt_keras.preprocess import decode_rgb

CFG = augment.get_preset("imagenet")

# The tolerance docs/performance.md states, on [0, 1], per DCT ratio: (mean, max) absolute
# difference of one crop against the full-resolution path.
TOLERANCE = {2: (0.006, 0.08), 4: (0.012, 0.16), 8: (0.016, 0.22)}


def _synthetic_photo(height, width, seed):
    """Smooth shading, a few hard-edged shapes and mild texture: photo-like frequency content."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.zeros((height, width, 3))
    for c in range(3):
        for _ in range(4):
            fy, fx, ph = rng.uniform(0.5, 6, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] += rng.uniform(0.05, 0.15) * np.sin(2 * np.pi * (fy * y + fx * x) + ph)
    for _ in range(6):  # shapes with sharp edges
        top, left = rng.integers(0, height), rng.integers(0, width)
        bottom, right = top + rng.integers(10, height // 2), left + rng.integers(10, width // 2)
        img[top:bottom, left:right] += rng.uniform(-0.3, 0.3, 3)
    img += rng.normal(0, 0.02, img.shape)  # sensor-like texture
    return np.clip((img + 0.5) * 255, 0, 255).astype(np.uint8)


def _boxes_for_each_ratio(height, width, size, rng, per_ratio=2):
    """Crop boxes (top, left, h, w) whose DCT ratio is 2, 4 and 8 (where the image allows), and one of 1."""
    boxes = []
    for ratio in (2, 4, 8):
        lo = ratio * size
        if lo > min(height, width):
            continue
        for _ in range(per_ratio):
            h = int(rng.integers(lo, min(height, 2 * lo - 1) + 1))
            w = int(rng.integers(lo, min(width, 2 * lo - 1) + 1))
            boxes.append([int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w])
    boxes.append([3, 5, 2 * size - 1, 2 * size + 7])  # just below ratio 2: the full-resolution path
    return boxes


def _check_against_full_resolution(jpeg, size, boxes):
    seen = set()
    for box in boxes:
        box_t = tf.constant(box, tf.int32)
        ratio = int(dct_ratio(box_t, size, CFG))
        fast = decode_crop_resize(jpeg, {"crop": box_t}, size, CFG).numpy()
        full = _resize(tf.io.decode_and_crop_jpeg(jpeg, box_t, channels=3), size, CFG).numpy()
        assert fast.shape == (size, size, 3) and fast.dtype == np.uint8
        if ratio == 1:
            np.testing.assert_array_equal(fast, full)  # bit-for-bit the old path
            continue
        diff = np.abs(fast.astype(np.float64) - full.astype(np.float64)) / 255.0
        mean_tol, max_tol = TOLERANCE[ratio]
        assert diff.mean() <= mean_tol and diff.max() <= max_tol, (box, ratio, diff.mean(), diff.max())
        seen.add(ratio)
    return seen


@pytest.mark.parametrize("height, width, size", [(400, 300, 24), (240, 520, 32)])
def test_dct_scaled_crops_match_full_resolution_on_synthetic_photos(height, width, size):
    img = _synthetic_photo(height, width, seed=height)
    jpeg = tf.io.encode_jpeg(img, quality=90)
    seen = _check_against_full_resolution(
        jpeg, size, _boxes_for_each_ratio(height, width, size, np.random.default_rng(0))
    )
    assert seen == {r for r in (2, 4, 8) if r * size <= min(height, width)}


def test_dct_scaled_crops_match_full_resolution_on_real_photos(imagenette_dir):
    """Imagenette photos re-encoded at 500×375 and 1024×768 (as the benchmark does), several output sizes."""
    paths = sorted((imagenette_dir / "train").rglob("*.JPEG"))[::250][:4]
    rng = np.random.default_rng(1)
    seen = set()
    for i, path in enumerate(paths):
        height, width = [(375, 500), (768, 1024)][i % 2]
        img = tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3), [height, width], "bicubic")
        jpeg = tf.io.encode_jpeg(tf.saturate_cast(tf.round(img), tf.uint8), quality=90)
        for size in (32, 96):
            seen |= _check_against_full_resolution(jpeg, size, _boxes_for_each_ratio(height, width, size, rng, 1))
    assert seen == {2, 4, 8}


def test_dct_scaled_crops_of_cmyk_gray_progressive_and_444_jpegs():
    """Every JPEG flavour libjpeg decodes takes the scaled path; hard sawtooth edges stay within the ratio-8 bound."""
    y, x = np.mgrid[0:300, 0:400]
    rgb = np.stack([(x % 97) * 2, (y % 61) * 4, (x + y) % 256], -1).astype(np.uint8)

    def jpeg(img, **kw):
        buf = io.BytesIO()
        img.save(buf, "JPEG", **kw)
        return tf.constant(buf.getvalue())

    flavours = [
        jpeg(Image.fromarray(rgb).convert("CMYK")),
        jpeg(Image.fromarray(rgb[..., 0], "L")),
        jpeg(Image.fromarray(rgb), progressive=True, quality=90),
        jpeg(Image.fromarray(rgb), subsampling=0),
    ]
    box = tf.constant([10, 20, 250, 300])
    for data in flavours:
        for size, ratio in ((60, 4), (120, 2)):
            assert int(dct_ratio(box, size, CFG)) == ratio
            fast = decode_crop_resize(data, {"crop": box}, size, CFG).numpy().astype(np.float64)
            full = _resize(tf.io.decode_and_crop_jpeg(data, box, channels=3), size, CFG).numpy().astype(np.float64)
            diff = np.abs(fast - full) / 255.0
            assert diff.mean() <= TOLERANCE[8][0] and diff.max() <= TOLERANCE[8][1], (ratio, diff.mean(), diff.max())


def test_dct_window_covers_the_box_at_every_ratio():
    """The scaled window holds the box (sizes round up: ceil(dim / ratio)) and never leaves the scaled image."""
    jpeg = tf.io.encode_jpeg(_synthetic_photo(203, 317, seed=3), quality=90)
    for box in ([0, 0, 203, 317], [1, 2, 201, 313], [7, 9, 160, 250], [195, 300, 8, 17]):
        for ratio in (2, 4, 8):
            window, start = crop_mod._scaled_window(tf.constant(box), ratio)
            y0, x0, h, w = (int(v) for v in window)
            assert y0 + h <= -(-203 // ratio) and x0 + w <= -(-317 // ratio)
            assert y0 * ratio <= box[0] and (y0 + h) * ratio >= box[0] + box[2]
            assert x0 * ratio <= box[1] and (x0 + w) * ratio >= box[1] + box[3]
            np.testing.assert_allclose(start.numpy(), [box[0] / ratio - y0, box[1] / ratio - x0], atol=1e-6)
            got = tf.raw_ops.DecodeAndCropJpeg(contents=jpeg, crop_window=window, channels=3, ratio=ratio)
            assert tuple(got.shape) == (h, w, 3)
    assert decode_crop(jpeg, tf.constant([7, 9, 160, 250]), 32, CFG).shape == (41, 63, 3)  # ratio 4


def test_other_formats_and_configs_keep_the_full_resolution_path():
    """PNG/BMP/GIF bytes crop exactly as their decoded image; without antialiasing JPEGs are never DCT-scaled."""
    img = _synthetic_photo(180, 200, seed=4)
    views = TwoViews(CFG, image_size=24, seed=0)
    keys = views.keys(0, tf.range(2, dtype=tf.int64))
    from_bytes = tf.function(views.crops_from_bytes)
    from_image = tf.function(views.crops_from_image)

    def pil_bytes(fmt):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt)
        return tf.constant(buf.getvalue())

    for data in (tf.io.encode_png(img), pil_bytes("BMP"), pil_bytes("GIF")):
        decoded = decode_rgb(data)
        for key in keys:
            (ca, _), (cb, _) = from_bytes(data, key)
            (ra, _), (rb, _) = from_image(decoded, key)
            np.testing.assert_array_equal(ca.numpy(), ra.numpy())
            np.testing.assert_array_equal(cb.numpy(), rb.numpy())
    jpeg = tf.io.encode_jpeg(img, quality=90)
    box = tf.constant([0, 0, 180, 200])  # 7.5× the output: ratio 4 with antialiasing
    assert int(dct_ratio(box, 24, CFG)) == 4
    plain = augment.get_preset("imagenet", crop={"antialias": False})
    assert int(dct_ratio(box, 24, plain)) == 1
    fast = decode_crop_resize(jpeg, {"crop": box}, 24, plain).numpy()
    np.testing.assert_array_equal(fast, _resize(tf.io.decode_and_crop_jpeg(jpeg, box, channels=3), 24, plain).numpy())


# --------------------------------------------------------------------------- #
# One decode for both crops
# --------------------------------------------------------------------------- #


def test_both_crops_from_one_decode_equal_each_crop_cut_from_that_window():
    """Neither crop DCT-scaled: one decode of the window covering both; each crop is then the plain path."""
    img = _synthetic_photo(375, 500, seed=5)
    jpeg = tf.io.encode_jpeg(img, quality=90)
    full = tf.io.decode_jpeg(jpeg, channels=3)
    pair = tf.function(lambda a, b: decode_crop_resize_pair(jpeg, {"crop": a}, {"crop": b}, 224, CFG))
    rng = np.random.default_rng(6)
    for _ in range(6):
        boxes = []
        for _ in range(2):
            h, w = int(rng.integers(60, 375)), int(rng.integers(60, 440))
            boxes.append([int(rng.integers(0, 376 - h)), int(rng.integers(0, 501 - w)), h, w])
        a, b = (tf.constant(v) for v in boxes)
        assert int(dct_ratio(a, 224, CFG)) == int(dct_ratio(b, 224, CFG)) == 1
        top, left = np.minimum(boxes[0][:2], boxes[1][:2])
        bottom = max(boxes[0][0] + boxes[0][2], boxes[1][0] + boxes[1][2])
        right = max(boxes[0][1] + boxes[0][3], boxes[1][1] + boxes[1][3])
        window = tf.io.decode_and_crop_jpeg(jpeg, [top, left, bottom - top, right - left], channels=3)
        for got, (t, x, h, w) in zip(pair(a, b), boxes):
            want = _resize(window[t - top : t - top + h, x - left : x - left + w], 224, CFG).numpy()
            np.testing.assert_array_equal(got.numpy(), want)
            # and against the whole image decoded: equal but where libjpeg's chroma upsampling meets a window edge
            ref = _resize(full[t : t + h, x : x + w], 224, CFG).numpy().astype(int)
            diff = np.abs(got.numpy().astype(int) - ref)
            assert diff.mean() < 0.05 and np.percentile(diff, 99.9) <= 2, (diff.mean(), diff.max())


def test_a_dct_scaled_crop_keeps_its_own_scaled_decode_in_the_pair():
    img = _synthetic_photo(1024, 768, seed=7)
    jpeg = tf.io.encode_jpeg(img, quality=90)
    big, small = tf.constant([0, 0, 900, 700]), tf.constant([100, 100, 200, 150])
    assert int(dct_ratio(big, 224, CFG)) == 2 and int(dct_ratio(small, 224, CFG)) == 1
    a, b = decode_crop_resize_pair(jpeg, {"crop": big}, {"crop": small}, 224, CFG)
    np.testing.assert_array_equal(a.numpy(), decode_crop_resize(jpeg, {"crop": big}, 224, CFG).numpy())
    np.testing.assert_array_equal(b.numpy(), decode_crop_resize(jpeg, {"crop": small}, 224, CFG).numpy())


# --------------------------------------------------------------------------- #
# Blur
# --------------------------------------------------------------------------- #


def _blur_before(x, sigma, kernel_size: int):
    """The blur as it was (2026-12-01): the reflect padding fused into every tap."""
    r = kernel_size // 2
    t = tf.range(-r, r + 1, dtype=tf.float32)
    w = tf.exp(-(t[None, :] ** 2) / (2.0 * sigma[:, None] ** 2))
    w = w / tf.reduce_sum(w, axis=1, keepdims=True)

    def one_pass(y, axis):
        size = y.shape[axis]
        pad = [[0, 0]] * 4
        pad[axis] = [r, r]
        y = tf.pad(y, pad, mode="REFLECT")

        def tap(i):
            begin = [0, 0, 0, 0]
            begin[axis] = i
            shape = [-1, -1, -1, -1]
            shape[axis] = size
            return tf.slice(y, begin, shape)

        out = w[:, r, None, None, None] * tap(r)
        for i in range(r):
            out += w[:, i, None, None, None] * (tap(i) + tap(kernel_size - 1 - i))
        return out

    return one_pass(one_pass(x, 3), 2)


# The sizes the configs train at (32: CIFAR presets, 224: ImageNet and photos) and one between.
@pytest.mark.parametrize("side", [32, 96, 224])
def test_blur_equals_the_full_kernel_within_float32_rounding(side):
    kernel = augment.blur_kernel_size(side)
    sigmas = np.concatenate([np.linspace(0.1, 2.0, 6), [0.05, 3.0]]).astype(np.float32)  # the preset's range, beyond
    x = tf.constant(np.random.default_rng(side).uniform(0, 1, (len(sigmas), 3, side, side)).astype(np.float32))
    for one_at_a_time in (True, False):
        if one_at_a_time:  # as the pixel program calls it: one example, its own σ, in XLA
            fast = tf.function(lambda a, s: _gaussian_blur(a, s, kernel), jit_compile=True)
            old = tf.function(lambda a, s: _blur_before(a, s, kernel), jit_compile=True)
            got = np.concatenate([fast(x[i : i + 1], sigmas[i : i + 1]).numpy() for i in range(len(sigmas))])
            want = np.concatenate([old(x[i : i + 1], sigmas[i : i + 1]).numpy() for i in range(len(sigmas))])
        else:  # a batch of different σ, eagerly: each example keeps its own σ
            got, want = _gaussian_blur(x, sigmas, kernel).numpy(), _blur_before(x, sigmas, kernel).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-7)
