"""Scheduling, logging and saving the training-health measures of :mod:`pha_lightning.training.health`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from pha_lightning.files import atomic_write_text
from pha_lightning.training.health import HealthThresholds, format_health, health_report, probe_batches
from pha_lightning.training.outputs import log_artifacts, run_folder


class TrainingHealth(Callback):
    """Measure the run's health (:func:`pha_lightning.training.health.health_report`) on the first
    ``probe_examples`` examples of each task's validation loader: before training, after each
    validation, and at the end of ``fit``. The prototypes' initial values travel in checkpoints,
    so a resumed run still reports how far they moved from their very start.
    """

    def __init__(self, probe_examples: int = 64, thresholds: HealthThresholds = HealthThresholds()) -> None:
        self.probe_examples = probe_examples
        self.thresholds = thresholds
        self.initial_prototypes: Tensor | None = None
        self.reports: dict[str, dict[str, Any]] = {}

    def measure(self, trainer: Trainer, pl_module: LightningModule, when: str) -> dict[str, Any]:
        loaders = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else trainer.val_dataloaders
        batches = probe_batches(loaders or [], self.probe_examples, pl_module.device)
        with pl_module.full_weights():
            report = health_report(pl_module.model, batches, self.initial_prototypes, self.thresholds)
        report["step"] = trainer.global_step
        self.reports[when] = report
        return report

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.initial_prototypes is None and pl_module.model.prototypes is not None:
            with pl_module.full_weights():
                self.initial_prototypes = pl_module.model.prototypes.table().detach().cpu().clone()
        if "start" not in self.reports:
            self.measure(trainer, pl_module, "start")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        report = self.measure(trainer, pl_module, "end")
        for logger in trainer.loggers:
            logger.log_metrics(_health_scalars(report), step=trainer.global_step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report = self.reports.get("end")
        if report is None or report["step"] != trainer.global_step:
            report = self.measure(trainer, pl_module, "end")
        log_dir = run_folder(trainer)  # a collective under DDP: every rank must ask
        if trainer.is_global_zero:
            print(f"training health at step {report['step']} (docs/training_health.md):\n{format_health(report)}")
            path = atomic_write_text(
                Path(log_dir) / "health.json", json.dumps(self.reports, indent=1) + "\n", "health report"
            )
            log_artifacts(trainer, [path], log_dir)

    def state_dict(self) -> dict[str, Any]:
        return {"initial_prototypes": self.initial_prototypes, "reports": self.reports}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial_prototypes = state_dict.get("initial_prototypes")
        self.reports = state_dict.get("reports", {})


def _health_scalars(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as ``health/...`` scalars (per block, per layer, per task)."""
    scalars = {
        f"health/{key}/block_{b}": r
        for key in ("adapter_to_residual", "lora_to_base")
        for b, r in enumerate(report[key])
    }
    for key in ("shared_adapter_norm", "generated_adapter_norm", "generated_between_task_spread"):
        scalars.update({f"health/{key}/layer_{i}": v for i, v in enumerate(report.get(key, []))})
    for key in ("prototype_shift", "top_axis_share"):
        scalars.update({f"health/{key}/{task}": v for task, v in report.get(key, {}).items()})
    if report["top_axis_share"]:
        scalars["health/max_top_axis_share"] = max(report["top_axis_share"].values())
    return scalars
