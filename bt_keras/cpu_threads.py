"""TensorFlow's CPU thread pools for a Barlow Twins step: the two views side by side.

A Barlow Twins step is two independent branches, one per view, until the
loss joins them, and the same again backwards. TensorFlow's default (every
op may use all cores, two ops at a time) makes the two branches' ops fight
for the same cores; ``train.cpu_threads: auto`` gives each branch half of
them instead: ``intra_op = cores // 2`` threads per op, ``inter_op = 2`` ops
at a time. Measured with ``benchmarks/peer.py step`` (benchmarks/README.md)
on 2 cores: 1.05-1.07x the pairs per CPU-second of TensorFlow's defaults for
a width-16 ResNet-18, no change at width 64. Machines with more cores were
not measured: there ``auto`` is the same reasoning, ``tf`` the fallback.

``train.cpu_threads``:

- ``auto`` (default): the layout above on a CPU-only TensorFlow run; nothing
  changes on GPUs, TPUs, under JAX, or under a multi-device strategy.
- ``tf``: TensorFlow's own defaults.
- ``"INTRA,INTER"``: those two numbers, e.g. ``"4,2"``.

TensorFlow reads the sizes when its runtime starts, so ``bt-train`` applies
them before it builds the strategy; a process that has already run
TensorFlow ops keeps the pools it has (the returned description says so).

Examples:

>>> thread_layout("auto", cores=8)
(4, 2)
>>> thread_layout("auto", cores=1)
(1, 2)
>>> thread_layout("3,1", cores=8)
(3, 1)
>>> thread_layout("tf", cores=8) is None
True
"""

from __future__ import annotations

import os

from bt_keras.errors import UserError

SETTINGS_HELP = "'auto', 'tf' or 'INTRA,INTER' (two positive integers, e.g. '4,2')"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, as ``taskset`` or a container sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def thread_layout(setting: str, cores: int | None = None) -> tuple[int, int] | None:
    """``(intra_op, inter_op)`` for ``setting``, or None for TensorFlow's defaults."""
    setting = str(setting).strip()
    if setting == "tf":
        return None
    if setting == "auto":
        return max(1, (cores or usable_cores()) // 2), 2
    parts = setting.split(",")
    try:
        intra, inter = (int(p) for p in parts)
    except ValueError:
        intra = inter = 0
    if len(parts) != 2 or intra < 1 or inter < 1:
        raise UserError(f"train.cpu_threads: must be {SETTINGS_HELP}; got {setting!r}")
    return intra, inter


def applies_to(strategy: str) -> bool:
    """Whether ``auto`` changes anything for ``train.strategy``: a one-device CPU run on TensorFlow.

    Reads only the list of physical devices, which does not start TensorFlow's runtime.
    """
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow" or strategy not in ("auto", "cpu"):
        return False
    return strategy == "cpu" or not tf.config.list_physical_devices("GPU")


def apply_cpu_threads(setting: str = "auto", strategy: str = "cpu") -> str:
    """Sizes TensorFlow's CPU pools for ``setting``; returns one line saying what runs.

    ``bt-train`` calls it for ``train.cpu_threads``; with ``model.fit``, call it
    first thing, before any TensorFlow op runs. If the runtime has already
    started with other sizes, nothing changes and the line says so.

    Args:
        setting: ``"auto"``, ``"tf"`` or ``"INTRA,INTER"`` (see the module).
        strategy: the run's ``train.strategy``; ``auto`` changes nothing
            unless it is a one-device CPU run (``cpu``, or ``auto`` without GPUs).

    Example:

    >>> import bt_keras
    >>> bt_keras.apply_cpu_threads("tf")
    "TensorFlow's default thread pools"
    """
    import tensorflow as tf

    layout = thread_layout(setting)
    threading = tf.config.threading
    if layout is None or (setting == "auto" and not applies_to(strategy)):
        return "TensorFlow's default thread pools"
    intra, inter = layout
    said = f"{intra} thread{'s' * (intra != 1)} per op, {inter} op{'s' * (inter != 1)} at a time"
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) == layout:
        return said
    try:
        threading.set_intra_op_parallelism_threads(intra)
        threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # "... cannot be modified after initialization"
        return f"TensorFlow had already started: its thread pools stay as they are ({intra},{inter} not applied)"
    return said
