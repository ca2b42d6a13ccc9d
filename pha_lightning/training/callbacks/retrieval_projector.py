"""Validation retrieval vectors and prototypes in TensorBoard's embedding projector (or as files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.nn import functional as F

from pha_lightning.training.callbacks.retrieval_listener import ValidationRetrievalListener
from pha_lightning.training.outputs import log_artifacts, run_folder
from pha_lightning.training.retrieval_picture import save_retrieval


class RetrievalProjector(ValidationRetrievalListener):
    """Send validation retrieval vectors and the prototypes to TensorBoard's embedding projector.

    After each validation, global rank 0 writes up to ``points_per_task`` of its normalised ``z``
    per task and every normalised prototype as one embedding tagged ``retrieval``, with metadata
    columns ``kind`` (example / prototype) and ``task``: colour by ``task`` in the projector to see
    whether the retriever separates tasks and where each prototype sits (cosine space, as
    retrieval scores it). With loggers but none of them TensorBoard (MLflow, W&B), it writes the
    same vectors and a 2-D picture of them as files instead, ``<log_dir>/retrieval/stepNNNNNN.
    {safetensors,json,png}``, and sends them to the loggers that store files; without a logger it
    does nothing. ``pha retrieve --output_dir`` draws the same picture for any checkpoint and task set.
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
        if not trainer.loggers or not self._tasks:  # the same on every rank (their loggers, their validation)
            return
        log_dir = run_folder(trainer) if writer is None else None  # a collective under DDP: every rank asks
        with pl_module.full_weights():  # a collective under sharding: before the rank-0 test
            prototypes = pl_module.model.prototypes.normalized().detach().float().cpu()
        if not trainer.is_global_zero:
            return
        names = [task.name for task in pl_module.model.task_objects]
        if writer is None:  # another logger: the picture and the vectors as files, sent to it as artifacts
            stem = Path(log_dir) / "retrieval" / f"step{trainer.global_step:06d}"
            labels = [names[t] for t in self._tasks]
            paths = save_retrieval(stem, torch.cat(self._points), labels, prototypes, names)
            log_artifacts(trainer, paths, log_dir)
            return
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
