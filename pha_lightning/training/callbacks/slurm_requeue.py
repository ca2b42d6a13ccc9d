"""SLURM's pre-emption signal handled at a step boundary, so the requeued job resumes exactly.

Lightning's own SLURM handler saves ``hpc_ckpt_<n>.ckpt`` inside the signal handler, wherever the
signal lands: usually mid-step, after the batch was handed to the training step (the data module
counts it as consumed) and before the optimizer applied it, so the resumed run would skip that
batch. A real scheduler showed it (tests/cluster/test_slurm_cluster.py); docs/production.md, "SLURM".
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

HPC_CHECKPOINT = "hpc_ckpt_{}.ckpt"


def next_hpc_checkpoint(root: str | os.PathLike) -> Path:
    """``<root>/hpc_ckpt_<n>.ckpt`` with ``n`` one above the highest there (Lightning's naming)."""
    numbers = [int(p.stem.removeprefix("hpc_ckpt_")) for p in Path(root).glob("hpc_ckpt_*.ckpt")]
    return Path(root) / HPC_CHECKPOINT.format(max(numbers, default=0) + 1)


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an array task, else the job id."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]


class SlurmRequeue(Callback):
    """Under SLURM with auto-requeue (Lightning's default), take over the requeue signal (SIGUSR1,
    sent ahead of a pre-emption or the time limit by ``#SBATCH --signal``): the handler only notes
    it; at the end of the training step the ranks agree (any rank signalled), every rank joins
    writing ``hpc_ckpt_<n>.ckpt`` of the completed step, and global rank 0 runs
    ``scontrol requeue``. SLURM then stops the job and starts it again; ``--ckpt_path last`` resumes
    from that checkpoint or a later one. Lightning keeps handling SIGTERM."""

    def __init__(self) -> None:
        self._signalled = False
        self._signal: int | None = None
        self._previous: Any = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # registered before the Trainer sets its signal handlers: Lightning then leaves this one in place
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if environment is None and SLURMEnvironment.detect():
            environment = SLURMEnvironment()
        if stage != "fit" or not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        self._signal = environment.requeue_signal or signal.SIGUSR1
        self._previous = signal.signal(self._signal, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._signal is None or not trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            return
        self._signalled = False
        path = next_hpc_checkpoint(trainer.default_root_dir)
        rank_zero_info(f"SLURM requeue signal: saving {path} at step {trainer.global_step}, then requeueing")
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            job = slurm_job_id()
            try:
                result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            except OSError as error:  # no scontrol on this node's PATH
                rank_zero_warn(f"scontrol requeue {job} could not run: {error}; the job is not requeued")
                return
            if result.returncode != 0:
                rank_zero_warn(f"scontrol requeue {job} failed ({result.returncode}): {result.stderr.strip()}")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._signal is not None:
            signal.signal(self._signal, self._previous)
            self._signal = None
