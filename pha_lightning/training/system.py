"""``PHAModule``: the Lightning system that trains a :class:`~pha_lightning.model.PHAModel`.

Training loss ``CE_ls + λ_IR·L_IR + λ_Pro·L_Pro`` (:mod:`pha_lightning.training.losses`), the
per-task metrics, AdamW with a linear schedule, the checkpoint format (no frozen backbone
weights), and few-shot transfer to new tasks (:mod:`pha_lightning.training.transfer`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn import functional as F

from pha_lightning.errors import ConfigError
from pha_lightning.hub import resolve_backbone_path
from pha_lightning.model.bundle import check_state_complete
from pha_lightning.model.config import ARCHITECTURE_KEYS, PHAConfig
from pha_lightning.model.migration import CHECKPOINT_VERSION, CHECKPOINT_VERSION_KEY, upgrade_checkpoint
from pha_lightning.model.pha import PHAModel
from pha_lightning.model.prediction import label_of, predict_rows
from pha_lightning.training.checkpoints import check_compatible, check_state_fits, model_state
from pha_lightning.training.losses import (
    instance_contrastive_loss,
    label_smoothed_cross_entropy,
    prototype_contrastive_loss,
)
from pha_lightning.training.metrics import build_task_metrics
from pha_lightning.training.settings import LossConfig, OptimConfig, as_settings
from pha_lightning.training.transfer import (
    TransferConfig,
    format_rankings,
    initialize_new_tasks,
    read_source,
    set_trainable,
)


class PHAModule(LightningModule):
    """Trains a :class:`PHAModel`: its losses, metrics, optimiser and schedule, checkpoints, transfer.

    Args:
        arch: The architecture (model.arch).
        loss: The training loss (model.loss).
        optim: The optimisation (model.optim).
        transfer: Few-shot transfer: adapt a trained PHA checkpoint to these tasks as new tasks
            (model.transfer); the architecture then comes from that checkpoint.
    """

    def __init__(
        self,
        arch: PHAConfig,
        loss: LossConfig = LossConfig(),
        optim: OptimConfig = OptimConfig(),
        transfer: TransferConfig | None = None,
    ) -> None:
        super().__init__()
        self.loss_config: LossConfig = as_settings(LossConfig, loss)
        self.optim_config: OptimConfig = as_settings(OptimConfig, optim)
        self.transfer = TransferConfig(**transfer) if isinstance(transfer, dict) else transfer
        self.strict_loading = False  # checkpoints hold no frozen backbone weight
        self.model, arch = self._build_model(arch if isinstance(arch, PHAConfig) else PHAConfig.from_dict(arch))
        # plain data, so checkpoints load with weights_only; the keys are this constructor's arguments
        self.save_hyperparameters(
            {
                "arch": arch.to_dict(),
                "loss": asdict(self.loss_config),
                "optim": asdict(self.optim_config),
                "transfer": asdict(self.transfer) if self.transfer else None,
            }
        )
        evaluated = self.model.task_objects[: len(arch.tasks)]
        self.val_metrics = nn.ModuleDict({t.name: build_task_metrics(t) for t in evaluated})
        self.test_metrics = nn.ModuleDict({t.name: build_task_metrics(t) for t in evaluated})
        #: the latest validation results, stored in each checkpoint as ``pha_val_metrics``
        self.last_val_metrics: dict[str, float] = {}

    def _build_model(self, arch: PHAConfig) -> tuple[PHAModel, PHAConfig]:
        """The model ``arch`` describes, and the architecture the hyperparameters record; for a
        transfer, the source model (its architecture) with the new tasks in front."""
        if not self.transfer:
            arch = replace(arch, retriever=self._retriever_wanted(arch))
            return PHAModel(arch), arch
        source = read_source(self.transfer, arch.backbone, arch.tasks)
        saved = PHAConfig.from_dict(source["hyper_parameters"]["arch"])
        if arch.method != saved.method:
            raise ConfigError(
                f"model.arch.method is {arch.method!r} but the transfer checkpoint was trained with {saved.method!r}"
            )
        if saved.output_layer != "task_heads":
            raise ConfigError(
                f"few-shot transfer needs a source trained with model.arch.output_layer 'task_heads' (a new task gets "
                f"its own head); {self.transfer.checkpoint!r} has {saved.output_layer!r}"
            )
        arch = replace(arch, **{key: getattr(saved, key) for key in ARCHITECTURE_KEYS})
        model = PHAModel(replace(arch, tasks=saved.tasks, task_specs=saved.task_specs, retriever=saved.retriever))
        state = model_state(source["state_dict"])
        check_state_fits(state, model.state_dict(), f"transfer checkpoint {self.transfer.checkpoint!r}")
        model.load_state_dict(state, strict=False)
        model.add_tasks(list(arch.tasks), arch.task_specs)
        set_trainable(model, self.transfer.tune)
        return model, arch

    def _retriever_wanted(self, arch: PHAConfig) -> bool:
        """PHA trains its retriever with L_IR/L_Pro; with a single task they contrast nothing, so
        the run trains on the task loss alone and says so once, rather than failing at its first step."""
        loss = self.loss_config
        if arch.method == "pha" and (loss.lambda_ir or loss.lambda_pro) and len(arch.tasks) == 1:
            rank_zero_info(
                f"PHA on the single task {arch.tasks[0]!r}: L_IR and L_Pro contrast tasks with each other, so with one "
                f"task they have nothing to contrast; training on the task loss alone (model.loss.lambda_ir="
                f"{loss.lambda_ir} and model.loss.lambda_pro={loss.lambda_pro} are inactive, and no retriever is built)"
            )
        return loss.trains_retriever(arch.tasks)

    def on_fit_start(self) -> None:
        if self.transfer and self.trainer.ckpt_path is None:  # not when resuming a transfer run
            # every rank sees all support examples and the same seed, so all ranks start alike
            rankings = initialize_new_tasks(
                self.model, self.transfer, self.trainer.datamodule.task_dataloaders("train")
            )
            rank_zero_info(
                f"transfer ({self.transfer.init}) — source tasks ranked by retrieval:\n{format_rankings(rankings)}"
            )
        trainable, total = self.model.trainable_parameter_counts()
        rank_zero_info(
            f"{self.model.config.method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f} %)"
        )
        for logger in self.loggers:
            logger.log_metrics({"params/trainable": trainable, "params/total": total}, step=0)

    def forward(self, batch: dict[str, Tensor], chunked: bool = True) -> dict[str, Tensor]:
        return self.model(batch, chunked=chunked)

    # ------------------------------------------------------------------ losses
    def task_loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """Label-smoothed CE (MSE for regression heads), averaged over the examples of the batch."""
        eps, model = self.loss_config.label_smoothing, self.model
        if model.family == "seq2seq":
            return label_smoothed_cross_entropy(out["lm_logits"], batch["labels"], eps)
        inputs, total = model.heads.loss_inputs(out["pooled"], batch["task_ids"], batch["targets"])
        for outputs, targets, regression in inputs:
            if regression:
                loss = self.loss_config.regression_loss_weight * F.mse_loss(outputs, targets)
            else:
                loss = label_smoothed_cross_entropy(outputs, targets, eps)
            total = total + loss * len(targets)
        return total / len(batch["task_ids"])

    def loss_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = self.model(batch)
        hp = self.loss_config
        terms = {"ce": self.task_loss(out, batch)}
        if out["z"] is None or self.model.prototypes is None:  # baselines, and PHA with both weights 0
            terms["loss"] = terms["ce"]
            return terms
        if hp.lambda_ir:
            terms["l_ir"] = instance_contrastive_loss(out["z"], batch["task_ids"], hp.contrastive_temperature)
        if hp.lambda_pro:
            terms["l_pro"] = prototype_contrastive_loss(
                out["z"],
                self.model.prototypes.table(),
                batch["task_ids"],
                hp.contrastive_temperature,
                hp.pro_denominator,
            )
        terms["loss"] = terms["ce"] + hp.lambda_ir * terms.get("l_ir", 0.0) + hp.lambda_pro * terms.get("l_pro", 0.0)
        return terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.loss_terms(batch)
        batch_size = len(batch["task_ids"])
        # sync_dist: under DDP the logged values are means over the ranks (the global batch), not rank 0's
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"}, batch_size=batch_size, sync_dist=True)
        return terms["loss"]

    def on_train_epoch_start(self) -> None:
        # Lightning only calls set_epoch on a dataloader's sampler, never on a custom batch sampler
        batch_sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        if callable(getattr(batch_sampler, "set_epoch", None)):
            batch_sampler.set_epoch(self.current_epoch)

    # ------------------------------------------------------------------ prediction and evaluation
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        if "example_ids" in batch:  # raw examples of data.predict_file, with or without a task
            return predict_rows(self.model, batch)
        values = self.model.predict_values(batch)
        rows = []
        for task_id, value, target in zip(batch["task_ids"].tolist(), values.tolist(), batch["targets"].tolist()):
            task = self.model.task_objects[task_id]
            rows.append({"task": task.name, "prediction": value, "label": label_of(task, value)[1], "target": target})
        return rows

    def _eval_step(self, batch: dict[str, Tensor], metrics: nn.ModuleDict) -> None:
        preds = self.model.predict_values(batch)
        for task in torch.unique(batch["task_ids"]).tolist():
            mask = batch["task_ids"] == task
            # MultiRC's exact match is per question: its metric takes the question ids as `groups`
            extra = {"groups": batch["groups"][mask]} if "groups" in batch else {}
            metrics[self.model.task_objects[task].name].update(preds[mask], batch["targets"][mask], **extra)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self.test_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_eval_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_eval_metrics("test", self.test_metrics)

    def _log_eval_metrics(self, stage: str, metrics: nn.ModuleDict) -> None:
        """Log ``<stage>/<task>/<metric>`` and ``<stage>/avg``, the mean over tasks of each task's mean metric."""
        values: dict[str, Tensor] = {}
        task_means = []
        for name, collection in metrics.items():
            results = collection.compute()
            collection.reset()
            values.update({f"{stage}/{name}/{metric}": value for metric, value in results.items()})
            task_means.append(torch.stack([v.float() for v in results.values()]).mean())
        values[f"{stage}/avg"] = torch.stack(task_means).mean()
        # torchmetrics already synced these over ranks (compute); sync_dist keeps Lightning from warning
        self.log_dict({k: v for k, v in values.items() if k != f"{stage}/avg"}, sync_dist=True)
        self.log(f"{stage}/avg", values[f"{stage}/avg"], prog_bar=True, sync_dist=True)
        if stage == "val":
            self.last_val_metrics = {k: float(v) for k, v in values.items()}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        # imported here: transformers' optimization module imports its Trainer's utilities and peft (~1 s of start-up)
        from transformers import get_linear_schedule_with_warmup

        hp = self.optim_config
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay, eps=hp.adam_epsilon)
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ConfigError("set trainer.max_steps or trainer.max_epochs: the linear schedule needs a finite length")
        scheduler = get_linear_schedule_with_warmup(optimizer, min(hp.warmup_steps, int(total_steps)), int(total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen backbone weights; record the format and how to rebuild the backbone."""
        keep = {f"model.{name}" for name in self.model.saved_state_keys()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[CHECKPOINT_VERSION_KEY] = CHECKPOINT_VERSION
        config = self.model.config
        checkpoint["pha_backbone"] = {
            "name": config.backbone,
            "resolved_path": resolve_backbone_path(config.backbone),
            "family": self.model.family,
            "init": config.backbone_init,
        }
        checkpoint["pha_val_metrics"] = dict(self.last_val_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint)
        saved = checkpoint["hyper_parameters"]
        # trained on other tasks, another backbone or architecture: a clear error, not a silent misfit
        transfer = bool(saved.get("transfer") or self.transfer)
        check_compatible(saved["arch"], self.hparams.arch, "the checkpoint", transfer=transfer)
        check_state_fits(checkpoint["state_dict"], self.state_dict(), "the checkpoint")
        wanted = {f"model.{k}" for k in self.model.saved_state_keys()}
        check_state_complete(checkpoint["state_dict"], wanted, "the checkpoint")


def load_system(checkpoint: dict[str, Any]) -> PHAModule:
    """The system a checkpoint (read by :func:`~pha_lightning.training.checkpoints.read_checkpoint`)
    holds, with its weights: its class path is not imported, so checkpoints of older layouts load."""
    system = PHAModule(**upgrade_checkpoint(checkpoint)["hyper_parameters"])
    system.on_load_checkpoint(checkpoint)
    system.load_state_dict(checkpoint["state_dict"], strict=False)
    return system
