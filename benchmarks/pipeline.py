"""Input pipeline throughput: view pairs per second, bt_keras against two baselines.

Workloads (both from JPEG folders, both decoded once and kept in memory by
every pipeline, so the comparison is about the augmentation work):

- CIFAR-10 train folder (50,000 JPEGs) at 32 px, preset ``cifar``;
- Imagenette photos (1,000 JPEGs, 224×224) at 224 px, preset ``imagenet``
  (bt_keras also measured streaming: no cache, crops decoded from the JPEG).

Baselines, written here:

(a) ``map_fn``: a per-image augmenter applied with ``tf.map_fn`` over each
    batch, as TF-Similarity's ``BarlowAugmenter`` does (stateful random ops,
    ``sample_distorted_bounding_box`` crop, ``tf.image.adjust_*`` jitter in a
    random order, per-image blur and solarize);
(b) ``keras layers``: the same recipe with Keras 3 preprocessing layers
    (``RandomZoom`` as the crop, ``RandomFlip``, ``RandomColorJitter``,
    ``RandomGrayscale``, ``RandomGaussianBlur``, ``Solarization``) on batches.
    Keras layers have no "apply with probability p" for jitter and solarize,
    so those run on every image: slightly more work than the recipe.

The machine may be shared: every pipeline runs ``--rounds`` times,
interleaved, and the best round is reported, all in one run.

The photos workload ends with a breakdown of bt_keras at 224 px: time to the
first batch, CPU time of the crops against the XLA pixel program, and the crop
cost when the sources are 448 px (downscaled, antialiased crops).

Usage:

    PYTHONPATH=. python benchmarks/pipeline.py            # both workloads
    PYTHONPATH=. python benchmarks/pipeline.py --seconds 5 --only cifar
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bt_keras import augment as bt_augment  # noqa: E402
from bt_keras import data as bt_data  # noqa: E402

AUTOTUNE = tf.data.AUTOTUNE
TRAIN_STEP_PAIRS_PER_S = (
    688  # CPU benchmark configuration's training rate at 32 px (benchmarks/train_step.py, 2026-12-01)
)


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


def extracted(archive: Path, cache: Path, expect: str) -> Path:
    root = cache / archive.name.split(".")[0]
    if not (root / expect).is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    return root


def decoded_array(folder: Path) -> np.ndarray:
    """All images of a folder decoded into one uint8 array (same size images)."""
    paths = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: bt_data.decode_rgb(tf.io.read_file(p)), num_parallel_calls=AUTOTUNE
    )
    return np.stack(list(ds.as_numpy_iterator()))


# --------------------------------------------------------------------------- #
# Baseline (a): per-image augmenter under tf.map_fn (TF-Similarity style)
# --------------------------------------------------------------------------- #


def _random_apply(fn, p, x):
    return tf.cond(tf.random.uniform([]) < p, lambda: fn(x), lambda: x)


def _crop(x, size):
    begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(x),
        tf.zeros([0, 0, 4]),
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    x = tf.slice(x, begin, crop_size)
    return tf.image.resize(x, [size, size], method="bicubic")


def _jitter(x):
    ops = [
        lambda v: tf.image.adjust_brightness(v, tf.random.uniform([], -0.4, 0.4)),
        lambda v: tf.image.adjust_contrast(v, tf.random.uniform([], 0.6, 1.4)),
        lambda v: tf.image.adjust_saturation(v, tf.random.uniform([], 0.8, 1.2)),
        lambda v: tf.image.adjust_hue(v, tf.random.uniform([], -0.1, 0.1)),
    ]
    order = tf.random.shuffle(tf.range(4))
    for i in range(4):
        x = tf.switch_case(order[i], [lambda f=f: f(x) for f in ops])
        x = tf.clip_by_value(x, 0.0, 1.0)
    return x


def _blur(x, kernel_size):
    sigma = tf.random.uniform([], 0.1, 2.0)
    r = kernel_size // 2
    t = tf.range(-r, r + 1, dtype=tf.float32)
    k = tf.exp(-(t**2) / (2 * sigma**2))
    k = k / tf.reduce_sum(k)
    kx = tf.tile(tf.reshape(k, [1, kernel_size, 1, 1]), [1, 1, 3, 1])
    ky = tf.tile(tf.reshape(k, [kernel_size, 1, 1, 1]), [1, 1, 3, 1])
    y = tf.nn.depthwise_conv2d(x[None], kx, [1, 1, 1, 1], "SAME")
    return tf.nn.depthwise_conv2d(y, ky, [1, 1, 1, 1], "SAME")[0]


def map_fn_augmenter(size, blur_p, solarize_p, mean, std):
    kernel = bt_augment.blur_kernel_size(size)

    def one(x):
        x = _crop(x, size) / 255.0
        x = _random_apply(tf.image.flip_left_right, 0.5, x)
        x = _random_apply(_jitter, 0.8, x)
        x = _random_apply(lambda v: tf.tile(tf.image.rgb_to_grayscale(v), [1, 1, 3]), 0.2, x)
        if blur_p > 0:
            x = _random_apply(lambda v: _blur(v, kernel), blur_p, x)
        if solarize_p > 0:
            x = _random_apply(lambda v: tf.where(v < 0.5, v, 1.0 - v), solarize_p, x)
        x = (x - mean) / std
        x.set_shape([size, size, 3])
        return x

    def pair(images):
        images = tf.cast(images, tf.float32)
        sig = tf.TensorSpec([size, size, 3], tf.float32)
        a = tf.map_fn(one, images, fn_output_signature=sig, parallel_iterations=os.cpu_count())
        b = tf.map_fn(one, images, fn_output_signature=sig, parallel_iterations=os.cpu_count())
        return a, b

    return pair


# --------------------------------------------------------------------------- #
# Baseline (b): Keras 3 preprocessing layers on batches
# --------------------------------------------------------------------------- #


def keras_augmenter(size, blur, mean, std):
    import keras

    def view(blur_p, solarize):
        layers = [
            keras.layers.RandomZoom(height_factor=(-0.7, 0.0)),
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomColorJitter(
                value_range=(0, 1),
                brightness_factor=0.4,
                contrast_factor=0.4,
                saturation_factor=(0.4, 0.6),
                hue_factor=0.1,
            ),
            keras.layers.RandomGrayscale(factor=0.2),
        ]
        if blur and blur_p > 0:
            layers.append(
                keras.layers.RandomGaussianBlur(
                    factor=blur_p, kernel_size=bt_augment.blur_kernel_size(size), sigma=(0.1, 2.0), value_range=(0, 1)
                )
            )
        if solarize:
            layers.append(keras.layers.Solarization(threshold_factor=(0.5, 0.5), value_range=(0, 1)))
        return keras.layers.Pipeline(layers)

    view_a, view_b = view(1.0, False), view(0.1, True)

    def pair(images):
        x = tf.image.resize(tf.cast(images, tf.float32), [size, size]) / 255.0
        a, b = view_a(x, training=True), view_b(x, training=True)
        return (a - mean) / std, (b - mean) / std

    return pair


# --------------------------------------------------------------------------- #
# Measurement
# --------------------------------------------------------------------------- #


def baseline_dataset(images, batch, fn):
    ds = tf.data.Dataset.from_tensor_slices(images).shuffle(len(images), seed=0).repeat()
    ds = ds.batch(batch, drop_remainder=True).map(fn, num_parallel_calls=AUTOTUNE, deterministic=False)
    opts = tf.data.Options()
    opts.deterministic = False
    return ds.prefetch(AUTOTUNE).with_options(opts)


def measure(ds, batch, seconds, warmup=3):
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(it)
        n += 1
    return n * batch / (time.perf_counter() - start)


def cpu_ms(fn, repeats=5):
    """CPU time (user + system, all threads) per call of ``fn``, after one warm-up call."""
    fn()
    start = sum(os.times()[:2])
    for _ in range(repeats):
        fn()
    return (sum(os.times()[:2]) - start) / repeats * 1000


def breakdown_224(src, arr, cfg, batch):
    """Where the 224-px time goes: start-up, crops against pixel program, larger sources."""
    t = time.perf_counter()
    ds = bt_data.two_view_dataset(src, batch_size=batch, image_size=224, augment=cfg)
    built = time.perf_counter() - t
    next(iter(ds))
    first = time.perf_counter() - t - built
    images = tf.constant(arr[:batch])
    keys = bt_augment.example_keys(0, 0, tf.range(batch, dtype=tf.int64))
    params = [bt_augment.sample_params(keys, 224, 224, cfg, view) for view in (0, 1)]
    whole = cpu_ms(lambda: [v.numpy() for v in bt_augment.augment_pair(images, seed=0, config=cfg, image_size=224)])
    pixels = cpu_ms(lambda: [bt_augment.apply_batch(images, params[v], cfg, v).numpy() for v in (0, 1)])
    large = tf.saturate_cast(tf.round(tf.image.resize(images, [448, 448], method="bicubic")), tf.uint8)
    whole_448 = cpu_ms(lambda: [v.numpy() for v in bt_augment.augment_pair(large, seed=0, config=cfg, image_size=224)])
    print(f"\n224 px breakdown, CPU ms per batch of {batch} pairs (all threads):")
    print(
        f"  a new bt_keras dataset: built in {built:.1f} s, first batch {first:.1f} s later (XLA compiles both views)"
    )
    print(
        f"  whole augmentation (augment_pair): {whole:.0f} ms = crops {whole - pixels:.0f} + pixel program {pixels:.0f}"
    )
    print(
        f"  same from 448-px sources (crops downscaled, antialiased): {whole_448:.0f} ms, crops "
        f"{whole_448 - pixels:.0f} ms ({(whole_448 - pixels) / max(whole - pixels, 1e-9):.1f}× the 224-px crops)"
    )


def run_workload(name, rows, batch, seconds, rounds):
    best = {label: 0.0 for label, _ in rows}
    datasets = {label: make() for label, make in rows}
    for r in range(rounds):
        for label, _ in rows:
            rate = measure(datasets[label], batch, seconds)
            best[label] = max(best[label], rate)
            print(f"  [{name}] round {r + 1}: {label}: {rate:,.0f} pairs/s", flush=True)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="directory with the .tar.gz archives")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "bt_keras" / "bench-data"))
    p.add_argument("--seconds", type=float, default=12.0, help="measuring time per pipeline and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", choices=["cifar", "photos"], default=None)
    args = p.parse_args(argv)
    data, cache = Path(args.data), Path(args.cache)
    print(f"TF {tf.__version__}, {os.cpu_count()} CPU cores, load average at start {os.getloadavg()[0]:.1f}")
    results = []

    if args.only in (None, "cifar"):
        root = extracted(data / "cifar10-jpg.tar.gz", cache, "train")
        folder = root / "train"
        t = time.perf_counter()
        src = f"folder:{folder}"
        n = bt_data.count_examples(src)
        print(
            f"CIFAR-10 train folder: {n:,} images; bt_keras scan + decode into memory {time.perf_counter() - t:.1f} s"
        )
        arr = decoded_array(folder)
        cfg = bt_augment.get_preset("cifar")
        mean, std = tf.constant(cfg.mean), tf.constant(cfg.std)
        batch = 256

        def ours():
            return bt_data.two_view_dataset(src, batch_size=batch, image_size=32, augment=cfg).repeat()

        rows = [
            ("bt_keras", ours),
            ("(a) map_fn per image", lambda: baseline_dataset(arr, batch, map_fn_augmenter(32, 0.0, 0.2, mean, std))),
            ("(b) Keras 3 layers", lambda: baseline_dataset(arr, batch, keras_augmenter(32, False, mean, std))),
        ]
        results.append(("CIFAR-10 JPEG, 32 px", batch, run_workload("cifar", rows, batch, args.seconds, args.rounds)))

    if args.only in (None, "photos"):
        root = extracted(data / "imagenette-224-mini.tar.gz", cache, "train")
        folder = root / "train"
        src = f"folder:{folder}"
        t = time.perf_counter()
        n = bt_data.count_examples(src)
        print(
            f"Imagenette train folder: {n:,} photos; bt_keras scan + decode into memory {time.perf_counter() - t:.1f} s"
        )
        arr = decoded_array(folder)
        cfg = bt_augment.get_preset("imagenet")
        mean, std = tf.constant(cfg.mean), tf.constant(cfg.std)
        batch = 128

        def ours(cache=None):
            return lambda: bt_data.two_view_dataset(
                src, batch_size=batch, image_size=224, augment=cfg, cache=cache
            ).repeat()

        rows = [
            ("bt_keras", ours()),
            ("bt_keras streaming (JPEG crop-decode, no cache)", ours(False)),
            ("(a) map_fn per image", lambda: baseline_dataset(arr, batch, map_fn_augmenter(224, 0.55, 0.1, mean, std))),
            ("(b) Keras 3 layers", lambda: baseline_dataset(arr, batch, keras_augmenter(224, True, mean, std))),
        ]
        results.append(
            ("Imagenette photos, 224 px", batch, run_workload("photos", rows, batch, args.seconds, args.rounds))
        )
        breakdown_224(src, arr, cfg, batch)

    print(f"\nload average at end {os.getloadavg()[0]:.1f}; best of {args.rounds} rounds of {args.seconds:.0f} s\n")
    print("| workload | batch | pipeline | view pairs/s | vs faster baseline |")
    print("|---|---|---|---|---|")
    for workload, batch, best in results:
        base = max(v for k, v in best.items() if k.startswith("("))
        for label, rate in best.items():
            print(f"| {workload} | {batch} | {label} | {rate:,.0f} | {rate / base:.1f}× |")
    for workload, _, best in results:
        if "32 px" in workload:
            ok = best["bt_keras"] >= 3 * TRAIN_STEP_PAIRS_PER_S
            print(
                f"\n32 px target: ≥ {3 * TRAIN_STEP_PAIRS_PER_S:,} pairs/s (3× the ≈{TRAIN_STEP_PAIRS_PER_S} pairs/s "
                f"training step): {'met' if ok else 'NOT met'} ({best['bt_keras']:,.0f})"
            )
    for workload, _, best in results:
        base = max(v for k, v in best.items() if k.startswith("("))
        ratio = best["bt_keras"] / base
        print(f"{workload}: {ratio:.1f}× the faster baseline ({'met' if ratio >= 2 else 'NOT met'}: target 2×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
