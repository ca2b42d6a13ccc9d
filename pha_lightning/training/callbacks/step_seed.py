"""Dropout randomness as a function of the batch's place in the run, not of what was drawn before."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class StepSeed(Callback):
    """Reseed torch's generators (CPU and every CUDA device) before every training batch.

    The seed is derived from ``(seed, epoch, batch index, global rank)``, so the dropout masks of
    a batch do not depend on how much randomness was drawn before it (evaluation loaders, a
    restart, a resume mid-epoch), and ranks draw different masks. ``seed`` defaults to the run's
    ``seed_everything`` value; it is stored in checkpoints and restored with them.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def _base(self) -> int:
        if self.seed is None:
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return self.seed

    def step_seed(self, epoch: int, batch_idx: int, rank: int) -> int:
        return int(np.random.SeedSequence([self._base() & 0xFFFFFFFF, epoch, batch_idx, rank]).generate_state(1)[0])

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(self.step_seed(trainer.current_epoch, batch_idx, trainer.global_rank))

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self._base()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict["seed"])
