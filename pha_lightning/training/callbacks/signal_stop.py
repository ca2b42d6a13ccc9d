"""A run stopped by SIGTERM (``kill``, SLURM before preemption or the time limit) says what it kept and
how to go on; ``pha`` then exits with :data:`pha_lightning.errors.SIGTERM_EXIT`, never 0 (docs/production.md, "Signals").

Lightning's signal connector catches SIGTERM and sets ``trainer.received_sigterm``; its training and
evaluation loops then stop after the current batch by raising ``SIGTERMException``. Its prediction
loop does not check, so this callback does, after every predicted batch.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SignalStop(Callback):
    """Stops prediction at SIGTERM as Lightning stops its other loops, and reports every stop by SIGTERM
    in one line: for ``fit`` the latest checkpoint, its step and the option that resumes from it. The
    prediction writer reports what prediction kept (:class:`JSONLPredictionWriter`)."""

    def __init__(self) -> None:
        self.saved_step: int | None = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.saved_step = int(checkpoint["global_step"])

    def on_predict_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.received_sigterm:
            raise SIGTERMException

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.is_global_zero:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            print(f"pha: {self.fit_report(trainer)}", file=sys.stderr, flush=True)
        elif trainer.state.fn != TrainerFn.PREDICTING:
            print(
                f"pha: stopped by SIGTERM during {trainer.state.fn.value}: no metrics were written; run the command again",
                file=sys.stderr,
                flush=True,
            )

    def fit_report(self, trainer: Trainer) -> str:
        """Where the stopped run can resume from, and how."""
        stopped = f"stopped by SIGTERM at step {trainer.global_step}"
        callback = trainer.checkpoint_callback
        path = callback.last_model_path or callback.best_model_path if callback is not None else ""
        if not path:
            return f"{stopped}; no checkpoint was written (checkpointing is off), so a new run starts from scratch"
        held = f" holds step {self.saved_step}" if self.saved_step is not None else ""  # None: saved by an earlier run
        return (
            f"{stopped}; the latest checkpoint {path}{held}. To resume, run the same command with "
            f"--ckpt_path last (or --ckpt_path {path})"
        )
