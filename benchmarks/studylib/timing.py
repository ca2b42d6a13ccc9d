"""What the timing benchmarks measure: CPU time (the figure that holds on a shared machine), peak
memory and the load average (how shared the machine was)."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def timed(work: Callable[[], T]) -> tuple[T, float, float]:
    """``(result, wall seconds, CPU seconds of this process)`` of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def children_cpu_seconds() -> float:
    """User + system seconds of every finished child process so far (difference two readings)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory of this process (or of its largest finished child), MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024
