"""Training speed: examples/s and tokens/s of the whole job."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from pha_lightning.training.callbacks.ranks import sum_over_ranks


def batch_token_count(batch: dict[str, Tensor]) -> int:
    """Real (non-padding) tokens of a batch: input tokens, plus target tokens on the seq2seq path."""
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
    if "labels" in batch:
        tokens += int((batch["labels"] != -100).sum())
    return tokens


class Throughput(Callback):
    """Log ``throughput/examples_per_s`` and ``throughput/tokens_per_s`` of training.

    Measured as wall-clock time between consecutive training batches (data loading, forward,
    backward, optimizer step), over a sliding window of ``window`` batches; validation time is not
    counted. Under DDP the rates are summed over ranks (the whole job's throughput).
    """

    def __init__(self, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=window)
        self._last: float | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        self._samples.append((now - (self._last or now), len(batch["task_ids"]), batch_token_count(batch)))
        self._last = now
        seconds = sum(s[0] for s in self._samples)
        if seconds <= 0:
            return
        rates = sum_over_ranks(
            trainer,
            pl_module,
            [sum(s[1] for s in self._samples) / seconds, sum(s[2] for s in self._samples) / seconds],
        )
        pl_module.log("throughput/examples_per_s", float(rates[0]), on_step=True, on_epoch=False)
        pl_module.log("throughput/tokens_per_s", float(rates[1]), on_step=True, on_epoch=False)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last = None  # the next training batch restarts the clock

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last = None
