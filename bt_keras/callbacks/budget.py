"""A time budget (wall clock or process CPU) of training steps, and a learning rate driven by its elapsed fraction.

Examples:

>>> from bt_keras.callbacks.budget import TimeBudget
>>> TimeBudget(60).seconds
60.0
"""

from __future__ import annotations

import time
from collections.abc import Callable

import keras

_CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


class TimeBudget(keras.callbacks.Callback):
    """Stops training once ``seconds`` of training steps have run.

    Only the time inside training steps counts (from batch begin to batch
    end, input waiting included); epoch-end work such as the kNN monitor
    does not, nor does the first step, which traces and compiles the graph
    (``first_step_seconds``). On a shared machine throughput drifts, so a
    schedule tied to elapsed time ends its decay when the budget ends, where
    a step-count schedule sized in advance would be cut short or finish early.

    Args:
        seconds: the budget.
        learning_rate: optional ``f(fraction) -> lr`` of the elapsed fraction of
            the budget, set before every step (the optimizer needs a float
            learning rate).
        clock: ``"wall"`` (``time.perf_counter``) or ``"process"``
            (``time.process_time``, CPU seconds of the whole process), or any
            ``() -> seconds`` callable (a simulated clock, for tests).

    Examples:

    >>> cb = TimeBudget(60, learning_rate=lambda f: 0.1 * (1 - f))
    >>> cb.fraction
    0.0
    """

    def __init__(
        self,
        seconds: float,
        learning_rate: Callable[[float], float] | None = None,
        clock: str | Callable[[], float] = "wall",
    ):
        super().__init__()
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        if not callable(clock) and clock not in _CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(_CLOCKS)} or a callable, got {clock!r}")
        self.seconds = float(seconds)
        self.clock = clock if isinstance(clock, str) else "custom"
        self._now = clock if callable(clock) else _CLOCKS[clock]
        self.learning_rate = learning_rate
        self.elapsed = 0.0
        self.steps = 0
        self.first_step_seconds = 0.0
        self._t0 = None

    @property
    def fraction(self) -> float:
        return min(self.elapsed / self.seconds, 1.0)

    def on_train_batch_begin(self, batch, logs=None):
        if self.learning_rate is not None:
            self.model.optimizer.learning_rate = float(self.learning_rate(self.fraction))
        self._t0 = self._now()

    def on_train_batch_end(self, batch, logs=None):
        if self._t0 is not None and self.steps > 0:
            self.elapsed += self._now() - self._t0
        else:
            self.first_step_seconds = self._now() - self._t0
        self.steps += 1
        if self.elapsed >= self.seconds:
            self.model.stop_training = True
