"""Debugging: which examples each rank trained on, batch by batch (the DDP test reads it)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor


def example_fingerprint(input_ids: Tensor, attention_mask: Tensor) -> str:
    """A short digest of one example's real tokens (padding excluded)."""
    ids = input_ids[attention_mask.bool()].tolist()
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:16]


class RecordTrainingExamples(Callback):
    """Debugging: each rank appends one JSON line per training batch to
    ``<dirpath>/train_examples_rank<global rank>.jsonl``: global step, epoch, batch index, this
    rank's (unsynced) loss, and a fingerprint of every example's tokens with its task id.

        pha fit ... --trainer.callbacks+=pha_lightning.training.callbacks.RecordTrainingExamples \\
                    --trainer.callbacks.dirpath=runs/debug
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        row = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "loss": float(loss) if loss is not None else math.nan,
            "examples": [
                example_fingerprint(i, m) for i, m in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu())
            ],
            "task_ids": batch["task_ids"].tolist(),
        }
        with open(Path(self.dirpath) / f"train_examples_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
