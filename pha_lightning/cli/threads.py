"""How many threads torch computes with by default: the CPUs this process may really use.

torch's own default is the machine's core count, which a container's CPU quota (cgroup ``cpu.max``)
does not lower: a job limited to 2 CPUs on a 64-core node would run 32 threads that mostly wait for
their share. ``pha`` takes the smaller of the CPUs it may be scheduled on (``os.sched_getaffinity``)
and the quota, rounded down (a thread beyond the quota only waits), unless ``OMP_NUM_THREADS`` chose.
Standard library only: it runs before torch is imported (docs/production.md, "Threads").
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import MutableMapping
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
    """The thread count for ``affinity`` schedulable CPUs under a ``quota`` of CPUs (``None``: none); at least 1."""
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


def choose_threads(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """Set ``OMP_NUM_THREADS`` (torch reads it when imported; the processes this one starts inherit it)
    to :func:`default_threads`, saying so on stderr only where that is fewer than torch's own default (the
    machine's core count); ``None`` when it was set already (the user's choice, or a parent ``pha``'s)."""
    if environ.get("OMP_NUM_THREADS"):
        return None
    affinity, quota = usable_cpus()
    threads = default_threads(affinity, quota)
    environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # imported already (pha called in-process): its pool is set directly
        sys.modules["torch"].set_num_threads(threads)
    if threads >= (os.cpu_count() or 1):
        return threads  # what torch would take anyway: nothing to say
    limit = "no CPU quota" if quota is None else f"a CPU quota of {quota:g}"
    print(
        f"pha: computing with {threads} thread{'s' * (threads != 1)}: {affinity} schedulable CPU"
        f"{'s' * (affinity != 1)}, {limit}; set OMP_NUM_THREADS to choose",
        file=sys.stderr,
        flush=True,
    )
    return threads
