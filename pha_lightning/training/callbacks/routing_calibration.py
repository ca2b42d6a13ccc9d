"""Calibrated routing, fitted after every validation and reported at the end of ``fit`` (docs/routing.md)."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.model.calibration import Calibration, calibrate, calibrate_added
from pha_lightning.training.callbacks.ranks import gather_rows
from pha_lightning.training.callbacks.retrieval_listener import ValidationRetrievalListener
from pha_lightning.training.routing_probe import calibrate_checkpoint, calibrate_model


class RoutingCalibration(ValidationRetrievalListener):
    """After each validation, fit the model's routing calibration (temperature, confusable groups,
    abstention threshold; :func:`~pha_lightning.model.calibration.calibrate`, settings
    ``model.routing``) on the validation examples' retrieval scores, so every checkpoint carries the
    calibration of its own weights. At the end of ``fit`` it prints the best checkpoint's.

    A transfer run validates its new tasks alone: the source tasks keep the source's calibration
    and the new tasks get their similarity floor (:func:`~pha_lightning.model.calibration.calibrate_added`).
    Any other validation that misses some of the model's tasks cannot calibrate them: the model then
    keeps no calibration, and says so.

    With ``model.routing.unlabelled_per_task`` > 0, at the end of ``fit`` the best checkpoint's
    routing is refitted by a probe on unlabelled training texts
    (:func:`~pha_lightning.training.routing_probe.calibrate_checkpoint`; the model in memory when no
    checkpoint was written): once, since embedding them costs minutes on a CPU.
    """

    def reset(self) -> None:
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []

    def on_retrieval(self, pl_module: LightningModule, z: Tensor, task_ids: Tensor) -> None:
        with torch.no_grad(), pl_module.full_weights():
            self._scores.append(pl_module.model.retrieval_scores(z).double().cpu())
        self._targets.append(task_ids.cpu())

    def report(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._scores:
            return
        scores, targets = gather_rows(trainer, torch.cat(self._scores)), gather_rows(trainer, torch.cat(self._targets))
        model = pl_module.model
        names = [task.name for task in model.task_objects]
        seen = {names[i] for i in targets.unique().tolist()}
        calibration = model.calibration
        if calibration is not None and calibration.added_tasks and seen == set(calibration.added_tasks):
            model.calibration = calibrate_added(calibration, scores, pl_module.routing_config)  # a transfer run
            return
        missing = sorted(set(names) - seen)
        if missing:
            model.calibration = None
            rank_zero_info(f"routing not calibrated: validation has no examples of tasks {missing}")
            return
        model.calibration = calibrate(scores, targets, names, pl_module.routing_config)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        callback = trainer.checkpoint_callback
        best = callback.best_model_path if callback is not None else None
        config = pl_module.routing_config
        calibration = pl_module.model.calibration
        own_tasks = calibration is not None and not calibration.added_tasks  # a transfer routes on the source's
        if config.unlabelled_per_task and own_tasks and trainer.is_global_zero:
            rank_zero_info(f"routing: fitting the probe on up to {config.unlabelled_per_task} training texts per task")
            if best:
                calibrate_checkpoint(best)  # with the routing settings it recorded: this run's
            else:
                pl_module.model.calibration = calibrate_model(pl_module.model, trainer.datamodule, config)
        trainer.strategy.barrier("routing probe")
        calibration = pl_module.model.calibration
        if best:
            saved = read_checkpoint(best).get("pha_routing")
            calibration = Calibration.from_dict(saved) if saved else None
        if calibration is not None:
            rank_zero_info(calibration.describe())
