"""The two datasets: augmented view pairs for training, labelled images for evaluation.

Both prepare their source the same way (:func:`~bt_keras.data.prepare.prepare`),
take the per-replica batch from one helper (:func:`per_replica_batch`) and
read only their input pipeline's shard. The views themselves are made by
:class:`~bt_keras.augment.TwoViews`, which also chooses the crop algorithm.

Examples:

>>> from bt_keras.data.pipelines import eval_dataset
>>> ds = eval_dataset("demo:test", batch_size=128, image_size=32, crop_fraction=1.0)
>>> sum(int(y.shape[0]) for _, y in ds)
359
"""

from __future__ import annotations

import tensorflow as tf

from bt_keras.augment.views import TwoViews
from bt_keras.contract import IMAGENET_MEAN, IMAGENET_STD, MAX_IMAGE_PIXELS
from bt_keras.data.checks import check_positive
from bt_keras.data.prepare import prepare
from bt_keras.data.service import ServiceConfig
from bt_keras.data.sources import AUTOTUNE, plain, source_name
from bt_keras.data.validation import report_skipped
from bt_keras.errors import DataError
from bt_keras.preprocess import preprocess_for_eval

__all__ = ["eval_dataset", "per_replica_batch", "two_view_dataset"]


def per_replica_batch(batch_size: int, input_context=None) -> int:
    """The batch of one replica: ``batch_size`` is global; without a context it is the batch.

    >>> ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0, num_replicas_in_sync=4)
    >>> per_replica_batch(8, ctx), per_replica_batch(8)
    (2, 8)
    """
    check_positive("batch_size", batch_size)
    return input_context.get_per_replica_batch_size(batch_size) if input_context is not None else batch_size


def _shard_of(input_context):
    if input_context is None:
        return (1, 0)
    return (int(input_context.num_input_pipelines), int(input_context.input_pipeline_id))


def _options(deterministic: bool, sharded: bool) -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = deterministic
    opts.autotune.enabled = True
    opts.experimental_optimization.map_parallelization = True
    if sharded:
        # Each input pipeline already reads only its own files or examples.
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return opts


def _epoch_keys(seed: int):
    """One int64 per element, constant within a pass and different for each new pass.

    ``rerandomize_each_iteration`` advances a seed generator every time the
    dataset is iterated again, so epoch k of a run is the same for every run
    with the same seed.
    """
    first = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return first.flat_map(lambda k: tf.data.Dataset.from_tensors(k).repeat())


def _image_at(mem):
    get = mem.index_to_example()
    return lambda i: get(i)[1]


