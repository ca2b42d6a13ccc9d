"""Progress as plain text lines, for output that is no terminal (``nohup``, a SLURM job's log file).

Lightning's progress bars redraw one line in place: written to a file they show nothing until the
end, then one bar (``Epoch 3/-2`` when the run is bounded by steps). ``pha`` uses this progress
"bar" instead when its standard output is not a terminal (docs/production.md, "What a run prints").
"""

from __future__ import annotations

import datetime
import math
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.trainer.states import TrainerFn


def clock(seconds: float) -> str:
    """``H:MM:SS`` of a duration."""
    return str(datetime.timedelta(seconds=round(seconds)))


class TextProgress(ProgressBar):
    """A line after the first and the last step and every ``every_s`` seconds between: the step, the
    training loss, examples/s (logged by :class:`Throughput`), the time elapsed and the time left;
    after each validation during ``fit`` its ``val/avg``; in ``validate``, ``test`` and ``predict`` the
    batches done. Only rank 0 prints."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0 seconds, got {every_s!r}")
        self.every_s = every_s
        self.enabled = True
        self.started = time.monotonic()
        self.last_line = -math.inf
        self.done = 0  # batches of the current validate/test/predict command
        self.first_step = 0  # the global step training started (or resumed) at
        self.total_steps: float = math.inf  # of the whole run (inf: unbounded)

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def restart_clock(self) -> None:
        self.started, self.last_line, self.done = time.monotonic(), -math.inf, 0

    def due(self, last: bool) -> bool:
        """Whether to print a line now (always for the ``last``)."""
        now = time.monotonic()
        if not self.enabled or not (last or now - self.last_line >= self.every_s):
            return False
        self.last_line = now
        return True

    def timing(self, done: int, left: float) -> str:
        """``0:01:05 elapsed, ~0:09:45 left``: ``left`` more units at the mean pace of the ``done`` so far."""
        elapsed = time.monotonic() - self.started
        text = f"{clock(elapsed)} elapsed"
        if done > 0 and math.isfinite(left) and left > 0:
            text += f", ~{clock(elapsed / done * left)} left"
        return text

    # ------------------------------------------------------------------ fit
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.restart_clock()
        self.first_step, self.total_steps = trainer.global_step, trainer.estimated_stepping_batches

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.due(last=trainer.global_step >= self.total_steps):
            self.print(self.train_line(trainer), flush=True)

    def train_line(self, trainer: Trainer) -> str:
        """``step 40/400 | loss 0.8123 | 31.2 examples/s | 0:01:05 elapsed, ~0:09:45 left``"""
        step, metrics, total = trainer.global_step, trainer.callback_metrics, self.total_steps
        parts = [f"step {step}/{total if math.isfinite(total) else '?'}"]
        if "train/loss" in metrics:
            parts.append(f"loss {float(metrics['train/loss']):.4f}")
        if "throughput/examples_per_s" in metrics:
            parts.append(f"{float(metrics['throughput/examples_per_s']):.1f} examples/s")
        return " | ".join([*parts, self.timing(step - self.first_step, total - step)])

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        average = trainer.callback_metrics.get("val/avg")
        fitting = trainer.state.fn == TrainerFn.FITTING
        if self.enabled and fitting and not trainer.sanity_checking and average is not None:
            self.print(f"validation at step {trainer.global_step}: val/avg {float(average):.2f}", flush=True)

    # ------------------------------------------------------------------ validate, test, predict
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # not the validations during fit
            self.restart_clock()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.restart_clock()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.restart_clock()

    def on_validation_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # not the validations during fit
            self.batch_line(trainer, "validate", trainer.num_val_batches)

    def on_test_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self.batch_line(trainer, "test", trainer.num_test_batches)

    def on_predict_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self.batch_line(trainer, "predict", trainer.num_predict_batches)

    def batch_line(self, trainer: Trainer, stage: str, totals: list[int | float]) -> None:
        """``predict: batch 120/750 | 0:01:05 elapsed, ~0:05:40 left``"""
        self.done += 1
        total = sum(totals)
        if self.due(last=self.done >= total):
            self.print(f"{stage}: batch {self.done}/{total} | {self.timing(self.done, total - self.done)}", flush=True)
