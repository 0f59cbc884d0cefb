"""CPU seconds of this process and all its descendants, read from ``/proc`` (standard library only).

The peer benchmark counts the work of PyTorch's DataLoader worker processes
next to the trainer's: ``time.process_time`` sees only the calling process,
and ``resource.RUSAGE_CHILDREN`` only children that have exited. Both sides of
``benchmarks/peer.py`` use this one clock, so they are charged the same way.

>>> t0 = tree_cpu_seconds()
>>> _ = sum(i * i for i in range(200_000))
>>> tree_cpu_seconds() > t0
True
"""

from __future__ import annotations

import os
import time

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # the process ended while we looked
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its last ")".
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def _cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields 14 and 15 of stat (utime, stime), counted from the state field (field 3).
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads) and of its live descendants.

    This process is read with ``time.process_time`` (nanosecond resolution);
    descendants from ``/proc`` at clock-tick resolution (10 ms). Outside Linux,
    only this process is counted.
    """
    own = time.process_time()
    if not os.path.isdir("/proc"):
        return own
    children = _children_map()
    total, stack = 0.0, list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        total += _cpu_of(pid)
        stack.extend(children.get(pid, []))
    return own + total
