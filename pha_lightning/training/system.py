"""``PHAModule``: the Lightning system that trains a :class:`~pha_lightning.model.PHAModel`.

Training loss ``CE_ls + λ_IR·L_IR + λ_Pro·L_Pro`` (+ ``λ_ratio·L_ratio + λ_apart·L_apart``, off by default)
(:mod:`pha_lightning.training.losses`), the
per-task metrics, AdamW with a linear schedule, the checkpoint format (no frozen backbone
weights), and few-shot transfer to new tasks (:mod:`pha_lightning.training.transfer`).
"""

from __future__ import annotations

import contextlib
import math
from contextlib import AbstractContextManager
from dataclasses import asdict, replace
from functools import partial
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR

from pha_lightning.data.catalog import resolve_tasks
from pha_lightning.errors import ConfigError
from pha_lightning.formats.checkpoint import SERVED_ARCH_KEY, as_served
from pha_lightning.formats.migration import CHECKPOINT_VERSION, CHECKPOINT_VERSION_KEY, upgrade_checkpoint
from pha_lightning.formats.state import check_state_complete, check_state_fits, model_state
from pha_lightning.hub import resolve_backbone_path
from pha_lightning.model.calibration import Calibration, RoutingConfig
from pha_lightning.model.config import ARCHITECTURE_KEYS, PHAConfig
from pha_lightning.model.methods import method_layout
from pha_lightning.model.pha import PHAModel
from pha_lightning.model.prediction import predict_rows, prediction_fields
from pha_lightning.model.sharding import gathered, is_sharded, shard_model
from pha_lightning.training.checkpoints import check_compatible
from pha_lightning.training.health import probe_adapters
from pha_lightning.training.losses import (
    between_task_similarity,
    instance_contrastive_loss,
    label_smoothed_cross_entropy,
    prototype_contrastive_loss,
)
from pha_lightning.training.metrics import build_task_metrics
from pha_lightning.training.settings import LossConfig, OptimConfig, as_settings
from pha_lightning.training.transfer import (
    TransferConfig,
    distant_source_advice,
    format_rankings,
    initialize_new_tasks,
    read_source,
    set_trainable,
)


