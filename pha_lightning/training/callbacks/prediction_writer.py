"""``pha predict``'s output: every prediction row, written once, whole, in input order (the rows done
when SIGTERM stopped it: to a ``.partial`` file beside); and how long the command took to its first
prediction."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pha_lightning.files import atomic_write_text
from pha_lightning.model.prediction import UNCALIBRATED_NOTE

#: appended to ``--predict_output`` for the rows a prediction stopped by SIGTERM had completed
PARTIAL_SUFFIX = ".partial"


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
        if trainer.is_global_zero:
            path = write_jsonl_atomic(self.output_path, self.ordered_rows())
            print(f"wrote {len(self.rows)} predictions to {path}", flush=True)
            routing_note(self.rows, pl_module.model.calibration is not None)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Stopped by SIGTERM: the complete rows go to ``<output>.partial``, never to the output itself,
        which only a finished prediction writes."""
        if not isinstance(exception, SIGTERMException) or not trainer.is_global_zero:
            return
        partial = write_jsonl_atomic(f"{self.output_path}{PARTIAL_SUFFIX}", self.ordered_rows())
        print(
            f"pha: stopped by SIGTERM after {len(self.rows)} predictions: wrote them to {partial}; "
            f"{self.output_path} was not written; run the command again to predict every example",
            file=sys.stderr,
            flush=True,
        )

    def ordered_rows(self) -> list[dict[str, Any]]:
        """The rows in input order when they come from an input file (``index``), else in loader order."""
        rows = self.rows
        if rows and all("index" in row for row in rows):
            rows = sorted(rows, key=lambda row: row["index"])
        return rows


def routing_note(rows: Sequence[dict[str, Any]], calibrated: bool) -> None:
    """Say how many examples without a task were abstained, or that routing had no calibration."""
    routed = [row for row in rows if row.get("routed")]
    abstained = sum("abstained" in row for row in routed)
    if routed and not calibrated:
        print(f"note: {UNCALIBRATED_NOTE}", flush=True)
    elif abstained:
        print(
            f"routing: {abstained} of {len(routed)} examples without a task abstained (task null, the reason in "
            '"abstained"); name their tasks to predict them',
            flush=True,
        )


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
