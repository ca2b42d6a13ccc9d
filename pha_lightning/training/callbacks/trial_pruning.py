"""Pruning a sweep's trial on its validation metric (``pha sweep``)."""

from __future__ import annotations

import math
from typing import Any, Protocol

from lightning.pytorch import Callback, LightningModule, Trainer

from pha_lightning.errors import ConfigError
from pha_lightning.training.outputs import run_folder


class Trial(Protocol):
    """What the callback needs of a trial (an ``optuna.Trial`` is one): record an attribute, report a
    value, ask whether to stop."""

    def set_user_attr(self, key: str, value: object) -> None: ...

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class TrialPruning(Callback):
    """After each validation, report ``monitor`` to the trial at the global step and stop training
    when the trial's pruner says so (not at the run's last step: a finished run is complete);
    :attr:`pruned_at` is then that step (``None``: not pruned). At the start it records in the trial
    where the run writes (``run_dir``, ``checkpoint_dir``) and the step it starts from
    (``start_step``), so that a trial whose process is killed can be resumed from its checkpoint.

    optuna-integration's ``PyTorchLightningPruningCallback`` reports at the *epoch*, so a run that
    validates every ``val_check_interval`` steps within one epoch (PHA's configs) would report one
    value and have the rest ignored; and it raises from inside the training loop, while this
    callback lets the fit end normally (checkpoints, health report, logs), so a pruned trial keeps
    a whole run folder.
    """

    def __init__(self, trial: Trial, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None
        self.start_step = 0

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.start_step = int(checkpoint["global_step"])  # the trainer's global step is restored only later

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size > 1:
            raise ConfigError(
                f"pha sweep trains each trial in its own process on one device, not {trainer.world_size}; "
                "run one pha sweep per device with the same --sweep.storage (they join one study)"
            )
        checkpointing = trainer.checkpoint_callback
        self.trial.set_user_attr("run_dir", str(run_folder(trainer)))
        self.trial.set_user_attr("checkpoint_dir", checkpointing.dirpath if checkpointing else None)
        self.trial.set_user_attr("start_step", self.start_step)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_at is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigError(
                f"the sweep's metric {self.monitor!r} was not logged in validation; logged: "
                f"{sorted(k for k in trainer.callback_metrics if k.startswith('val/'))}"
            )
        value = float(value)
        if not math.isfinite(value):
            return
        self.trial.report(value, step=trainer.global_step)
        if 0 <= trainer.max_steps <= trainer.global_step:
            return  # the run's last validation: nothing left to save, its result stands as complete
        if self.trial.should_prune():
            self.pruned_at = trainer.global_step
            trainer.should_stop = True
