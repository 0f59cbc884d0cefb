"""Input pipelines: two augmented views for training, labelled images for evaluation.

Sources are named by a string (the ``data.source`` config key) or given as
NumPy arrays:

- ``demo`` / ``demo:train`` / ``demo:test``: scikit-learn's bundled digits
  (1,797 8×8 images) upsampled to 32×32 RGB, fixed 80/20 split; no network.
- ``tfds:NAME[:SPLIT]``: a prepared TensorFlow Datasets dataset in ``data_dir``
  (nothing is downloaded).
- ``folder:PATH``: every jpg/jpeg/png/bmp/gif under PATH (any letter case,
  recursive; local or ``gs://``); labels from the first-level sub-folders.
- ``tfrecord:GLOB``: ``tf.train.Example`` records with ``image/encoded`` and
  optionally ``image/class/label`` (``bt-data`` writes such shards).
- a uint8 array ``[N, H, W, 3]`` (or ``[N, H, W]`` / ``[N, H, W, 1]``), or a
  tuple ``(images, labels)``.

Bad files (empty, truncated, undecodable, not images, above
``data.max_image_pixels`` by their header, not regular files) are skipped and
reported: the number skipped is logged (``logging.getLogger("bt_keras")``)
and, when ``skipped_path`` is given, their paths and reasons are written
there as TSV. Small datasets are decoded once and kept in memory; large ones
are streamed, with JPEG crops decoded straight from the bytes.

One module per concern: :mod:`~bt_keras.data.config` (:class:`DataConfig`, no TensorFlow), :mod:`~bt_keras.data.demo`,
:mod:`~bt_keras.data.sources`, :mod:`~bt_keras.data.validation`,
:mod:`~bt_keras.data.prepare` (decode/cache decisions),
:mod:`~bt_keras.data.pipelines`, :mod:`~bt_keras.data.service` (tf.data service workers),
:mod:`~bt_keras.data.tfrecords` (writer) and
:mod:`~bt_keras.data.labelled` (probe and monitor datasets). Names are
imported on first use (PEP 562): ``import bt_keras.data.config`` does not
import TensorFlow.

Examples:

>>> from bt_keras import data
>>> ds = data.two_view_dataset("demo", batch_size=64, image_size=32)
>>> view_a, view_b = next(iter(ds))
>>> view_a.shape
TensorShape([64, 32, 32, 3])
>>> images, labels = next(iter(data.eval_dataset("demo:test", batch_size=100, image_size=32,
...     mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD, crop_fraction=1.0)))
>>> images.shape, labels.dtype
(TensorShape([100, 32, 32, 3]), tf.int32)
"""

from __future__ import annotations

from bt_keras._lazy import lazy_namespace

# Name -> the module that defines it.
_EXPORTS = {
    **{name: "bt_keras.contract" for name in ("CIFAR10_MEAN", "CIFAR10_STD", "IMAGENET_MEAN", "IMAGENET_STD")},
    "DataError": "bt_keras.errors",
    **{name: "bt_keras.data.config" for name in ("DataConfig", "VALIDATE_MODES")},
    "ServiceConfig": "bt_keras.data.service",
    **{name: "bt_keras.data.sources" for name in ("IMAGE_EXTENSIONS", "parse_source", "source_name")},
    **{name: "bt_keras.data.demo" for name in ("DEMO_TRAIN_FRACTION", "load_demo")},
    **{name: "bt_keras.data.prepare" for name in ("SourceInfo", "count_examples", "source_info")},
    **{name: "bt_keras.data.pipelines" for name in ("eval_dataset", "per_replica_batch", "two_view_dataset")},
    "write_tfrecords": "bt_keras.data.tfrecords",
    **{
        name: "bt_keras.data.labelled"
        for name in ("LabelledImages", "augmented_labelled_dataset", "crop_flip_config", "sample_labelled")
    },
    **{name: "bt_keras.preprocess" for name in ("decode_rgb", "preprocess_for_eval")},
    "VECTORISED_MAX_SIDE": "bt_keras.augment.views",
}

__all__ = sorted(_EXPORTS)


_SUBMODULES = (
    "checks",
    "config",
    "demo",
    "labelled",
    "pipelines",
    "prepare",
    "prepared_cache",
    "service",
    "source_base",
    "source_names",
    "sources",
    "tfrecords",
    "validation",
)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS, submodules=_SUBMODULES)
