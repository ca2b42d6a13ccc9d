"""The prototype table K (method.md, "Parts" 3): one learned 64-d row per task.

A prototype plays two roles: it is the task's anchor in retrieval space (L_Pro pulls each
example's retrieval vector towards its task's row) and, un-normalised, the input from which the
hypernetwork generates the task's adapters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class PrototypeTable(nn.Module):
    """``K ∈ R^{num_tasks × dim}``, initialised N(0, init_std²)."""

    def __init__(self, num_tasks: int, dim: int = 64, init_std: float = 1.0) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.weight = nn.Parameter(torch.randn(num_tasks, dim) * init_std)

    @property
    def num_tasks(self) -> int:
        return self.weight.shape[0]

    def forward(self, task_ids: Tensor) -> Tensor:
        """Raw (un-normalised) rows, as the hypernetwork consumes them."""
        return self.weight.index_select(0, task_ids)

    def normalized(self) -> Tensor:
        """Row-wise unit vectors k̂, as the losses and retrieval use them."""
        return F.normalize(self.weight, dim=-1)
