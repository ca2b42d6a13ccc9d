"""The ``checkpoint`` callback: ``last.ckpt`` is the latest state, so a resumed run repeats no steps."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info


class LatestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` holds the state after every validation, and after the
    batch during which the run received SIGTERM (Lightning's loops stop after that batch).

    Lightning 2.6 rewrites ``last.ckpt`` only when a top-k checkpoint is saved, so once the
    monitored metric stops improving, ``last.ckpt`` is the best state, and a resumed run repeats
    every step since then. ``save_last: link`` keeps Lightning's behaviour.

    A resumed run keeps its best-checkpoint record (docs/production.md, "Resume an interrupted run
    exactly"): Lightning forgets the best score whenever the checkpoint folder differs from the one
    the state was saved in, so the first validation after resuming became "best" however bad it was. Without an explicit
    ``dirpath`` the run keeps writing to the folder of the run it resumes (not the new logger
    version's); a run folder that was moved or copied elsewhere (another worktree, another mount
    point) is recognised by the resumed ``last.ckpt`` living there, and its record follows it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.follows_log_dir = self.dirpath is None  # setup() derives it from the logger's version
        self.resumed_from: str | None = None

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.resumed_from = str(trainer.ckpt_path) if trainer.ckpt_path else None  # runs before load_state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        folder = self._run_folder(state_dict)
        if folder and (self.follows_log_dir or folder == self.dirpath):
            if folder != self.dirpath or folder != state_dict.get("dirpath"):
                rank_zero_info(f"resuming: checkpoints stay in the resumed run's folder {folder}")
            self.dirpath = folder
            state_dict = _rebased(state_dict, folder)
        super().load_state_dict(state_dict)

    def _run_folder(self, state_dict: dict[str, Any]) -> str | None:
        """Where the resumed run's checkpoints are now: the folder of the resumed checkpoint when it
        is this callback's ``last`` file (the folder may have moved since it was saved), else the
        folder the state names, if it still exists."""
        last, saved = state_dict.get("last_model_path"), state_dict.get("dirpath")
        resumed = self.resumed_from
        if resumed and last and os.path.basename(last) == os.path.basename(resumed) and os.path.isfile(resumed):
            return os.path.dirname(os.path.realpath(resumed))
        return saved if saved and os.path.isdir(saved) else None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # any rank's signal stops every rank (Lightning broadcasts it before the next batch): all save
        if self.save_last is not True or trainer.fast_dev_run:
            return
        if trainer.strategy.reduce_boolean_decision(trainer.received_sigterm, all=False):
            self._save_latest(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ranked = (self.best_model_path, dict(self.best_k_models))
        super().on_validation_end(trainer, pl_module)
        if self.save_last is not True or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if trainer.state.fn != TrainerFn.FITTING or ranked != (self.best_model_path, dict(self.best_k_models)):
            return  # not training, or Lightning wrote last.ckpt with the new top-k checkpoint
        self._save_latest(trainer)

    def _save_latest(self, trainer: Trainer) -> None:
        """Write the current state to ``last.ckpt``."""
        self.last_model_path = self.last_model_path or self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        trainer.save_checkpoint(self.last_model_path)


def _rebased(state_dict: dict[str, Any], folder: str) -> dict[str, Any]:
    """A ModelCheckpoint state with its folder and every checkpoint path it names moved to ``folder``."""

    def move(path: str) -> str:
        return os.path.join(folder, os.path.basename(path)) if path else path

    return {
        **state_dict,
        "dirpath": folder,
        **{
            key: move(state_dict[key])
            for key in ("best_model_path", "kth_best_model_path", "last_model_path")
            if key in state_dict
        },
        "best_k_models": {move(path): score for path, score in state_dict.get("best_k_models", {}).items()},
    }
