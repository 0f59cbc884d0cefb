"""LARS and the warmup + cosine learning-rate schedule of the official recipe.

Examples:

>>> import keras
>>> from bt_keras.optimizers import LARS, WarmupCosine
>>> schedule = WarmupCosine(base_learning_rate=0.2, warmup_steps=10, total_steps=100)
>>> opt = LARS(learning_rate=schedule, rank1_lr_multiplier=0.0048 / 0.2)
>>> float(schedule(10))
0.2
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bt_keras")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0, then cosine decay to ``end_factor × base``; per step.

    ``base_learning_rate`` is the peak value (the recipe uses
    ``0.2 × batch / 256`` for weights).
    """

    def __init__(self, base_learning_rate, warmup_steps, total_steps, end_factor=0.001):
        if total_steps <= 0 or warmup_steps < 0:
            raise ValueError("total_steps must be > 0 and warmup_steps >= 0")
        self.base_learning_rate = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.end_factor = float(end_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        base = self.base_learning_rate
        warmup = float(max(self.warmup_steps, 1))
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        q = 0.5 * (1.0 + ops.cos(math.pi * progress))
        cosine = base * q + base * self.end_factor * (1.0 - q)
        return ops.where(step < self.warmup_steps, base * step / warmup, cosine)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "end_factor": self.end_factor,
        }


@keras.saving.register_keras_serializable(package="bt_keras")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling, with the official Barlow Twins semantics.

    For each variable ``p`` with gradient ``g``:

        dp = g + weight_decay · p                     (not for rank-1 variables)
        r  = eta · ‖p‖ / ‖dp‖                         (not for rank-1; 1 if a norm is 0)
        dp = r · dp                 or, with clip_trust, min(r / lr, 1) · dp
        mu = momentum · mu + dp
        p  = p − lr · mu                              (lr × rank1_lr_multiplier for rank-1)

    Rank-1 variables are biases and BatchNorm γ/β. The learning rate sits
    outside the momentum, as in the official code.

    Args:
      learning_rate: float or schedule: the rate for weights (rank ≥ 2).
      weight_decay: L2 coefficient added to the gradient of rank ≥ 2 variables.
      momentum: heavy-ball momentum.
      eta: trust coefficient.
      rank1_lr_multiplier: rank-1 variables use ``learning_rate × this``
        (recipe: 0.0048 / 0.2 = 0.024).
      clip_trust: scale by ``min(r / lr, 1)`` instead of ``r``, so a layer
        steps by ``min(r, lr)``: the trust ratio only ever slows a layer down
        (solo-learn's ``clip_lr``; off in the official code).

    Example:

    >>> import numpy as np
    >>> opt = LARS(learning_rate=0.1, eta=0.02, clip_trust=True)
    >>> w = keras.Variable(np.ones((2, 2), "float32"))
    >>> _ = opt.apply_gradients([(keras.ops.ones((2, 2)), w)])
    >>> float(w[0, 0]) < 1.0
    True
    """

    def __init__(
        self,
        learning_rate=0.2,
        weight_decay=1.5e-6,
        momentum=0.9,
        eta=0.001,
        rank1_lr_multiplier=0.024,
        clip_trust=False,
        name="lars",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        self.lars_weight_decay = float(weight_decay)
        self.momentum = float(momentum)
        self.eta = float(eta)
        self.rank1_lr_multiplier = float(rank1_lr_multiplier)
        self.clip_trust = bool(clip_trust)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        dp = ops.cast(gradient, dtype)
        if len(variable.shape) == 1:
            lr = lr * self.rank1_lr_multiplier
        else:
            dp = dp + self.lars_weight_decay * variable
            p_norm = ops.sqrt(ops.sum(ops.square(variable)))
            dp_norm = ops.sqrt(ops.sum(ops.square(dp)))
            trust = ops.where(
                ops.logical_and(p_norm > 0, dp_norm > 0),
                self.eta * p_norm / ops.maximum(dp_norm, 1e-30),
                ops.ones_like(p_norm),
            )
            if self.clip_trust:
                trust = ops.minimum(trust / lr, ops.ones_like(trust))
            dp = dp * trust
        mu = self.momentums[self._get_variable_index(variable)]
        self.assign(mu, self.momentum * mu + dp)
        self.assign_sub(variable, lr * mu)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "weight_decay": self.lars_weight_decay,
                "momentum": self.momentum,
                "eta": self.eta,
                "rank1_lr_multiplier": self.rank1_lr_multiplier,
                "clip_trust": self.clip_trust,
            }
        )
        return config
