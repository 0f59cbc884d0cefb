"""Backbones: ResNet-18/34/50 (CIFAR or ImageNet stem) and a small fast CNN.

Every encoder is a functional ``keras.Model`` with one input ``images``
(NHWC float32, preprocessed) and one output ``[batch, dim]`` after global
average pooling. BatchNorm is synchronised across replicas by default, so
training is independent of how many replicas share the global batch. In
training, BN runs as one fused kernel where its statistics are local
(``bt_keras.layers.FusedBatchNormalization``; ``fused_batchnorm=False`` for
Keras' own layer).

Examples:

>>> from bt_keras import encoders
>>> enc = encoders.resnet(18, stem="cifar", width=16, input_shape=(32, 32, 3))
>>> enc.output_shape
(None, 128)
"""

from __future__ import annotations

import keras
from keras import layers

from bt_keras.config import ENCODER_NAMES  # noqa: F401  (public: bt_keras.encoders.ENCODER_NAMES)
from bt_keras.layers import batch_norm

_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def _conv(filters, kernel, stride=1, name=None):
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _residual_block(x, filters, stride, kind, bn, zero_init, name):
    expansion = 4 if kind == "bottleneck" else 1
    shortcut = x
    if stride != 1 or x.shape[-1] != filters * expansion:
        shortcut = _conv(filters * expansion, 1, stride, name=f"{name}_proj")(x)
        shortcut = bn(name=f"{name}_proj_bn")(shortcut)
    if kind == "basic":
        y = _conv(filters, 3, stride, name=f"{name}_conv1")(x)
        y = layers.ReLU()(bn(name=f"{name}_bn1")(y))
        y = _conv(filters, 3, name=f"{name}_conv2")(y)
        y = bn(zero_gamma=zero_init, name=f"{name}_bn2")(y)
    else:
        y = _conv(filters, 1, name=f"{name}_conv1")(x)
        y = layers.ReLU()(bn(name=f"{name}_bn1")(y))
        y = _conv(filters, 3, stride, name=f"{name}_conv2")(y)
        y = layers.ReLU()(bn(name=f"{name}_bn2")(y))
        y = _conv(filters * expansion, 1, name=f"{name}_conv3")(y)
        y = bn(zero_gamma=zero_init, name=f"{name}_bn3")(y)
    return layers.ReLU()(layers.Add()([shortcut, y]))


def resnet(
    depth: int = 18,
    stem: str = "cifar",
    width: int = 64,
    input_shape=(None, None, 3),
    zero_init_residual: bool = True,
    sync_batchnorm: bool = True,
    fused_batchnorm: bool = True,
    name: str | None = None,
) -> keras.Model:
    """ResNet-18/34 (basic blocks) or ResNet-50 (bottlenecks), head removed.

    Args:
      depth: 18, 34 or 50.
      stem: ``"cifar"`` (3×3 conv stride 1, no max-pool, for 32-px images) or
        ``"imagenet"`` (7×7 conv stride 2 + 3×3 max-pool).
      width: channels of the first stage (64 in the standard nets); stages
        use width × (1, 2, 4, 8) (× 4 for bottlenecks: 2048-d ResNet-50).
      zero_init_residual: γ = 0 for the last BN of each block (official recipe).
      sync_batchnorm: synchronise BN statistics over replicas.
      fused_batchnorm: train BN through the fused kernel where it applies.
    """
    if depth not in _BLOCKS:
        raise ValueError(f"resnet depth must be one of {sorted(_BLOCKS)}, got {depth}")
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
    kind, counts = _BLOCKS[depth]

    def bn(zero_gamma=False, name=None):
        return batch_norm(sync_batchnorm, fused_batchnorm, zero_gamma, name)

    inputs = keras.Input(shape=input_shape, name="images")
    if stem == "cifar":
        x = _conv(width, 3, name="stem_conv")(inputs)
        x = layers.ReLU()(bn(name="stem_bn")(x))
    else:
        x = _conv(width, 7, 2, name="stem_conv")(inputs)
        x = layers.ReLU()(bn(name="stem_bn")(x))
        x = layers.MaxPooling2D(3, 2, padding="same")(x)
    for stage, count in enumerate(counts):
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _residual_block(
                x,
                width * 2**stage,
                stride,
                kind,
                bn,
                zero_init_residual,
                name=f"stage{stage + 1}_block{block + 1}",
            )
    outputs = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}_{stem}")


def small_cnn(
    widths=(32, 64, 128, 256),
    input_shape=(None, None, 3),
    sync_batchnorm: bool = True,
    fused_batchnorm: bool = True,
    name: str = "small_cnn",
) -> keras.Model:
    """A plain Conv-BN-ReLU network for quick CPU runs: two 3×3 convs per stage,
    2×2 max-pool between stages, global average pooling; ``widths[-1]``-d."""
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for stage, w in enumerate(widths):
        if stage > 0:
            x = layers.MaxPooling2D(2)(x)
        for i in range(2):
            x = _conv(w, 3, name=f"stage{stage + 1}_conv{i + 1}")(x)
            bn = batch_norm(sync_batchnorm, fused_batchnorm, name=f"stage{stage + 1}_bn{i + 1}")
            x = layers.ReLU()(bn(x))
    outputs = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name=name)


def build_encoder(
    name: str, input_shape=(None, None, 3), *, encoder_args=None, init_weights=None, **kwargs
) -> keras.Model:
    """Encoder by ``model.encoder`` value: a built-in or a backbone from the Keras ecosystem.

    Built-ins: ``resnet18_cifar``, ``resnet18``, ``resnet34_cifar``, ``resnet34``,
    ``resnet50``, ``small_cnn`` (``kwargs`` go to the builder). Others:
    ``keras.applications.NAME``, ``keras_hub:PRESET_OR_DIR``, ``file:PATH.keras``
    (:func:`bt_keras.backbones.build_backbone`, which takes ``encoder_args``,
    ``sync_batchnorm`` and ``fused_batchnorm``; they need a square ``input_shape``).

    Args:
        name: the encoder.
        input_shape: ``(H, W, 3)``.
        encoder_args: constructor / ``from_preset`` arguments of an ecosystem backbone.
        init_weights: ``None``, ``"none"``, ``"imagenet"`` or a weights file (``model.init_weights``).
        **kwargs: builder arguments.

    Examples:

    >>> build_encoder("small_cnn", (32, 32, 3), widths=(4, 8)).output_shape
    (None, 8)
    """
    from bt_keras.config import check_init_weights, encoder_family

    family, _ = encoder_family(name)
    check_init_weights(family, init_weights)
    if family != "builtin":
        from bt_keras.backbones import build_backbone

        allowed = {k: kwargs.pop(k) for k in ("sync_batchnorm", "fused_batchnorm") if k in kwargs}
        if kwargs:
            raise ValueError(f"{name}: unexpected arguments {sorted(kwargs)}")
        return build_backbone(name, input_shape[0], encoder_args=encoder_args, init_weights=init_weights, **allowed)
    if encoder_args:
        raise ValueError(f"built-in encoder {name!r} takes no encoder_args")
    if name == "small_cnn":
        encoder = small_cnn(input_shape=input_shape, **kwargs)
    else:
        depth = int(name[6:8])
        stem = "cifar" if name.endswith("_cifar") else "imagenet"
        encoder = resnet(depth, stem=stem, input_shape=input_shape, **kwargs)
    if init_weights not in (None, "none"):
        from bt_keras.backbones import load_initial_weights

        load_initial_weights(encoder, init_weights, name)
    return encoder
