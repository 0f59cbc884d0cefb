"""bt_keras: Barlow Twins self-supervised learning for Keras 3.

The loss is that of the global batch across replicas, so training gives the
same result on one device, several GPUs, several hosts or a TPU pod.

The public API lives here. Names are imported on first use (PEP 562), so
``import bt_keras`` and the ``bt-*`` commands' argument and config checks do
not pay for importing TensorFlow.

Examples:

>>> import bt_keras
>>> bt_keras.barlow_twins_loss.__module__
'bt_keras.losses'
"""

from __future__ import annotations

from bt_keras._lazy import lazy_namespace
from bt_keras.version import __version__ as __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "AugmentConfig": "bt_keras.augment",
    "get_preset": "bt_keras.augment",
    "DataConfig": "bt_keras.data",
    "count_examples": "bt_keras.data",
    "eval_dataset": "bt_keras.data",
    "load_demo": "bt_keras.data",
    "two_view_dataset": "bt_keras.data",
    "write_tfrecords": "bt_keras.data",
    "EmbeddingSet": "bt_keras.embed",
    "embed_source": "bt_keras.embed",
    "build_encoder": "bt_keras.encoders",
    "resnet": "bt_keras.encoders",
    "small_cnn": "bt_keras.encoders",
    "export_encoder": "bt_keras.export",
    "build_backbone": "bt_keras.backbones",
    "apply_cpu_threads": "bt_keras.cpu_threads",
    "JaxDataParallel": "bt_keras.distribute",
    "use_jax_compilation_cache": "bt_keras.distribute",
    "duplicate_pairs": "bt_keras.embed",
    "nearest_neighbors": "bt_keras.embed",
    "write_projector": "bt_keras.embed",
    "evaluate": "bt_keras.evaluation",
    "knn_accuracy": "bt_keras.evaluation",
    "linear_probe": "bt_keras.evaluation",
    "pixel_permutation": "bt_keras.augment",
    "shuffle_pixels": "bt_keras.augment",
    "load_frozen_encoder": "bt_keras.frozen",
    "FusedBatchNormalization": "bt_keras.layers",
    "BarlowTwinsTerms": "bt_keras.losses",
    "barlow_twins_loss": "bt_keras.losses",
    "barlow_twins_terms": "bt_keras.losses",
    "BarlowTwins": "bt_keras.model",
    "build_projector": "bt_keras.model",
    "LARS": "bt_keras.optimizers",
    "WarmupCosine": "bt_keras.optimizers",
    "PreprocessingContract": "bt_keras.contract",
    "save_portable_encoder": "bt_keras.saving",
}
_SUBMODULES = (
    "augment",
    "callbacks",
    "contract",
    "cpu_threads",
    "data",
    "embed",
    "encoders",
    "errors",
    "evaluation",
    "export",
    "file_checks",
    "frozen",
    "io",
    "layers",
    "losses",
    "model",
    "optimizers",
    "precision",
    "preprocess",
    "recipe",
    "saving",
    "tf_config",
    "training",
)

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS, submodules=_SUBMODULES)
