"""Callbacks for the resume and fault tests: the training process SIGKILLs itself (no clean shutdown,
no final checkpoint) when it is about to run a given global step, or between two checkpoint writes;
or it marks a step, for the signal tests to send SIGTERM from outside."""

from __future__ import annotations

import os
import signal
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
