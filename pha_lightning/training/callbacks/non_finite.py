"""Stopping at the first NaN/inf loss or weight, before the bad state reaches the optimizer or a checkpoint."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from pha_lightning.errors import PHAError


class NonFiniteLossError(PHAError):
    """Training produced a NaN or infinite loss or weight."""


class NonFiniteGuard(Callback):
    """Stop training at the first non-finite loss or weight, keeping every checkpoint written so far good.

    * the loss is checked before ``backward`` (on every rank together under DDP, so no rank is
      left waiting): no gradient of a NaN loss reaches the optimizer;
    * the trainable weights are checked after each optimizer step, before the checkpoint
      callbacks of that step run (Lightning runs them last);
    * a checkpoint about to be written with a non-finite weight is refused.

    The error names the global step, the epoch and batch, and every loss term of the bad batch
    (recomputed without gradients), and the last checkpoint written.
    """

    def __init__(self, check_weights: bool = True) -> None:
        self.check_weights = check_weights
        self._batch: Any = None
        self._batch_idx = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
                f"{self._batch_idx}): {self._terms(pl_module)}. Training stopped before the optimizer step; "
                f"{self._last_checkpoint(trainer)}"
            )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.check_weights:
            return
        bad = _non_finite_weights(pl_module)
        any_bad = bool(bad)
        if trainer.world_size > 1:
            any_bad = trainer.strategy.reduce_boolean_decision(any_bad, all=False)
            bad = bad or ["(on another rank)"]
        if any_bad:
            raise NonFiniteLossError(
                f"non-finite weights after the optimizer step of step {trainer.global_step - 1} (epoch "
                f"{trainer.current_epoch}, batch {batch_idx}), e.g. {bad[:3]}; the loss was finite: "
                f"{self._terms(pl_module)}. No checkpoint of this state was written; {self._last_checkpoint(trainer)}"
            )
        self._batch = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = [
            k
            for k, v in checkpoint.get("state_dict", {}).items()
            if v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            raise NonFiniteLossError(f"refusing to write a checkpoint with non-finite weights, e.g. {bad[:3]}")

    def _terms(self, pl_module: LightningModule) -> str:
        terms_fn = getattr(pl_module, "loss_terms", None)
        if self._batch is None or terms_fn is None:
            return "loss terms unavailable"
        try:
            with torch.no_grad():
                terms = terms_fn(self._batch)
        except Exception as err:  # the report must not hide the original problem
            return f"loss terms could not be recomputed ({type(err).__name__}: {err})"
        return ", ".join(f"{name}={float(value):.6g}" for name, value in terms.items())

    @staticmethod
    def _last_checkpoint(trainer: Trainer) -> str:
        paths = [
            getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
            for cb in trainer.checkpoint_callbacks
        ]
        written = [p for p in paths if p and os.path.exists(p)]
        return f"the last good checkpoint is {written[0]}" if written else "no checkpoint had been written yet"


def _non_finite_weights(module: LightningModule) -> list[str]:
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in module.named_parameters() if p.requires_grad]
    if not params:
        return []
    finite = torch.stack([torch.isfinite(p).all() for p in params])  # one sync for all of them
    if bool(finite.all()):
        return []
    return [name for name, ok in zip(names, finite.tolist()) if not ok]
