"""bt_keras: Barlow Twins self-supervised learning for TensorFlow / Keras 3.

The loss is that of the global batch across replicas, so training gives the
same result on one device, several GPUs, several hosts or a TPU pod.
"""

from bt_keras import augment, callbacks, data, encoders, evaluation, layers, losses, optimizers, preprocess
from bt_keras.augment import AugmentConfig, get_preset
from bt_keras.data import DataConfig, count_examples, eval_dataset, load_demo, two_view_dataset, write_tfrecords
from bt_keras.encoders import build_encoder, resnet, small_cnn
from bt_keras.export import export_encoder
from bt_keras.layers import FusedBatchNormalization
from bt_keras.losses import BarlowTwinsTerms, barlow_twins_loss, barlow_twins_terms
from bt_keras.model import BarlowTwins, build_projector
from bt_keras.optimizers import LARS, WarmupCosine
from bt_keras.version import __version__

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "augment",
    "callbacks",
    "count_examples",
    "data",
    "eval_dataset",
    "evaluation",
    "layers",
    "FusedBatchNormalization",
    "get_preset",
    "load_demo",
    "two_view_dataset",
    "write_tfrecords",
    "BarlowTwins",
    "BarlowTwinsTerms",
    "LARS",
    "WarmupCosine",
    "__version__",
    "barlow_twins_loss",
    "barlow_twins_terms",
    "build_encoder",
    "build_projector",
    "encoders",
    "export_encoder",
    "losses",
    "optimizers",
    "preprocess",
    "resnet",
    "small_cnn",
]
