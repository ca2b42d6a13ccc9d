"""The CPUs this process may really use: the smaller of those it may be scheduled on and its CPU quota.

A machine's core count (``os.cpu_count()``, torch's default thread count) is not lowered by a
container's CPU quota (cgroup ``cpu.max``): a job limited to 2 CPUs on a 64-core node would start 32
threads or processes that mostly wait for their share. Both ``pha``'s default thread count
(:mod:`pha_lightning.cli.threads`) and its tokenising processes (``data.num_proc``) count CPUs here.
Standard library only: it runs before torch is imported.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: cgroup v2's CPU limit of this process's group: ``<quota> <period>`` in microseconds, or ``max <period>``
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_quota(cpu_max: str | None) -> float | None:
    """The CPUs a cgroup ``cpu.max`` text allows (``"150000 100000"``: 1.5); ``None`` for no limit,
    no file or a text that is not a limit."""
    fields = (cpu_max or "").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def default_threads(affinity: int, quota: float | None) -> int:
    """The workers for ``affinity`` schedulable CPUs under a ``quota`` of CPUs (``None``: none), rounded
    down (a worker beyond the quota only waits); at least 1."""
    usable = affinity if quota is None else min(affinity, math.floor(quota))
    return max(1, usable)


def usable_cpus() -> tuple[int, float | None]:
    """This process's schedulable CPUs and its cgroup's CPU quota (``None``: none)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        text = CPU_MAX.read_text()
    except OSError:
        text = None
    return affinity, cpu_quota(text)


def available_cpus() -> int:
    """How many CPUs this process may keep busy at once (:func:`default_threads` of :func:`usable_cpus`)."""
    return default_threads(*usable_cpus())
