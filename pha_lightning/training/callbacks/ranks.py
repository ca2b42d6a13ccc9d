"""What the callbacks that log a whole job's numbers share: summing over DDP ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor


def sum_over_ranks(trainer: Trainer, pl_module: LightningModule, values: Sequence[float]) -> Tensor:
    """``values`` summed over every rank (as they are on a single process): float64 on CPU, float32 on an accelerator."""
    summed = torch.tensor(
        values,
        device=pl_module.device,
        dtype=torch.float64 if pl_module.device.type == "cpu" else torch.float32,
    )
    if trainer.world_size > 1:
        summed = trainer.strategy.reduce(summed, reduce_op="sum")
    return summed


def gather_rows(trainer: Trainer, rows: Tensor) -> Tensor:
    """Every rank's ``rows`` (any number each, on the CPU), concatenated in rank order; this rank's alone without DDP."""
    if trainer.world_size == 1:
        return rows
    gathered: list[Tensor | None] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, rows.cpu())
    return torch.cat(gathered)
