"""Run by the DDP and cluster tests inside `pha fit`: each process records, when its interpreter
begins to shut down (``atexit``, after pha's command returned), whether it still holds a process
group and which native threads it still runs, to ``<dirpath>/exit-rank<rank>-restart<n>.json``. A
gloo group alive at that point is what aborted a finished SLURM job at exit (issue 56)."""

from __future__ import annotations

import atexit
import json
import os
import threading
from pathlib import Path

import torch
from lightning.pytorch import Callback

#: native thread names (``/proc/self/task/*/comm``) of c10d and gloo: the store, the workers, the transport
DISTRIBUTED_THREADS = ("pt_gloo", "gloo_", "pt_tcpstore")


def native_threads() -> list[str]:
    """The names of this process's threads, as the kernel has them (a thread that ends while they
    are read is left out)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except FileNotFoundError:
            continue
    return sorted(names)


class RecordExit(Callback):
    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.registered = False

    def setup(self, trainer, pl_module, stage: str) -> None:  # noqa: ANN001
        if not self.registered:  # fit and the test after it share the callback: one record a process
            self.registered = True
            atexit.register(self.record, trainer.global_rank)

    def record(self, rank: int) -> None:
        row = {
            "process_group": torch.distributed.is_initialized(),
            "threads": native_threads(),
            "python_threads": sorted(f"{t.name}{' (daemon)' * t.daemon}" for t in threading.enumerate()),
            "pid": os.getpid(),
        }
        self.dirpath.mkdir(parents=True, exist_ok=True)
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        (self.dirpath / f"exit-rank{rank}-restart{restart}.json").write_text(json.dumps(row))


def distributed_threads(row: dict) -> list[str]:
    """The c10d and gloo threads a :class:`RecordExit` row names."""
    return [name for name in row["threads"] if name.startswith(DISTRIBUTED_THREADS)]
