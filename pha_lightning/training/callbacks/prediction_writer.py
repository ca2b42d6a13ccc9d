"""``pha predict``'s output: every prediction row, written once, whole, in input order; and how long
the command took to its first prediction."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

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


def first_prediction_report(marks: dict[str, float], now: float) -> str:
    """``first prediction after X s (imports Y s, …)``: ``marks`` are the times (``time.perf_counter()``)
    at which the command started and then each named phase ended, in order."""
    times = list(marks.values())
    phases = ", ".join(f"{name} {end - begin:.1f} s" for name, begin, end in zip(list(marks)[1:], times, times[1:]))
    return f"first prediction after {now - times[0]:.1f} s ({phases})"


class FirstPredictionTime(Callback):
    """Prints once, after the first predicted batch, how long the command took to get there and
    which start-up phases (``marks``, see :func:`first_prediction_report`) the time went to; the rest
    is reading the examples and predicting the first batch."""

    def __init__(self, marks: dict[str, float]) -> None:
        self.marks = marks
        self.reported = False

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.reported:
            return
        self.reported = True
        if trainer.is_global_zero:
            print(first_prediction_report(self.marks, time.perf_counter()), flush=True)
