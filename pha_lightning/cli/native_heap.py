"""glibc's heap under ``pha predict``: a fixed mmap threshold, so that the memory of a long prediction
stays flat (docs/production.md, "Memory of a long prediction").

glibc serves a block of at least its *mmap threshold* with its own ``mmap`` and returns it to the
system when freed; smaller blocks come from the heap, which keeps what is freed. The threshold starts
at 128 KiB but rises to the size of every mmapped block freed (up to 32 MiB), so after the first batch
every activation tensor (MB each) lives in the heap. Batches padded to a different width each ask for
blocks of different sizes, and the space they free is left in holes later batches do not fit:
measured on ``pha predict`` (MiniLM, batches of 64, 1M lines; results/data_scaling/NOTES.md) the heap's
free space grew from 36 to 200 MB over 15 000 rows in 5 runs of 7, while what was in use stayed at 196 MB.
A fixed threshold (``mallopt(M_MMAP_THRESHOLD, …)``, which also stops the rise; the trim threshold, how
much free space the heap's top keeps, fixed to the same) returns every large block at once, at about
30 % more CPU per predicted row (fresh zeroed pages). Standard library only; a no-op without glibc.
"""

from __future__ import annotations

import ctypes
import sys

from pha_lightning.errors import ConfigError

#: ``mallopt``'s parameter numbers for the mmap and trim thresholds (glibc's ``malloc.h``)
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
#: the largest mmap threshold glibc accepts on 64-bit systems (half its heap size, ``HEAP_MAX_SIZE / 2``)
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
#: ``pha predict --predict_mmap_threshold``'s default: glibc's starting threshold, kept
PREDICT_MMAP_THRESHOLD = 128 * 1024


def check_mmap_threshold(threshold: int | None, name: str) -> None:
    """A :class:`ConfigError` naming ``name`` and the value unless ``threshold`` is ``None`` (glibc's own
    rising threshold) or a byte count from 0 to :data:`MAX_MMAP_THRESHOLD`."""
    if threshold is None:
        return
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold <= MAX_MMAP_THRESHOLD:
        raise ConfigError(
            f"{name} is {threshold!r}; give a number of bytes from 0 to {MAX_MMAP_THRESHOLD} (32 MiB, glibc's largest), "
            "or null for glibc's own threshold"
        )


def glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc (it names its version); ``None`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def fix_mmap_threshold(threshold: int | None) -> bool:
    """Have glibc mmap every block of at least ``threshold`` bytes that its heap cannot serve from free
    space, and return free space above ``threshold`` at the heap's top, from now on, the thresholds no
    longer rising (as at a process's start with ``MALLOC_MMAP_THRESHOLD_`` set); ``None``: leave glibc's
    own. Whether they were set (``False`` without glibc)."""
    check_mmap_threshold(threshold, "the mmap threshold")
    libc = glibc()
    if threshold is None or libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, threshold))
