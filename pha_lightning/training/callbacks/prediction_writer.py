"""``pha predict``'s output: every prediction row, written once, whole, in input order."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from pha_lightning.files import atomic_write_text


def write_jsonl_atomic(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines, atomically (:func:`~pha_lightning.files.atomic_write`)."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return atomic_write_text(path, text, "predictions file")


class JSONLPredictionWriter(BasePredictionWriter):
    """Collects every prediction row and writes them once, in input order, when prediction ends.

    Rows with an ``index`` (raw examples) are sorted by it; others (the test split) keep loader
    order. Under DDP every rank predicts every example; rank 0 writes.
    """

    def __init__(self, output_path: str) -> None:
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self.rows: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if isinstance(prediction, list):
            self.rows.extend(prediction)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        rows = self.rows
        if rows and all("index" in row for row in rows):
            rows = sorted(rows, key=lambda row: row["index"])
        path = write_jsonl_atomic(self.output_path, rows)
        print(f"wrote {len(rows)} predictions to {path}", flush=True)
