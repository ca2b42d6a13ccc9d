"""Validation retrieval vectors and prototypes in TensorBoard's embedding projector."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.nn import functional as F

from pha_lightning.training.callbacks.retrieval_listener import ValidationRetrievalListener


class RetrievalProjector(ValidationRetrievalListener):
    """Send validation retrieval vectors and the prototypes to TensorBoard's embedding projector.

    After each validation, global rank 0 writes up to ``points_per_task`` of its normalised ``z``
    per task and every normalised prototype as one embedding tagged ``retrieval``, with metadata
    columns ``kind`` (example / prototype) and ``task``: colour by ``task`` in the projector to see
    whether the retriever separates tasks and where each prototype sits (cosine space, as
    retrieval scores it). Does nothing without a TensorBoard logger; ``pha retrieve --output_dir``
    draws the same picture as a PNG for any checkpoint and task set.
    """

    def __init__(self, points_per_task: int = 200) -> None:
        super().__init__()
        if points_per_task < 1:
            raise ValueError(f"points_per_task must be >= 1, got {points_per_task}")
        self.points_per_task = points_per_task

    def reset(self) -> None:
        self._points: list[Tensor] = []
        self._tasks: list[int] = []
        self._count: dict[int, int] = {}

    def on_retrieval(self, pl_module: LightningModule, z: Tensor, task_ids: Tensor) -> None:
        keep = []
        for row, task in enumerate(task_ids.tolist()):
            if self._count.get(task, 0) < self.points_per_task:
                self._count[task] = self._count.get(task, 0) + 1
                keep.append(row)
        if keep:
            self._points.append(F.normalize(z[keep], dim=-1).cpu())
            self._tasks.extend(task_ids[keep].tolist())

    def report(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = _tensorboard_writer(trainer)
        if writer is None or not self._tasks:  # the same on every rank (their loggers, their validation)
            return
        with pl_module.full_weights():  # a collective under sharding: before the rank-0 test
            prototypes = pl_module.model.prototypes.normalized().detach().float().cpu()
        if not trainer.is_global_zero:
            return
        names = [task.name for task in pl_module.model.task_objects]
        writer.add_embedding(
            torch.cat([*self._points, prototypes]),
            metadata=[["example", names[t]] for t in self._tasks] + [["prototype", name] for name in names],
            metadata_header=["kind", "task"],
            global_step=trainer.global_step,
            tag="retrieval",
        )


def _tensorboard_writer(trainer: Trainer) -> Any:
    """The SummaryWriter of the trainer's TensorBoard logger, if it has one."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
