"""How often validation examples retrieve their own task's prototype."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torch.nn import functional as F

from pha_lightning.training.callbacks.ranks import sum_over_ranks
from pha_lightning.training.callbacks.retrieval_listener import ValidationRetrievalListener


class RetrieverTaskAccuracy(ValidationRetrievalListener):
    """Log ``retriever/val_task_accuracy`` (×100): the share of validation examples whose nearest
    prototype (cosine of the normalised ``z`` with the normalised prototypes) is their own task —
    the retriever's task identification. Counts are summed over ranks.
    """

    def reset(self) -> None:
        self._correct = self._total = 0

    def on_retrieval(self, pl_module: LightningModule, z: Tensor, task_ids: Tensor) -> None:
        with torch.no_grad(), pl_module.full_weights():
            nearest = (F.normalize(z, dim=-1) @ pl_module.model.prototypes.normalized().float().T).argmax(-1)
        self._correct += int((nearest == task_ids).sum())
        self._total += len(nearest)

    def report(self, trainer: Trainer, pl_module: LightningModule) -> None:
        counts = sum_over_ranks(trainer, pl_module, [self._correct, self._total])
        if counts[1] > 0:
            pl_module.log("retriever/val_task_accuracy", float(100 * counts[0] / counts[1]))
