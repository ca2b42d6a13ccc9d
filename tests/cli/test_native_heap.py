"""``pha predict``'s fixed mmap threshold (pha_lightning/cli/native_heap.py): after it, glibc serves a large
block with its own mmap (returned when freed) even where its own threshold had risen above it; bad
values are refused naming them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pha_lightning.cli.native_heap import MAX_MMAP_THRESHOLD, check_mmap_threshold, glibc
from pha_lightning.errors import ConfigError

#: In a fresh process (the threshold stays fixed for a process's lifetime): a 16 MiB block freed raises
#: glibc's own threshold to 16 MiB, so a 2 MiB block comes from the heap; then, with sys.argv[1] "fix",
#: fix_mmap_threshold(128 KiB). Prints whether an 8 MiB block (more than the heap has free) was mmapped
#: (mallinfo2's hblks while it is held).
PROBE = """
import ctypes, json, sys
from pha_lightning.cli.native_heap import fix_mmap_threshold

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def mmapped_while_held(size):
    block = libc.malloc(size)
    held = libc.mallinfo2().hblks
    libc.free(block)
    return held - libc.mallinfo2().hblks

libc.free(libc.malloc(16 << 20))
before = mmapped_while_held(2 << 20)
fixed = sys.argv[1] == "fix" and fix_mmap_threshold(128 * 1024)
print(json.dumps({"before": before, "fixed": fixed, "after": mmapped_while_held(8 << 20)}))
"""


@pytest.mark.skipif(glibc() is None or not hasattr(glibc(), "mallinfo2"), reason="glibc 2.33 or later only")
@pytest.mark.parametrize(("mode", "mmapped"), [("fix", 1), ("leave", 0)])
def test_fixed_threshold_mmaps_large_blocks_after_glibc_raised_its_own(mode: str, mmapped: int) -> None:
    command = [sys.executable, "-c", PROBE, mode]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == {"before": 0, "fixed": mode == "fix", "after": mmapped}


@pytest.mark.parametrize("value", [-1, MAX_MMAP_THRESHOLD + 1, True, "128k"])
def test_bad_thresholds_are_refused_naming_them(value: object) -> None:
    with pytest.raises(ConfigError, match=f"predict_mmap_threshold is {value!r}; give a number of bytes from 0 to"):
        check_mmap_threshold(value, "predict_mmap_threshold")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, 0, 128 * 1024, MAX_MMAP_THRESHOLD])
def test_valid_thresholds_pass(value: int | None) -> None:
    check_mmap_threshold(value, "predict_mmap_threshold")
