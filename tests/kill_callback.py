"""Callbacks for the resume, fault and cluster tests: the training process SIGKILLs itself (no clean
shutdown, no final checkpoint) when it is about to run a given global step, or between two checkpoint
writes; or it marks a step, for the signal tests to send SIGTERM from outside; or it holds for SLURM's signal."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lightning.pytorch import Callback


class KillAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillAfterStepCheckpoint(Callback):
    """SIGKILL between two checkpoint writes of one step: after ``step<NNNNNN>.ckpt`` is complete,
    as the next checkpoint of that step (``last.ckpt``) is about to be written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:  # noqa: ANN001
        written = Path(trainer.checkpoint_callback.dirpath) / f"step{self.step:06d}.ckpt"
        if trainer.global_step == self.step and written.is_file():
            os.kill(os.getpid(), signal.SIGKILL)


class MarkAtStep(Callback):
    """Writes ``path`` when the run is about to train global step ``step``: the signal tests send
    SIGTERM from outside once it exists, so the signal arrives mid-training."""

    def __init__(self, step: int, path: str) -> None:
        self.step = step
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            Path(self.path).touch()


class KillRankAtStep(Callback):
    """SIGKILL one global rank (a node's process) when it is about to run ``step``; the others go on."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)


class HoldForSignal(Callback):
    """The cluster preemption test: pause mid-step (the batch handed to the training step, not yet
    trained) at ``step`` until the test has signalled the job (``<dirpath>/signalled`` exists), so the
    signal lands at a known point; once a requeue checkpoint exists, pause until SLURM stops the job."""

    def __init__(self, step: int, dirpath: str, timeout: float = 300.0) -> None:
        self.step, self.dirpath, self.timeout = step, Path(dirpath), timeout

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if int(os.environ.get("SLURM_RESTART_COUNT", 0)) > 0:
            return
        if trainer.global_step == self.step and not (self.dirpath / "signalled").exists():
            (self.dirpath / f"holding_rank{trainer.global_rank}").touch()
            self._wait(lambda: (self.dirpath / "signalled").exists())
        if list(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")):
            # requeued: SLURM's SIGTERM (which Lightning notes and lets pass), then SIGKILL, end this run
            self._wait(lambda: False)

    def _wait(self, done) -> None:  # noqa: ANN001
        deadline = time.monotonic() + self.timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"HoldForSignal: nothing happened within {self.timeout} s")
            time.sleep(0.1)