def linear_warmup_decay(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate factor at ``step``: from 0 up to 1 over ``warmup_steps``, then down to 0 at ``total_steps``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warm-up then linear decay, the schedule of the paper's training; written here rather than
    taken from transformers, whose optimization module imports its Trainer's utilities and peft
    (≈ 0.7 s of CPU at every ``pha fit``'s start). The factor is a ``partial``, so a checkpoint's
    scheduler state is what it was with transformers' schedule (the run's lengths are not in it)."""
    return LambdaLR(optimizer, partial(linear_warmup_decay, warmup_steps=warmup_steps, total_steps=total_steps))


class PHAModule(LightningModule):
    """Trains a :class:`PHAModel`: its losses, metrics, optimiser and schedule, checkpoints, transfer.

    Args:
        arch: The architecture (model.arch).
        loss: The training loss (model.loss).
        optim: The optimisation (model.optim).
        transfer: Few-shot transfer: adapt a trained PHA checkpoint to these tasks as new tasks
            (model.transfer); the architecture then comes from that checkpoint.
        routing: How routing is calibrated on validation (model.routing; docs/routing.md).
    """

    def __init__(
        self,
        arch: PHAConfig,
        loss: LossConfig = LossConfig(),
        optim: OptimConfig = OptimConfig(),
        transfer: TransferConfig | None = None,
        routing: RoutingConfig = RoutingConfig(),
    ) -> None:
        super().__init__()
        self.loss_config: LossConfig = as_settings(LossConfig, loss)
        self.optim_config: OptimConfig = as_settings(OptimConfig, optim)
        self.routing_config: RoutingConfig = as_settings(RoutingConfig, routing)
        self.transfer = TransferConfig(**transfer) if isinstance(transfer, dict) else transfer
        self.strict_loading = False  # checkpoints hold no frozen backbone weight
        arch, self._source = self._resolve_arch(arch if isinstance(arch, PHAConfig) else PHAConfig.from_dict(arch))
        self._check_generator_settings(arch)
        # plain data, so checkpoints load with weights_only; the keys are this constructor's arguments
        self.save_hyperparameters(
            {
                "arch": arch.to_dict(),
                "loss": asdict(self.loss_config),
                "optim": asdict(self.optim_config),
                "transfer": asdict(self.transfer) if self.transfer else None,
                "routing": asdict(self.routing_config),
            }
        )
        with torch.device("meta"):  # its errors (layout, split layer, backbone) now: a dry build, nothing allocated
            PHAModel(replace(arch, backbone_init="random"))
        #: the random state at construction: the model built later gets the weights it would have got here
        self._init_rng = torch.random.get_rng_state()
        evaluated = resolve_tasks(arch.tasks, arch.task_specs or ())
        self.val_metrics = nn.ModuleDict({t.name: build_task_metrics(t) for t in evaluated})
        self.test_metrics = nn.ModuleDict({t.name: build_task_metrics(t) for t in evaluated})
        #: the latest validation results, stored in each checkpoint as ``pha_val_metrics``
        self.last_val_metrics: dict[str, float] = {}

    @property
    def model(self) -> PHAModel:
        """The :class:`PHAModel`, built by :meth:`configure_model` on first use (outside a Trainer too)."""
        self.configure_model()
        return self._built_model()

    def _built_model(self) -> PHAModel | None:
        """The model if :meth:`configure_model` has built it (read past the :attr:`model` property)."""
        return dict(self.named_children()).get("model")

    def configure_model(self) -> None:
        """Build the model once, here rather than in ``__init__``, so that the strategy's context
        (the device it initialises on) applies; under ``ModelParallelStrategy`` (a device mesh)
        shard it per transformer block (docs/production.md, "Big backbones"). Idempotent: Lightning
        calls it in every stage, and :attr:`model` calls it on first use."""
        if self._built_model() is None:
            with torch.random.fork_rng(devices=[]):
                torch.random.set_rng_state(self._init_rng)
                self.model = self._placed(self._build_model(PHAConfig.from_dict(self.hparams.arch)))
        model = self._built_model()
        if self.device_mesh is not None and not is_sharded(model):
            shard_model(model, self.device_mesh)
            if model.config.chunk_cost_tokens is not None:
                rank_zero_info(
                    f"sharded model: length chunking (model.arch.chunk_cost_tokens={model.config.chunk_cost_tokens}) is "
                    "off, every batch runs padded: ranks must make the same backbone calls, each gathering weights"
                )

    def full_weights(self, write_back: bool = False) -> AbstractContextManager[None]:
        """Context for code that reads the model's weights outside its forward (a collective under
        sharding: every rank enters; :func:`~pha_lightning.model.sharding.gathered`)."""
        return gathered(self.model, write_back)

    def _placed(self, model: PHAModel) -> PHAModel:
        """``model`` in the system's mode, and its device and dtype when they were set before the
        model was built (``.eval()``, ``.to("cuda")``, ``.double()`` on the system still apply)."""
        model.train(self.training)
        if self.dtype != torch.get_default_dtype():
            model.to(self.dtype)
        return model.to(self.device) if self.device.type != "cpu" else model

    def _resolve_arch(self, arch: PHAConfig) -> tuple[PHAConfig, tuple[PHAConfig, dict[str, Tensor]] | None]:
        """The architecture the hyperparameters record, and a transfer source's weights: a transfer
        takes the source's architecture (its :data:`ARCHITECTURE_KEYS`) and puts the new tasks in front."""
        if not self.transfer:
            return replace(arch, retriever=self._retriever_wanted(arch)), None
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
        return arch, (saved, model_state(source["state_dict"]), source.get("pha_routing"))

    def _build_model(self, arch: PHAConfig) -> PHAModel:
        """The model ``arch`` describes; for a transfer, the source model with the new tasks in front."""
        if self._source is None:
            return PHAModel(arch)
        saved, state, routing = self._source
        model = PHAModel(replace(arch, tasks=saved.tasks, task_specs=saved.task_specs, retriever=saved.retriever))
        check_state_fits(state, model.state_dict(), f"transfer checkpoint {self.transfer.checkpoint!r}")
        model.load_state_dict(state, strict=False)
        model.add_tasks(list(arch.tasks), arch.task_specs)
        set_trainable(model, self.transfer.tune)
        model.calibration = self._kept_routing(routing, list(arch.tasks))
        return model

    def _kept_routing(self, routing: dict[str, Any] | None, new_tasks: list[str]) -> Calibration | None:
        """The source's routing calibration, kept for its tasks, with the new tasks added (docs/routing.md):
        valid while the retriever, shared adapters and source prototypes stay frozen (``tune`` not ``all``)."""
        if routing is None:
            return None
        if self.transfer.tune == "all":
            rank_zero_info(
                "transfer with model.transfer.tune all retrains the retriever: the source's routing calibration no "
                "longer applies, and examples without a task go to the nearest prototype"
            )
            return None
        return Calibration.from_dict(routing).with_added_tasks(new_tasks)

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

    def _check_generator_settings(self, arch: PHAConfig) -> None:
        """λ_apart needs per-task generated adapters of at least two tasks; λ_ratio and the heads' own
        weight decay need a hypernetwork: one clear error rather than a term that silently does nothing."""
        layout = method_layout(arch.method, 0, 0, contrastive=False, adapter_kind=arch.adapter_kind)
        tasks = len(arch.tasks) + (len(self._source[0].tasks) if self._source else 0)  # a transfer's too
        lambda_apart = self.loss_config.lambda_apart
        if lambda_apart and (layout.source != "prototype" or tasks < 2):
            raise ConfigError(
                f"model.loss.lambda_apart {lambda_apart} keeps tasks' generated adapters apart, but method "
                f"{arch.method!r} on {tasks} task(s) has no per-task generated adapters to compare; use 0, or "
                "method pha or hyperformer with at least 2 tasks"
            )
        generator_settings = {
            "model.loss.lambda_adapter_ratio": self.loss_config.lambda_adapter_ratio or None,
            "model.optim.hypernet_head_weight_decay": self.optim_config.hypernet_head_weight_decay,
        }
        for name, value in generator_settings.items():
            if value is not None and layout.source not in ("prototype", "instance"):
                raise ConfigError(
                    f"{name} {value} acts on the hypernetwork and its generated adapters, but method "
                    f"{arch.method!r} has none; use its default, or method pha, hyperformer or hyperdecoder"
                )

    def on_fit_start(self) -> None:
        if self.transfer and self.trainer.ckpt_path is None:  # not when resuming a transfer run
            # every rank sees all support examples and the same seed, so all ranks start alike
            with self.full_weights(write_back=True):
                rankings = initialize_new_tasks(
                    self.model, self.transfer, self.trainer.datamodule.task_dataloaders("train")
                )
            if rankings:  # init "random" retrieves nothing
                rank_zero_info(
                    f"transfer ({self.transfer.init}) — source tasks ranked by retrieval:\n{format_rankings(rankings)}"
                )
                advice = distant_source_advice(rankings, self.transfer.init)
                if advice:
                    rank_zero_info(advice)
            else:
                rank_zero_info(f"transfer ({self.transfer.init}): new tasks' prototypes drawn at random, no retrieval")
            if self.transfer.tune != "prototype":  # docs/usage.md, "Few-shot transfer to new tasks"
                rank_zero_info(
                    f"transfer (tune {self.transfer.tune}): weights the source tasks use train too, so their outputs "
                    f"change{' (their routing does not)' if self.transfer.tune == 'hypernetwork' else ', routing too'}; "
                    "--model.transfer.tune prototype keeps them exactly"
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
        hp = self.loss_config
        with probe_adapters(self.model) if hp.lambda_adapter_ratio else contextlib.nullcontext() as probe:
            out = self.model(batch)
        terms = {"ce": self.task_loss(out, batch)}
        if out["z"] is None or self.model.prototypes is None:  # baselines, and PHA with both weights 0
            terms["loss"] = terms["ce"]
        else:
            terms.update(self.contrastive_terms(out["z"], batch["task_ids"], terms["ce"]))
        if probe is not None:
            layout = self.model.layout
            terms["l_ratio"] = probe.squared_ratios(range(layout.shared, layout.shared + layout.generated)).mean()
            terms["loss"] = terms["loss"] + hp.lambda_adapter_ratio * terms["l_ratio"]
        if hp.lambda_apart:
            every_task = torch.arange(len(self.model.task_objects), device=self.device)
            terms["l_apart"] = between_task_similarity(self.model.generated_weights(every_task))
            terms["loss"] = terms["loss"] + hp.lambda_apart * terms["l_apart"]
        return terms

    def contrastive_terms(self, z: Tensor, task_ids: Tensor, ce: Tensor) -> dict[str, Tensor]:
        """L_IR and L_Pro (those with a weight) of the retrieval vectors ``z``, and ``loss`` = ``ce`` + their weighted sum."""
        hp, terms = self.loss_config, {}
        if hp.lambda_ir:
            terms["l_ir"] = instance_contrastive_loss(z, task_ids, hp.contrastive_temperature)
        if hp.lambda_pro:
            terms["l_pro"] = prototype_contrastive_loss(
                z,
                self.model.prototypes.table(),
                task_ids,
                hp.contrastive_temperature,
                hp.pro_denominator,
            )
        terms["loss"] = ce + hp.lambda_ir * terms.get("l_ir", 0.0) + hp.lambda_pro * terms.get("l_pro", 0.0)
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
        with self.full_weights():
            if "example_ids" in batch:  # raw examples of data.predict_file, with or without a task
                return predict_rows(self.model, batch)
            values = self.model.predict_values(batch)
        rows = []
        for task_id, value, target in zip(batch["task_ids"].tolist(), values.tolist(), batch["targets"].tolist()):
            task = self.model.task_objects[task_id]
            rows.append({"task": task.name, **prediction_fields(task, value), "target": target})
        return rows

    def _eval_step(self, batch: dict[str, Tensor], metrics: nn.ModuleDict) -> None:
        with self.full_weights():
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
        hp = self.optim_config
        kernel = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(hp.adamw_kernel, {})
        optimizer = torch.optim.AdamW(
            self.parameter_groups(), lr=hp.learning_rate, weight_decay=hp.weight_decay, eps=hp.adam_epsilon, **kernel
        )
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ConfigError("set trainer.max_steps or trainer.max_epochs: the linear schedule needs a finite length")
        scheduler = linear_schedule(optimizer, min(hp.warmup_steps, int(total_steps)), int(total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def parameter_groups(self) -> list[Tensor] | list[dict[str, Any]]:
        """The trainable parameters; with ``hypernet_head_weight_decay`` set, the hypernetwork's output
        heads in a group of their own with that decay, everything else with ``weight_decay``."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = self.optim_config.hypernet_head_weight_decay
        if decay is None:
            return params  # one group: the released optimiser
        heads = {id(p) for head in self.model.hypernetwork.heads() for p in head.parameters()}
        groups = [
            {"params": [p for p in params if id(p) not in heads]},
            {"params": [p for p in params if id(p) in heads], "weight_decay": decay},
        ]
        return [group for group in groups if group["params"]]  # frozen heads (a transfer): no group

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
        if self.transfer:  # what serves it without the source checkpoint (as_served)
            checkpoint[SERVED_ARCH_KEY] = config.to_dict()
        calibration = self.model.calibration
        checkpoint["pha_routing"] = calibration.to_dict(with_tensors=True) if calibration is not None else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint)
        if not self.transfer:  # a transferred model served without its transfer settings: the plain model
            as_served(checkpoint)
        saved = checkpoint["hyper_parameters"]
        # trained on other tasks, another backbone or architecture: a clear error, not a silent misfit
        transfer = bool(saved.get("transfer") or self.transfer)
        check_compatible(saved["arch"], self.hparams.arch, "the checkpoint", transfer=transfer)
        routing = checkpoint.get("pha_routing")
        self.model.calibration = Calibration.from_dict(routing) if routing else None
        if "state_dict" not in checkpoint:  # ModelParallelStrategy loads the weights itself, before this hook
            return
        wanted = {f"model.{k}" for k in self.model.saved_state_keys()}
        check_state_fits(checkpoint["state_dict"], self.state_dict(), "the checkpoint")
        check_state_complete(checkpoint["state_dict"], wanted, "the checkpoint")


def load_system(checkpoint: dict[str, Any]) -> PHAModule:
    """The system a checkpoint (read by :func:`~pha_lightning.formats.checkpoint.read_checkpoint`)
    holds, with its weights: its class path is not imported, so checkpoints of older layouts load;
    a transferred model as the plain model it holds (:func:`~pha_lightning.formats.checkpoint.as_served`)."""
    system = PHAModule(**as_served(upgrade_checkpoint(checkpoint))["hyper_parameters"])
    system.configure_model()
    system.on_load_checkpoint(checkpoint)
    system.load_state_dict(checkpoint["state_dict"], strict=False)
    return system
