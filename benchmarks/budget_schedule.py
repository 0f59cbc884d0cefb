"""A learning-rate schedule driven by a time budget, shared by ``quality.py`` and ``ablations.py``.

Warmup is counted in steps; the cosine that follows is driven by the elapsed fraction of the
budget, so its decay ends when the budget does, however fast the steps run on the machine
(a step-count schedule sized in advance would be cut short or finish early).

Example:

>>> s = WarmupThenTimeCosine(peak=1.0, warmup_steps=2)
>>> [round(s(0.0, step), 3) for step in (0, 1)], round(s(0.1, 2), 3), round(s(1.0, 50), 3)
([0.5, 1.0], 1.0, 0.001)
"""

from __future__ import annotations

import math

from bt_keras.callbacks import TimeBudget


class WarmupThenTimeCosine:
    """lr(fraction, step): linear warmup over ``warmup_steps`` steps, then cosine
    from ``peak`` to ``peak × end_factor`` over the rest of the time budget."""

    def __init__(self, peak, warmup_steps, end_factor=0.001):
        self.peak, self.warmup_steps, self.end_factor = peak, max(int(warmup_steps), 0), end_factor
        self.f0 = None

    def __call__(self, fraction, step):
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        if self.f0 is None:
            self.f0 = fraction
        t = min(max((fraction - self.f0) / max(1.0 - self.f0, 1e-9), 0.0), 1.0)
        return self.peak * (self.end_factor + (1 - self.end_factor) * 0.5 * (1 + math.cos(math.pi * t)))


class BudgetWithSchedule(TimeBudget):
    """TimeBudget whose lr function also sees the step (warmup in steps).

    ``warmup_epochs``: when given, the schedule's warmup is that many epochs of
    ``fit``'s ``steps`` (known only once training begins).
    """

    def __init__(self, seconds, schedule, clock="wall", warmup_epochs=None):
        super().__init__(seconds, learning_rate=lambda f: schedule(f, self.steps), clock=clock)
        self.schedule, self.warmup_epochs = schedule, warmup_epochs

    def on_train_begin(self, logs=None):
        if self.warmup_epochs is not None and self.params.get("steps"):
            self.schedule.warmup_steps = int(round(self.warmup_epochs * self.params["steps"]))
