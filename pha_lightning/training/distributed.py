"""The end of a distributed run: its process group destroyed while the interpreter is still whole.

Lightning creates the default process group when a multi-process strategy sets up, and destroys it
at exit only for NCCL. A gloo group (CPUs, and the ``pha_fsdp`` strategy on CPUs) then lives into
interpreter shutdown with its worker, transport and store threads running. A C++ thread that needs
the interpreter then (the last reference to a tensor a collective used) is stopped by it mid-frame,
and the process aborts (``terminate called without an active exception``, SIGABRT) after its work
is done: under SLURM a finished job reads FAILED (docs/production.md, "Multi-node training on SLURM").
"""

from __future__ import annotations

import gc

import torch


def end_process_group() -> None:
    """Destroy this process's process groups, if it has any, and collect the objects that still referred
    to them (Lightning's unwrapped ``DistributedDataParallel`` and its reducer; a sharded model's
    parameter groups, once the caller let the model go), so that the groups' threads finish and are
    joined now rather than during interpreter shutdown. The ranks need not agree: destroying a group
    is local to the process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
        gc.collect()
