"""A callback for the resume test: the training process SIGKILLs itself (no clean shutdown, no
final checkpoint) when it is about to run a given global step."""

from __future__ import annotations

import os
import signal

from lightning.pytorch import Callback


class KillAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
