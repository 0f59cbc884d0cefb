"""The model and the optimiser a config describes: :func:`build_model`, :func:`make_optimizer`, and
the two settings that depend on where the run is (:func:`jit_for`, frozen layers).

:mod:`bt_keras.training` runs them; benchmarks and tests build the same model from a config here.

Examples:

>>> from bt_keras.config import config_from_dict
>>> cfg = config_from_dict({"model": {"encoder": "small_cnn", "width": 4, "projector_dims": [16, 16]}})
>>> build_model(cfg, image_size=16).encoder.output.shape
(None, 32)
"""

from __future__ import annotations

from bt_keras.errors import UserError


def make_optimizer(cfg, global_batch: int, steps_per_epoch: int, epochs: int, learning_rate=None):
    """The recipe's optimiser from the ``optim:`` section: lr × batch/256, warmup then cosine, per step.

    Args:
        cfg: an ``OptimConfig``.
        global_batch: examples per step over all replicas.
        steps_per_epoch: optimiser steps in one epoch.
        epochs: length of the run (the schedule ends there).
        learning_rate: a constant rate instead of the schedule, settable while training
            (a time budget's schedule: ``bt_keras.callbacks.TimeBudget(learning_rate=...)``).
    """
    from bt_keras.optimizers import WarmupCosine

    if learning_rate is not None:
        return optimizer_for(cfg, float(learning_rate))

    scale = global_batch / 256
    schedule = WarmupCosine(
        base_learning_rate=cfg.lr_weights * scale,
        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
        total_steps=max(epochs * steps_per_epoch, 1),
        end_factor=cfg.end_factor,
    )
    return optimizer_for(cfg, schedule)


def optimizer_for(cfg, learning_rate):
    """The ``optim:`` section's optimiser (LARS or AdamW) at ``learning_rate`` (a float or a schedule).

    Args:
        cfg: the ``OptimConfig``.
        learning_rate: for the weights; LARS gives rank-1 variables ``lr_biases / lr_weights`` of it.
    """
    import keras

    from bt_keras.optimizers import LARS

    if cfg.name == "lars":
        return LARS(
            learning_rate,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            eta=cfg.eta,
            clip_trust=cfg.clip_trust,
            rank1_lr_multiplier=cfg.lr_biases / cfg.lr_weights,
        )
    return keras.optimizers.AdamW(learning_rate, weight_decay=cfg.weight_decay)


def build_model(cfg, image_size: int, init_weights="config"):
    """Encoder + ``BarlowTwins`` from the ``model:`` section (call inside the strategy scope).

    Args:
        cfg: a full ``Config``.
        image_size: side of the square training views.
        init_weights: ``"config"`` (``model.init_weights``), or a value that replaces it
            (``"none"``: the random-init baseline of the final evaluation).
    """
    from bt_keras.config import ENCODER_NAMES
    from bt_keras.encoders import build_encoder
    from bt_keras.model import BarlowTwins

    m = cfg.model
    kwargs = {"sync_batchnorm": m.sync_batchnorm, "fused_batchnorm": m.fused_batchnorm}
    if m.encoder == "small_cnn":
        kwargs["widths"] = tuple(m.width * k for k in (1, 2, 4, 8))
    elif m.encoder in ENCODER_NAMES:
        kwargs.update(width=m.width, zero_init_residual=m.zero_init_residual)
    encoder = build_encoder(
        m.encoder,
        input_shape=(image_size, image_size, 3),
        encoder_args=m.encoder_args,
        init_weights=m.init_weights if init_weights == "config" else init_weights,
        **kwargs,
    )
    freeze_layers(encoder, m.freeze)
    model = BarlowTwins(
        encoder,
        projector_dims=m.projector_dims,
        lambd=m.lambd,
        loss_method=m.loss_method,
        standardize=m.standardize,
        sync_batchnorm=m.sync_batchnorm,
        fused_batchnorm=m.fused_batchnorm,
    )
    model.build((None, image_size, image_size, 3))
    return model


def freeze_layers(encoder, prefixes) -> list:
    """Freezes the encoder's layers whose names start with one of ``prefixes`` (``model.freeze``).

    A frozen layer gets no updates and its BatchNorm runs in inference mode
    (Keras 3), keeping the statistics of the weights it started from.

    Returns:
        The names of the frozen layers.

    Raises:
        UserError: a prefix matches no layer (one line, listing a few names).

    Examples:

    >>> from bt_keras import encoders
    >>> enc = encoders.small_cnn(widths=(4, 8), input_shape=(16, 16, 3))
    >>> freeze_layers(enc, ["stage1_"])
    ['stage1_conv1', 'stage1_bn1', 'stage1_conv2', 'stage1_bn2']
    """
    frozen = []
    for prefix in prefixes:
        matched = [layer for layer in encoder.layers if layer.name.startswith(prefix)]
        if not matched:
            names = ", ".join(layer.name for layer in encoder.layers[1:6])
            raise UserError(f"model.freeze: no encoder layer name starts with {prefix!r} (the first are {names}, ...)")
        for layer in matched:
            layer.trainable = False
            frozen.append(layer.name)
    return frozen


def jit_for(strategy, requested):
    """XLA setting: the config's if given; on for TPU; ``"auto"`` on GPU; off on CPU.

    On CPU, XLA's convolutions measured 0.26-0.51× the speed of oneDNN's. On
    JAX every step is compiled by XLA: ``True`` (False would run op by op).
    """
    import keras
    import tensorflow as tf

    if keras.backend.backend() == "jax":
        return True if requested is None else requested
    if requested is not None:
        return requested
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    return "auto" if tf.config.list_logical_devices("GPU") else False