def two_view_dataset(
    source,
    *,
    batch_size: int,
    image_size: int = 32,
    augment=None,
    seed: int = 0,
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    skipped_path: str | None = None,
    shuffle_buffer: int = 10_000,
    cache: bool | None = None,
    cache_max_mb: int = 2048,
    validate: str = "auto",
    deterministic: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    service: ServiceConfig | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of two augmented views ``(view_a, view_b)`` of the same images.

    Each is float32 ``[b, image_size, image_size, 3]``, normalised with the
    augmentation config's mean/std; ``b = batch_size`` or, with an
    ``input_context``, its per-replica share (and only this pipeline's shard
    of the data is read). The last partial batch is dropped (static shapes).
    One pass over the dataset is one epoch; every new pass is reshuffled and
    re-augmented, the same way in every run with the same ``seed``.

    Args:
        source: a source string or NumPy arrays (see :mod:`bt_keras.data`).
        batch_size: the global batch.
        image_size: side of the views.
        augment: an :class:`~bt_keras.augment.AugmentConfig` or a preset name
            (default ``cifar``).
        seed: the views' and the shuffle's seed.
        data_dir, shuffle_buffer, cache, cache_max_mb, validate, deterministic,
        max_image_pixels: as in :class:`~bt_keras.data.DataConfig`.
        input_context: a ``tf.distribute.InputContext``.
        skipped_path: where to write the skipped files as TSV.
        service: a :class:`~bt_keras.data.service.ServiceConfig`; when it names a
            dispatcher, the pairs are computed on tf.data service workers
            (:mod:`bt_keras.data.service`; a folder is then streamed, not
            cached, unless ``cache`` is True, so the workers read the files).
        repeat: endless: every pass a new epoch, as ``.repeat()`` would do; with
            a service the repetition runs on the workers, so epochs keep their keys.

    Examples:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).integers(0, 256, (64, 40, 40, 3), dtype=np.uint8)
    >>> ds = two_view_dataset(x, batch_size=16, image_size=32, augment="imagenet")
    >>> [a.shape for a in next(iter(ds))]
    [TensorShape([16, 32, 32, 3]), TensorShape([16, 32, 32, 3])]
    """
    views = TwoViews(augment, image_size, seed)
    check_positive("batch_size", batch_size)
    check_positive("image_size", image_size)
    b = per_replica_batch(batch_size, input_context)
    shard = _shard_of(input_context)
    served = service is not None and service.enabled
    if served:
        service.check_reachable()  # before the source is listed and validated
    prep = prepare(
        source,
        data_dir=data_dir,
        shard=shard,
        cache=False if served and cache is None else cache,
        cache_max_mb=cache_max_mb,
        validate=validate,
        max_image_pixels=max_image_pixels,
    )
    report_skipped(prep.skipped, prep.num_examples, skipped_path)
    if prep.num_examples < b:
        raise DataError(
            f"{source_name(source)}: {prep.num_examples:,} usable images in this input pipeline, "
            f"fewer than one batch of {b:,} (batches are full-size for static shapes)"
        )
    # Distinct, reproducible streams for each input pipeline.
    stream_seed = int(seed) * 1_000_003 + shard[1]
    keys = _epoch_keys(stream_seed)
    # distributed_epoch workers each see part of an epoch: they send single pairs
    # (no partial batch of theirs is dropped) and the trainer batches them.
    singles = served and service.mode == "distributed_epoch"
    if prep.memory is not None:
        ds = _pairs_in_memory(prep.memory, views, keys, b, stream_seed, deterministic, singles)
    else:
        ds = _pairs_streamed(
            prep, views, keys, b, stream_seed, deterministic, shuffle_buffer, input_context, max_image_pixels, singles
        )
    options = _options(deterministic, input_context is not None)
    ds = ds.repeat() if repeat else ds
    if served:
        ds = service.distribute(ds.with_options(options), tag=f"p{shard[1]}of{shard[0]}-s{stream_seed}")
        ds = ds.batch(b, drop_remainder=True) if singles else ds
    return ds.prefetch(AUTOTUNE).with_options(options)


def _pairs_in_memory(mem, views: TwoViews, keys, b: int, stream_seed: int, deterministic: bool, singles=False):
    """Whole batches of in-memory images, parameters drawn for the batch at once (``singles``: then unbatched)."""
    make = views.in_memory(mem.uids, mem.image_sizes(), lambda: _image_at(mem), mem.images)
    ds = tf.data.Dataset.range(mem.n).shuffle(mem.n, seed=stream_seed, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip((ds.batch(b, drop_remainder=not singles), keys))
    ds = ds.map(plain(make), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return ds.unbatch() if singles else ds


def _pairs_streamed(
    prep, views: TwoViews, keys, b, stream_seed, deterministic, shuffle_buffer, input_context, max_pixels, singles=False
):
    """Streamed records: per-example crops (JPEG crop-decoded), then the pixel stage per batch.

    ``singles``: the last partial batch is kept and the pairs unbatched again.
    """
    ds = prep.stream(
        shuffle_seed=stream_seed,
        deterministic=deterministic,
        shuffle_buffer=shuffle_buffer,
        input_context=input_context,
    )
    ds = tf.data.Dataset.zip((ds, keys))

    def per_example(example, epoch_key):
        uid, data, _ = example
        return views.crops_from_bytes(data, views.keys(epoch_key, uid), max_pixels)

    ds = ds.map(plain(per_example), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    # Validated upstream; anything left that fails to decode is skipped with a logged warning.
    ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(b, drop_remainder=not singles, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.map(plain(views.finish), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return ds.unbatch() if singles else ds


def eval_dataset(
    source,
    *,
    batch_size: int,
    image_size: int,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    crop_fraction: float | None = None,
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    skipped_path: str | None = None,
    cache: bool | None = None,
    cache_max_mb: int = 2048,
    validate: str = "auto",
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    with_ids: bool = False,
    pixel_shuffle_seed: int | None = None,
    prepared=None,
    skipped_shown_as: str | None = None,
) -> tf.data.Dataset:
    """Labelled single views for evaluation: ``(images, labels)`` batches.

    Images are centre-cropped (``crop_fraction`` of the shorter side), resized
    and normalised by :func:`bt_keras.preprocess.preprocess_for_eval`, the code
    the exported serving signature runs. Order is deterministic and the last
    partial batch is kept. A source without labels is a ``DataError``, unless
    ``with_ids``: then batches are ``(images, labels, uids)`` (labels -1 when
    the source has none; ``uids`` name the examples, see
    :mod:`~bt_keras.data.sources`), as ``bt-embed`` needs them.

    Args:
        source: a labelled source string or ``(images, labels)`` arrays.
        batch_size: the global batch.
        image_size, mean, std, crop_fraction: the preprocessing contract
            (``crop_fraction`` None: :func:`~bt_keras.contract.default_crop_fraction`).
        data_dir, cache, cache_max_mb, validate, max_image_pixels: as in :class:`~bt_keras.data.DataConfig`.
        input_context: a ``tf.distribute.InputContext``.
        skipped_path: where to write the skipped files as TSV.
        with_ids: also give each example's uid, and accept unlabelled sources.
        pixel_shuffle_seed: the contract's pixel-shuffle ablation (None: off):
            the images' pixel positions permuted as the run's training views were.
        prepared: the :func:`~bt_keras.data.prepare.prepare` result of ``source`` to read
            (None: prepared here); a caller that maps uids to paths passes the one it uses,
            so a file added meanwhile cannot shift them (a second listing would see it).
        skipped_shown_as: the path the skipped-files summary names (default ``skipped_path``).

    Examples:

    >>> from bt_keras.contract import CIFAR10_MEAN, CIFAR10_STD
    >>> ds = eval_dataset("demo:test", batch_size=128, image_size=32, mean=CIFAR10_MEAN,
    ...                   std=CIFAR10_STD, crop_fraction=1.0)
    >>> sum(int(y.shape[0]) for _, y in ds)
    359
    """
    check_positive("batch_size", batch_size)
    check_positive("image_size", image_size)
    b = per_replica_batch(batch_size, input_context)
    prep = prepared or prepare(
        source,
        data_dir=data_dir,
        shard=_shard_of(input_context),
        cache=cache,
        cache_max_mb=cache_max_mb,
        validate=validate,
        max_image_pixels=max_image_pixels,
    )
    if not prep.has_labels and not with_ids:
        raise DataError(
            f"{source_name(source)}: no labels (folders need one sub-folder per class; TFRecords need "
            "image/class/label; arrays need (images, labels))"
        )
    report_skipped(prep.skipped, prep.num_examples, skipped_path, skipped_shown_as)
    mean, std = tuple(mean), tuple(std)

    def prep_fn(x):
        return preprocess_for_eval(
            x, image_size, mean=mean, std=std, crop_fraction=crop_fraction, max_pixels=max_image_pixels
        )

    if pixel_shuffle_seed is not None:
        from bt_keras.augment.shuffle import pixel_permutation, shuffle_pixels

        permutation, unshuffled = pixel_permutation(image_size, pixel_shuffle_seed), prep_fn

        def prep_fn(x):
            return shuffle_pixels(unshuffled(x), permutation)

    ds = _labelled_images(prep, prep_fn, input_context, with_ids)
    ds = ds.batch(b, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)
    return ds.with_options(_options(True, input_context is not None))


def _labelled_images(prep, prep_fn, input_context, with_ids=False):
    """``(prep_fn(image), label)`` (and the uid, ``with_ids``) of every usable example, in order."""

    def out(uid, image, label):
        return (prep_fn(image), label, uid) if with_ids else (prep_fn(image), label)

    if prep.memory is not None:
        get = prep.memory.index_to_example()
        return tf.data.Dataset.range(prep.memory.n).map(
            plain(lambda i: out(*get(i))), num_parallel_calls=AUTOTUNE, deterministic=True
        )
    ds = prep.stream(deterministic=True, input_context=input_context)
    ds = ds.map(plain(out), num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.ignore_errors(log_warning=True)
