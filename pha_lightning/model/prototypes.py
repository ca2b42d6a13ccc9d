"""The prototype table K (docs/method.md, "The parts"): one learned 64-d row per task.

A prototype plays two roles: it is the task's anchor in retrieval space (L_Pro pulls each
example's retrieval vector towards its task's row) and, un-normalised, the input from which the
hypernetwork generates the task's adapters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pha_lightning.errors import ConfigError


class PrototypeTable(nn.Module):
    """``K ∈ R^{num_tasks × dim}``, initialised N(0, init_std²).

    Rows of tasks added to a trained table (few-shot transfer) live in their own parameter
    (``added``, in front), so that they can be tuned while the trained rows (``weight``) stay fixed.
    """

    def __init__(self, num_tasks: int, dim: int = 64, init_std: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_tasks, dim) * init_std)
        self.added: nn.Parameter | None = None

    def add_rows(self, count: int, init_std: float) -> None:
        """``count`` new rows in front of the table, drawn N(0, init_std²)."""
        if self.added is not None:
            raise ConfigError("this prototype table already has added rows; tasks are added once")
        self.added = nn.Parameter(torch.randn(count, self.weight.shape[1], device=self.weight.device) * init_std)

    @property
    def num_tasks(self) -> int:
        return self.weight.shape[0] + (0 if self.added is None else self.added.shape[0])

    def table(self) -> Tensor:
        """All rows, raw (un-normalised), in task-id order."""
        return self.weight if self.added is None else torch.cat([self.added, self.weight])

    def forward(self, task_ids: Tensor) -> Tensor:
        """Raw rows of ``task_ids``, as the hypernetwork consumes them."""
        return self.table().index_select(0, task_ids)

    def normalized(self) -> Tensor:
        """Row-wise unit vectors k̂, as the losses and retrieval use them."""
        return F.normalize(self.table(), dim=-1)
