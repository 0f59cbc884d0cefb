"""Augmentations: the paper's recipe, per-example randomness, rates and reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from bt_keras import augment
from bt_keras.augment import AugmentConfig, get_preset, pixel
from bt_keras.cli import UserError
from bt_keras.preprocess import CIFAR10_MEAN, IMAGENET_MEAN, IMAGENET_STD

N_DRAWS = 2400  # ≥ 2,000 per rate test: 3σ at p=0.5 is ±0.031


def _params(cfg, view, n=N_DRAWS, height=200, width=300, seed=0):
    keys = augment.example_keys(seed, 0, tf.range(n, dtype=tf.int64))
    return {k: v.numpy() for k, v in augment.sample_params(keys, height, width, cfg, view).items()}


def _within_3_sigma(rate, p, n):
    if p in (0.0, 1.0):
        return rate == p
    return abs(rate - p) <= 3 * math.sqrt(p * (1 - p) / n)


def _only(op, **settings):
    """A config with every op off except ``op`` (and no crop), for output-level rate tests."""
    off = {name: {"enabled": False} for name in ("crop", "flip", "color_jitter", "grayscale", "blur", "solarize")}
    off[op] = {"enabled": True, **settings}
    return get_preset("imagenet", **off)


def _test_image(size=32):
    """Asymmetric, colourful, mid-range values: every op changes it visibly."""
    rng = np.random.default_rng(7)
    x = rng.integers(30, 226, (size, size, 3)).astype(np.uint8)
    x[:, : size // 2, 0] = 240  # left/right asymmetry for the flip
    return x


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


def test_imagenet_preset_is_the_papers_recipe():
    cfg = get_preset("imagenet")
    assert cfg.crop.enabled and cfg.crop.scale == (0.08, 1.0) and cfg.crop.method == "bicubic"
    assert cfg.crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert cfg.flip.prob == 0.5
    j = cfg.color_jitter
    assert (j.prob, j.brightness, j.contrast, j.saturation, j.hue, j.random_order) == (0.8, 0.4, 0.4, 0.2, 0.1, True)
    assert cfg.grayscale.prob == 0.2
    assert cfg.blur.enabled and cfg.blur.prob == (1.0, 0.1) and cfg.blur.sigma == (0.1, 2.0)
    assert cfg.solarize.enabled and cfg.solarize.prob == (0.0, 0.2) and cfg.solarize.threshold == 0.5
    assert cfg.mean == IMAGENET_MEAN and cfg.std == IMAGENET_STD
    assert augment.blur_kernel_size(224, cfg.blur.kernel_fraction) == 23  # torchvision's 23 at 224 px


def test_cifar_preset_has_no_blur_and_cifar_statistics():
    cfg = AugmentConfig().resolve()  # the default preset
    assert cfg.preset == "cifar" and not cfg.blur.enabled and cfg.solarize.enabled
    assert cfg.mean == CIFAR10_MEAN


def test_none_preset_only_normalises():
    cfg = get_preset("none")
    assert not any(getattr(cfg, op).enabled for op in ("crop", "flip", "color_jitter", "grayscale", "blur", "solarize"))
    img = _test_image(16)
    a, b = augment.augment_pair(img[None], seed=3, config=cfg, normalize=False)
    np.testing.assert_allclose(a.numpy()[0] * 255, img, atol=1e-3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_overrides_keep_the_rest_of_the_preset():
    cfg = AugmentConfig(
        preset="imagenet",
        blur=augment.BlurConfig(prob=(0.5, 0.5)),
        grayscale={"enabled": False} if False else augment.GrayscaleConfig(enabled=False),
    ).resolve()
    assert cfg.blur.prob == (0.5, 0.5) and cfg.blur.sigma == (0.1, 2.0)
    assert not cfg.grayscale.enabled and cfg.grayscale.prob == 0.2
    assert get_preset("cifar", color_jitter={"hue": 0.0}).color_jitter.brightness == 0.4


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"flip": {"prob": 1.5}}, "augment.flip.prob"),
        ({"crop": {"scale": (0.9, 0.2)}}, "augment.crop.scale"),
        ({"crop": {"method": "cubic"}}, "augment.crop.method"),
        ({"color_jitter": {"hue": 0.7}}, "augment.color_jitter.hue"),
        ({"blur": {"prob": (1.0,)}}, "augment.blur.prob"),
        ({"blur": {"sigma": (0.0, 1.0)}}, "augment.blur.sigma"),
        ({"solarize": {"threshold": 2}}, "augment.solarize.threshold"),
        ({"std": (0.2, 0.0, 0.2)}, "augment.std"),
        ({"grayscale": {"size": 3}}, "augment.grayscale.size"),
    ],
)
def test_bad_values_are_one_line_user_errors_naming_the_field(overrides, field):
    with pytest.raises(UserError) as e:
        get_preset("imagenet", **overrides)
    assert str(e.value).startswith(field + ":") and "\n" not in str(e.value)
    with pytest.raises(UserError, match="augment.preset"):
        AugmentConfig(preset="simclr")


def test_yaml_loader_builds_the_nested_config():
    from bt_keras.config import ConfigError, config_from_dict

    cfg = config_from_dict({"data": {"augment": {"preset": "imagenet", "blur": {"prob": [1.0, 0.5]}}}})
    resolved = cfg.data.augment.resolve()
    assert resolved.blur.prob == (1.0, 0.5) and resolved.solarize.prob == (0.0, 0.2)
    with pytest.raises(ConfigError, match="blur.prob"):
        config_from_dict({"data": {"augment": {"blur": {"prob": [1.0, 3.0]}}}})


# --------------------------------------------------------------------------- #
# Rates and ranges of the random parameters (per example, ≥ 2,000 draws)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("view", [0, 1])
def test_parameter_rates_within_3_sigma(view):
    cfg = get_preset("imagenet")
    p = _params(cfg, view)
    expected = {
        "flip": 0.5,
        "jitter": 0.8,
        "grayscale": 0.2,
        "blur": cfg.blur.prob[view],
        "solarize": cfg.solarize.prob[view],
    }
    for name, prob in expected.items():
        rate = p[name].mean()
        assert _within_3_sigma(rate, prob, N_DRAWS), (name, view, rate, prob)
    # Independent coins: flips and grayscale are uncorrelated across examples.
    both = (p["flip"] & p["grayscale"]).mean()
    assert _within_3_sigma(both, 0.1, N_DRAWS)


def test_parameter_ranges():
    cfg = get_preset("imagenet")
    p = _params(cfg, 1, height=200, width=300)
    f = p["jitter_factors"]
    for k, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        assert f[:, k].min() >= lo and f[:, k].max() <= hi
        assert f[:, k].min() < lo + 0.05 * (hi - lo) and f[:, k].max() > hi - 0.05 * (hi - lo)  # spans the range
    assert p["blur_sigma"].min() >= 0.1 and p["blur_sigma"].max() <= 2.0
    order = p["jitter_order"]
    assert (np.sort(order, axis=1) == np.arange(4)).all()  # a permutation each time
    first = np.bincount(order[:, 0], minlength=4) / N_DRAWS
    assert all(_within_3_sigma(r, 0.25, N_DRAWS) for r in first), first
    top, left, h, w = p["crop"].T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 200).all() and (left + w <= 300).all()
    area = h * w / (200 * 300)
    ratio = w / h
    assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
    assert ratio.min() >= 0.75 - 0.02 and ratio.max() <= 4 / 3 + 0.02
    assert area.max() > 0.8 and area.min() < 0.1  # 0.89 is the largest 4:3 box in 200×300
    # Positions spread over the whole image.
    assert top.min() == 0 and left.min() == 0 and (top + h).max() == 200 and (left + w).max() == 300


def test_crop_area_is_uniform_and_ratio_log_uniform_when_every_attempt_fits():
    # With scale ≤ 0.3 every first attempt fits a 200×300 image, so no rejection bias.
    cfg = get_preset("imagenet", crop={"scale": (0.08, 0.3)})
    _, _, h, w = _params(cfg, 0, height=200, width=300)["crop"].T
    area = h * w / 60000
    quartiles = np.quantile(area, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(quartiles, [0.135, 0.19, 0.245], atol=0.012)
    log_ratio = np.log(w / h)
    # Uniform on [log 3/4, log 4/3]: symmetric around 0, quartiles at ±0.144.
    np.testing.assert_allclose(np.quantile(log_ratio, [0.25, 0.5, 0.75]), [-0.144, 0.0, 0.144], atol=0.03)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (1000, 4), (5, 2000)])
def test_crops_of_tiny_and_extreme_images_are_valid(shape):
    h, w = shape
    cfg = get_preset("imagenet")
    p = _params(cfg, 0, n=200, height=h, width=w)
    top, left, ch, cw = p["crop"].T
    assert (ch >= 1).all() and (cw >= 1).all() and (top + ch <= h).all() and (left + cw <= w).all()
    img = np.random.default_rng(0).integers(0, 256, (4, h, w, 3), dtype=np.uint8)
    a, b = augment.augment_pair(img, seed=0, config=cfg, image_size=24)
    assert a.shape == (4, 24, 24, 3) and np.isfinite(a.numpy()).all() and np.isfinite(b.numpy()).all()


# --------------------------------------------------------------------------- #
# Application rates measured on the outputs, per op and per view
# --------------------------------------------------------------------------- #


def _applied(op, out, image):
    """Per-example booleans: did ``op`` change the image (measured on outputs)."""
    out = out.numpy()
    x = image.astype(np.float32) / 255.0
    if op == "flip":
        is_flipped = np.abs(out - x[:, ::-1]).max(axis=(1, 2, 3)) < 1e-6
        is_same = np.abs(out - x).max(axis=(1, 2, 3)) < 1e-6
        assert (is_flipped ^ is_same).all()  # always one or the other, never half-flipped
        return is_flipped
    if op == "grayscale":
        return (np.ptp(out, axis=3) < 1e-6).all(axis=(1, 2))
    return np.abs(out - x).max(axis=(1, 2, 3)) > 1e-6


@pytest.mark.parametrize(
    "op, settings",
    [
        ("flip", {}),
        ("color_jitter", {}),
        ("grayscale", {}),
        # σ ≥ 0.6 so every applied blur visibly changes a 3-tap kernel's output.
        ("blur", {"sigma": (0.6, 2.0)}),
        ("solarize", {}),
    ],
)
def test_output_application_rate_within_3_sigma_for_each_view(op, settings):
    cfg = _only(op, **settings)
    image = _test_image()
    views = augment.augment_pair(np.repeat(image[None], N_DRAWS, axis=0), seed=11, config=cfg, normalize=False)
    for view, out in enumerate(views):
        p = {
            "flip": cfg.flip.prob,
            "color_jitter": cfg.color_jitter.prob,
            "grayscale": cfg.grayscale.prob,
            "blur": cfg.blur.prob[view],
            "solarize": cfg.solarize.prob[view],
        }[op]
        rate = _applied(op, out, image).mean()
        assert _within_3_sigma(rate, p, N_DRAWS), (op, view, rate, p)


# --------------------------------------------------------------------------- #
# Pixel operations against reference formulas
# --------------------------------------------------------------------------- #


def _gray_np(x):
    return x @ np.array([0.299, 0.587, 0.114], np.float32)


def _cf(fn, x, *args):
    """Runs a channels-first pixel op on NHWC numpy data, returns NHWC."""
    out = fn(tf.transpose(tf.constant(x), [0, 3, 1, 2]), *(tf.constant(a) for a in args))
    return tf.transpose(out, [0, 2, 3, 1]).numpy()


def test_color_jitter_ops_match_torchvision_formulas():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.05, 0.95, (4, 8, 8, 3)).astype(np.float32)
    f = np.array([0.7, 1.3, 0.9, 1.1], np.float32)
    fb = f[:, None, None, None]
    np.testing.assert_allclose(_cf(pixel._brightness, x, f), np.clip(x * fb, 0, 1), atol=1e-6)
    m = _gray_np(x).mean(axis=(1, 2))[:, None, None, None]
    np.testing.assert_allclose(_cf(pixel._contrast, x, f), np.clip(fb * x + (1 - fb) * m, 0, 1), atol=1e-6)
    g = _gray_np(x)[..., None]
    np.testing.assert_allclose(_cf(pixel._saturation, x, f), np.clip(fb * x + (1 - fb) * g, 0, 1), atol=1e-6)
    hues = np.array([-0.1, 0.05, 0.0, 0.5], np.float32)
    ref = np.stack([tf.image.adjust_hue(x[i], hues[i]).numpy() for i in range(4)])
    np.testing.assert_allclose(_cf(pixel._hue, x, hues), ref, atol=1e-5)
    gray_pixels = np.full((1, 2, 2, 3), 0.4, np.float32)  # no chroma: hue is undefined and must not move
    np.testing.assert_allclose(_cf(pixel._hue, gray_pixels, np.array([0.3], np.float32)), gray_pixels)


@pytest.mark.parametrize("xla", [False, True])
def test_jitter_runs_each_examples_own_order(xla):
    x = np.full((2, 4, 4, 3), 0.6, np.float32)
    x[..., 0] = 0.9
    factors = np.array([[1.5, 0.5, 1.0, 0.0], [1.5, 0.5, 1.0, 0.0]], np.float32)
    order = np.array([[0, 1, 2, 3], [1, 0, 2, 3]], np.int32)  # brightness then contrast, and the reverse
    jitter = tf.function(pixel._color_jitter, jit_compile=True) if xla else pixel._color_jitter
    out = np.concatenate(
        [_cf(lambda a, f, o: jitter(a, tf.constant(True), f, o), x[i : i + 1], factors[i], order[i]) for i in range(2)]
    )
    b_then_c = _cf(pixel._contrast, _cf(pixel._brightness, x[:1], factors[:1, 0]), factors[:1, 1])
    c_then_b = _cf(pixel._brightness, _cf(pixel._contrast, x[1:], factors[1:, 1]), factors[1:, 0])
    np.testing.assert_allclose(out[:1], b_then_c, atol=1e-6)
    np.testing.assert_allclose(out[1:], c_then_b, atol=1e-6)
    assert np.abs(b_then_c - c_then_b).max() > 0.05  # the order matters for these inputs
    unchanged = _cf(lambda a, f, o: jitter(a, tf.constant(False), f, o), x[:1], factors[0], order[0])
    np.testing.assert_array_equal(unchanged, x[:1])


def test_blur_uses_each_examples_sigma_with_reflect_padding():
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (3, 20, 20, 3)).astype(np.float32)
    sigma = np.array([0.5, 1.0, 2.0], np.float32)
    k = 7
    out = _cf(lambda a, s: pixel._gaussian_blur(a, s, k), x, sigma)
    for i in range(3):
        # scipy's "mirror" is TF's REFLECT; truncate so the radius is k // 2.
        ref = x[i]
        for axis in (0, 1):
            ref = gaussian_filter1d(ref, sigma[i], axis=axis, mode="mirror", truncate=(k // 2) / sigma[i])
        np.testing.assert_allclose(out[i], ref, atol=1e-5)


def test_solarize_inverts_exactly_the_values_at_or_above_the_threshold():
    cfg = _only("solarize", prob=(1.0, 1.0))
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    a, _ = augment.augment_pair(img[None], seed=0, config=cfg, normalize=False)
    x = img / 255.0
    np.testing.assert_allclose(a.numpy()[0], np.where(x >= 0.5, 1 - x, x), atol=1e-6)


def test_grayscale_uses_luma_weights():
    cfg = _only("grayscale", prob=1.0)
    img = _test_image(8)
    a, _ = augment.augment_pair(img[None], seed=0, config=cfg, normalize=False)
    ref = _gray_np(img.astype(np.float32) / 255.0)
    np.testing.assert_allclose(a.numpy()[0, ..., 1], ref, atol=1e-6)


def test_bicubic_crop_resize_of_the_whole_image_is_identity():
    cfg = get_preset("imagenet")
    img = _test_image(16)
    params = {"crop": tf.constant([0, 0, 16, 16])}
    out = augment.crop_resize(tf.constant(img), params, 16, cfg)
    np.testing.assert_array_equal(out.numpy(), img)
    jpeg = tf.io.encode_jpeg(img, quality=100)
    crop = augment.decode_crop_resize(jpeg, {"crop": tf.constant([2, 3, 8, 8])}, 8, cfg)
    full = tf.io.decode_jpeg(jpeg)[2:10, 3:11]
    assert np.abs(crop.numpy().astype(int) - full.numpy().astype(int)).max() <= 1


# --------------------------------------------------------------------------- #
# Shapes, ranges and reproducibility
# --------------------------------------------------------------------------- #


def test_output_shapes_dtypes_and_ranges():
    cfg = get_preset("imagenet")
    img = np.random.default_rng(3).integers(0, 256, (16, 48, 40, 3), dtype=np.uint8)
    a, b = augment.augment_pair(img, seed=1, config=cfg, image_size=32, normalize=False)
    for v in (a, b):
        assert v.shape == (16, 32, 32, 3) and v.dtype == tf.float32
        assert float(tf.reduce_min(v)) >= 0.0 and float(tf.reduce_max(v)) <= 1.0
    an, _ = augment.augment_pair(img, seed=1, config=cfg, image_size=32)
    mean, std = np.array(cfg.mean), np.array(cfg.std)
    np.testing.assert_allclose(an.numpy(), (a.numpy() - mean) / std, atol=1e-5)


def test_same_seed_same_views_different_seed_different_views():
    cfg = get_preset("cifar")
    img = np.random.default_rng(4).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    a1, b1 = augment.augment_pair(img, seed=5, config=cfg)
    a2, b2 = augment.augment_pair(img, seed=5, config=cfg)
    a3, b3 = augment.augment_pair(img, seed=6, config=cfg)
    np.testing.assert_array_equal(a1.numpy(), a2.numpy())
    np.testing.assert_array_equal(b1.numpy(), b2.numpy())
    per_example = lambda u, v: np.abs(u.numpy() - v.numpy()).max(axis=(1, 2, 3))
    assert (per_example(a1, a3) > 0.1).all() and (per_example(b1, b3) > 0.1).all()
    assert (per_example(a1, b1) > 0.1).all()  # the two views of each image differ
    # An example's views do not depend on the rest of the batch.
    a_sub, _ = augment.augment_pair(img[:4], seed=5, config=cfg)
    np.testing.assert_allclose(a_sub.numpy(), a1.numpy()[:4], atol=1e-6)


@pytest.mark.parametrize("source_side, size", [(32, 32), (48, 32), (20, 32)])
def test_batched_matrix_crops_match_per_image_resize(source_side, size):
    cfg = get_preset("cifar")
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (64, source_side, source_side, 3), dtype=np.uint8)
    p = _params(cfg, 0, n=64, height=source_side, width=source_side)
    batched = augment.crop_resize_batch(
        tf.constant(img), tf.constant(p["crop"]), size, cfg, flip=tf.constant(p["flip"])
    )
    single = np.stack([augment.crop_resize(img[i], {"crop": p["crop"][i]}, size, cfg).numpy() for i in range(64)])
    single = np.where(p["flip"][:, None, None, None], single[:, :, ::-1], single)
    diff = np.abs(batched.numpy().astype(int) - single.astype(int))
    inner = diff[:, 2:-2, 2:-2]  # border pixels follow the antialiased resize's edge rule
    assert np.percentile(inner, 99) <= 1 and inner.mean() < 0.2, (inner.max(), inner.mean())
    assert diff.mean() < 1.0


def test_example_keys_are_a_pure_function_of_seed_epoch_and_id():
    ids = tf.constant([3, 1, 2], tf.int64)
    k1 = augment.example_keys(7, 11, ids).numpy()
    k2 = augment.example_keys(7, 11, tf.constant([1, 2, 3], tf.int64)).numpy()
    assert k1[0] == k2[2] and k1[1] == k2[0]
    assert len(set(k1)) == 3
    assert (augment.example_keys(8, 11, ids).numpy() != k1).all()
    assert (augment.example_keys(7, 12, ids).numpy() != k1).all()
    u = augment.uniforms(augment.example_keys(0, 0, tf.range(20000, dtype=tf.int64)), 4).numpy()
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03  # draws of one key are uncorrelated


@pytest.mark.parametrize("view", [0, 1])
def test_apply_batch_equals_the_recipe_composed_op_by_op(view):
    """The XLA per-image program against the ops applied one at a time, eagerly, per example."""
    cfg = get_preset("imagenet")
    n, side = 48, 40
    p = _params(cfg, view, n=n, height=side, width=side, seed=3)
    crops = np.random.default_rng(8).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    out = augment.apply_batch(tf.constant(crops), {k: tf.constant(v) for k, v in p.items()}, cfg, view).numpy()
    kernel = augment.blur_kernel_size(side)
    mean, std = np.array(cfg.mean, np.float32), np.array(cfg.std, np.float32)
    for i in range(n):
        x = tf.transpose(tf.constant(crops[i : i + 1], tf.float32) / 255.0, [0, 3, 1, 2])
        if p["flip"][i]:
            x = x[..., ::-1]
        if p["jitter"][i]:
            for k in p["jitter_order"][i]:
                x = pixel._JITTER_OPS[k](x, tf.constant(p["jitter_factors"][i, k : k + 1]))
        if p["grayscale"][i]:
            x = tf.tile(pixel._gray(x), [1, 3, 1, 1])
        if p["blur"][i]:
            x = pixel._gaussian_blur(x, tf.constant(p["blur_sigma"][i : i + 1]), kernel)
        if p["solarize"][i]:
            x = tf.where(x >= 0.5, 1.0 - x, x)
        ref = (tf.transpose(x, [0, 2, 3, 1]).numpy()[0] - mean) / std
        np.testing.assert_allclose(out[i], ref, atol=1e-4, err_msg=f"example {i}")
    # Every op with 0 < p < 1 in this view was taken by some examples and skipped by others.
    probs = {
        "flip": 0.5,
        "jitter": 0.8,
        "grayscale": 0.2,
        "blur": cfg.blur.prob[view],
        "solarize": cfg.solarize.prob[view],
    }
    for name, prob in probs.items():
        assert p[name].any() == (prob > 0) and p[name].all() == (prob == 1), name
