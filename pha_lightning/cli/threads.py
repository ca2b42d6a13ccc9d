"""How many threads torch computes with by default: the CPUs this process may really use.

torch's own default is the machine's core count, which a container's CPU quota (cgroup ``cpu.max``)
does not lower. ``pha`` takes the CPUs it may really use (:mod:`pha_lightning.cpus`: the smaller of
those it may be scheduled on and the quota), unless ``OMP_NUM_THREADS`` chose.
Standard library only: it runs before torch is imported (docs/production.md, "Threads").
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

from pha_lightning.cpus import default_threads, usable_cpus


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
