"""One validation at the end of a run too short to have validated, so there is a checkpoint to select."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class FinalValidation(Callback):
    """Validate after the last training step when no validation has run during this fit.

    A smoke run shorter than ``val_check_interval`` would otherwise end with no validated
    checkpoint, and checkpoint selection (``checkpoint.monitor``) with nothing to select from.
    Setting ``trainer.should_stop`` at the last step makes Lightning validate once more before
    stopping, inside the fit, so ModelCheckpoint saves and ranks that checkpoint as usual.
    """

    def __init__(self) -> None:
        self.validated = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.validated = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated = True

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.validated or not trainer.enable_validation or not _is_last_step(trainer, batch_idx):
            return
        rank_zero_info(
            f"no validation has run in the {trainer.global_step} training steps of this run "
            f"(val_check_interval {trainer.val_check_interval}): validating after the last step, "
            "so that the final checkpoint is validated and can be selected and tested"
        )
        trainer.should_stop = True


def _is_last_step(trainer: Trainer, batch_idx: int) -> bool:
    """Whether this batch ends training: ``max_steps`` reached, or the last batch of the last epoch."""
    if 0 <= trainer.max_steps <= trainer.global_step:
        return True
    last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
    return last_epoch and batch_idx + 1 >= trainer.num_training_batches
