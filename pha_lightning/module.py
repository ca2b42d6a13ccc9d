"""``PHAModule``: Prototype-based HyperAdapter on a frozen transformer, as a LightningModule.

Composition (docs/method.md): a frozen backbone; shared adapters before the retrieval point; the
retriever on the hidden states at that point; a prototype table; a hypernetwork that turns each
task's prototype (⊕ a layer embedding) into the adapters of the blocks after the retrieval point.
Encoder-only backbones add one output head per task.

Training loss: ``CE_ls + λ_IR·L_IR + λ_Pro·L_Pro`` (see :mod:`pha_lightning.losses`).
The same module runs PHA's baselines (:mod:`pha_lightning.methods`) and few-shot transfer to new
tasks (:mod:`pha_lightning.transfer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from pha_lightning.checkpoints import check_compatible, check_state_fits
from pha_lightning.chunking import plan_chunks, restrict_weights, run_chunked
from pha_lightning.errors import ConfigError
from pha_lightning.adapters import (
    AdapterContext,
    GeneratedAdapter,
    SharedAdapter,
    TaskAdapterBank,
    WeightSet,
    stack_groups,
)
from pha_lightning.backbone import (
    attach_adapters,
    backbone_family,
    hidden_size,
    load_backbone,
    load_tokenizer,
    num_blocks,
    resolve_backbone_path,
    retrieval_site,
    site_hidden_states,
)
from pha_lightning.heads import LabelWordHead, TaskHeads
from pha_lightning.hypernetwork import CALIBRATIONS, Calibration, Generator, HyperNetwork
from pha_lightning.losses import (
    PRO_DENOMINATORS,
    ProDenominator,
    instance_contrastive_loss,
    label_smoothed_cross_entropy,
    prototype_contrastive_loss,
)
from pha_lightning.lora import DEFAULT_LORA_TARGETS, LoRAHyperNetwork, attach_lora, check_lora_targets
from pha_lightning.methods import METHODS, AdapterKind, Method, method_layout
from pha_lightning.metrics import INVALID, build_task_metrics
from pha_lightning.predict import predict_rows
from pha_lightning.prototypes import PrototypeTable
from pha_lightning.retriever import Retriever, masked_mean
from pha_lightning.tasks import Task, get_task
from pha_lightning.transfer import (
    ARCHITECTURE_KEYS,
    LEGACY_SETTINGS,
    SWITCHABLE_SETTINGS,
    TransferConfig,
    format_rankings,
    initialize_new_tasks,
    read_source,
    set_trainable,
    source_state,
    with_legacy_settings,
)
from pha_lightning.validation import FRACTION, NON_NEGATIVE, POSITIVE, SIZE, Range, check_ranges

HEAD_POOLINGS = ("mean", "cls")
REGRESSION_TARGETS = ("normalized", "raw")
OUTPUT_LAYERS = ("task_heads", "label_words")
#: The valid range of every numeric setting, checked when the module is built (``model.<name>``).
NUMERIC_RANGES: dict[str, Range] = {
    "adapter_dim": SIZE,
    "split_layer": Range(1, integer=True, optional=True),  # its upper bound depends on the backbone
    "retriever_hidden_dim": SIZE,
    "retrieval_dim": SIZE,
    "layer_embedding_dim": SIZE,
    "hypernet_hidden_dim": SIZE,
    "hypernet_out_dim": SIZE,
    "hypernet_init_scale": NON_NEGATIVE,
    "hypernet_layer_norm_eps": POSITIVE,
    "shared_adapter_init_gain": NON_NEGATIVE,
    "prototype_init_std": POSITIVE,
    "contrastive_temperature": POSITIVE,
    "lambda_ir": NON_NEGATIVE,
    "lambda_pro": NON_NEGATIVE,
    "label_smoothing": FRACTION,
    "regression_loss_weight": NON_NEGATIVE,
    "head_dropout": FRACTION,
    "learning_rate": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "warmup_steps": Range(0, integer=True),
    "adam_epsilon": POSITIVE,
    "generation_max_length": SIZE,
    "chunk_cost_tokens": Range(0, integer=True, optional=True),
    "lora_rank": SIZE,
    "lora_alpha": POSITIVE,
    "lora_dropout": FRACTION,
}


class PHAModule(LightningModule):
    """PHA multi-task tuning of a frozen backbone.

    Args:
        backbone: hub id, local directory, or ``pypi:all-MiniLM-L6-v2`` (a model shipped in a package).
        tasks: task names, in the order of the task ids the data module emits (linked from ``data.tasks``).
        method: ``pha`` or a baseline sharing its parts (see :mod:`pha_lightning.methods`).
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
            the analogue of T5's shared vocabulary; see :mod:`pha_lightning.heads`).
        head_pooling / head_dropout: encoder-only task heads read the ``mean`` of the final hidden
            states over real tokens (or the ``cls`` token) through dropout.
        learning_rate, weight_decay, warmup_steps, adam_epsilon: AdamW with linear warmup and decay.
        generation_max_length: T5 path, the most tokens generated at evaluation.
        seq2seq_eval: T5 path, how predictions are made: greedy ``generate`` (the paper), or
            ``rank`` the task's candidate targets by likelihood (rank classification).
        transfer: adapt a trained PHA checkpoint to ``tasks`` as new tasks (few-shot transfer,
            see :mod:`pha_lightning.transfer`); its architecture comes from that checkpoint.
        chunk_cost_tokens: length-aware execution (:mod:`pha_lightning.chunking`): the backbone
            runs a batch in length-sorted chunks, each padded only to its longest example, and a
            chunk boundary is placed wherever it saves more than this many padded tokens (the
            fixed cost of one more backbone call; the default is measured on a 2-core CPU, a GPU
            wants thousands). Same results as one padded batch; ``None`` runs the batch whole.
        adapter_kind: ``bottleneck`` adapters, or ``lora`` on the attention projections (``pha``:
            shared LoRA below the retrieval point, LoRA factors generated from the task's
            prototype above it; see :mod:`pha_lightning.lora`). ``method: lora`` always uses LoRA.
        lora_rank / lora_alpha / lora_dropout / lora_targets: LoRA's ``r``, ``alpha`` (the update
            is scaled by ``alpha / r``), dropout on the sites' input, and the linear layers of each
            block it adapts (default ``query`` and ``value``; also ``key``, ``output``, ``ffn_in``,
            ``ffn_out``), as peft's ``LoraConfig`` means them.
    """

    def __init__(
        self,
        backbone: str = "pypi:all-MiniLM-L6-v2",
        tasks: list[str] | None = None,
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
        if regression_target not in REGRESSION_TARGETS:
            raise ConfigError(f"unknown regression_target {regression_target!r}; valid: {list(REGRESSION_TARGETS)}")
        if hypernet_calibration not in CALIBRATIONS:
            raise ConfigError(f"unknown hypernet_calibration {hypernet_calibration!r}; valid: {list(CALIBRATIONS)}")
        if seq2seq_eval not in ("generate", "rank"):
            raise ConfigError(f"unknown seq2seq_eval {seq2seq_eval!r}; valid: ['generate', 'rank']")
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; valid: {list(METHODS)}")
        if not tasks:
            raise ConfigError("PHAModule needs at least one task (model.tasks, linked from data.tasks)")
        if pro_denominator not in PRO_DENOMINATORS:
            raise ConfigError(f"unknown pro_denominator {pro_denominator!r}; valid: {list(PRO_DENOMINATORS)}")
        if output_layer not in OUTPUT_LAYERS:
            raise ConfigError(f"unknown output_layer {output_layer!r}; valid: {list(OUTPUT_LAYERS)}")
        if head_pooling not in HEAD_POOLINGS:
            raise ConfigError(f"unknown head_pooling {head_pooling!r}; valid: {list(HEAD_POOLINGS)}")
        check_lora_targets(list(lora_targets or DEFAULT_LORA_TARGETS))
        if isinstance(transfer, dict):  # as stored in a checkpoint's hyperparameters
            transfer = TransferConfig(**transfer)
        self.save_hyperparameters(ignore=["transfer"])
        check_ranges("model", NUMERIC_RANGES, self.hparams)
        self.hparams["transfer"] = asdict(transfer) if transfer else None  # plain data: loads with weights_only
        self.strict_loading = False  # checkpoints hold no frozen backbone weight
        self.transfer = transfer
        source = read_source(transfer, backbone, tasks) if transfer else None
        source_tasks = source["hyper_parameters"]["tasks"] if source else []
        if source:
            if method != source["hyper_parameters"]["method"]:
                raise ConfigError(
                    f"model.method is {method!r} but the transfer checkpoint was trained with "
                    f"{source['hyper_parameters']['method']!r}"
                )
            self.hparams.update({key: source["hyper_parameters"][key] for key in ARCHITECTURE_KEYS})
            if self.hparams.output_layer != "task_heads":
                raise ConfigError(
                    f"few-shot transfer needs a source trained with model.output_layer 'task_heads' (a new task gets "
                    f"its own head); {transfer.checkpoint!r} has {self.hparams.output_layer!r}"
                )
            split_layer = self.hparams.split_layer
        #: new tasks (the data module's ids) first, then the source tasks of a transfer
        self.task_objects: list[Task] = [get_task(name) for name in [*tasks, *source_tasks]]
        self.num_new_tasks = len(tasks)
        self.family = backbone_family(backbone)
        self.backbone = load_backbone(backbone, self.hparams.backbone_init)
        before, after = self._split_blocks(split_layer)
        self.split_layer = before
        contrastive = contrastive_terms_apply(method, [t.name for t in self.task_objects], lambda_ir, lambda_pro)
        self.layout = method_layout(method, before, after, contrastive, self.hparams.adapter_kind)
        self.backbone.requires_grad_(self.layout.trains_backbone)
        self.backbone.train()  # from_pretrained returns eval mode; docs/method.md keeps the FFN dropout in training
        self._build_parts(hidden_size(self.backbone))
        if source:
            self.load_state_dict(source_state(source["state_dict"], self.num_new_tasks), strict=False)
            set_trainable(self, transfer.tune, self.num_new_tasks)
        evaluated = self.task_objects[: self.num_new_tasks]
        self.val_metrics = nn.ModuleDict({t.name: build_task_metrics(t) for t in evaluated})
        self.test_metrics = nn.ModuleDict({t.name: build_task_metrics(t) for t in evaluated})
        self._eval_cache: dict[int, WeightSet] = {}
        self._eval_cache_stamp: tuple | None = None
        self._retrieval: _Retrieval | None = None
        #: the latest validation results, stored in each checkpoint as ``pha_val_metrics``
        self.last_val_metrics: dict[str, float] = {}

    def _build_parts(self, d_model: int) -> None:
        """Create the trainable parts the method's layout asks for and wire them into the backbone."""
        hp, layout, num_tasks = self.hparams, self.layout, len(self.task_objects)
        self.adapter_context = AdapterContext()
        lora_sites = self._attach_adapters(d_model)
        self.retriever = Retriever(d_model, hp.retriever_hidden_dim, hp.retrieval_dim) if layout.uses_retriever else None
        if self.retriever is not None:
            site = retrieval_site(self.backbone, self.family, self.split_layer)
            site.register_forward_hook(self._at_retrieval_point)
        # PHA's prototypes; for HyperFormer the same table is its learned task embedding
        num_added = self.num_new_tasks if self.transfer else 0
        self.prototypes = (
            PrototypeTable(num_tasks, hp.retrieval_dim, hp.prototype_init_std, num_added)
            if layout.source == "prototype"
            else None
        )
        self.task_adapters = (
            TaskAdapterBank(num_tasks, layout.generated, d_model, hp.adapter_dim, hp.shared_adapter_init_gain)
            if layout.source == "task_bank"
            else None
        )
        self.hypernetwork = self._build_generator(d_model, lora_sites) if layout.source in ("prototype", "instance") else None
        head_class = LabelWordHead if hp.output_layer == "label_words" else TaskHeads
        self.heads = head_class(d_model, self.task_objects, hp.head_dropout) if self.family == "encoder" else None

    def _attach_adapters(self, d_model: int) -> list[tuple[int, int]]:
        """Shared adapters (or LoRA) in the blocks before the split, generated ones after; returns
        the ``(d_in, d_out)`` of every generated LoRA site (none for bottleneck adapters)."""
        hp, layout = self.hparams, self.layout
        if layout.kind == "lora":
            self.shared_adapters, lora_sites = attach_lora(
                self.backbone, self.family, hp.lora_targets or DEFAULT_LORA_TARGETS, hp.lora_rank, hp.lora_alpha, hp.lora_dropout,
                layout.shared, self.adapter_context,
            )
            return lora_sites
        self.shared_adapters = nn.ModuleList(
            SharedAdapter(d_model, hp.adapter_dim, hp.shared_adapter_init_gain) for _ in range(layout.shared)
        )
        generated = [GeneratedAdapter(self.adapter_context, layer) for layer in range(layout.generated)]
        if layout.shared or layout.generated:
            attach_adapters(self.backbone, self.family, [*self.shared_adapters, *generated])
        return []

    def _build_generator(self, d_model: int, lora_sites: list[tuple[int, int]]) -> Generator:
        """The hypernetwork: bottleneck adapters per generated layer, or LoRA factors per generated site."""
        hp = self.hparams
        common = {
            "cond_dim": hp.retrieval_dim,
            "layer_emb_dim": hp.layer_embedding_dim,
            "hidden_dim": hp.hypernet_hidden_dim,
            "out_dim": hp.hypernet_out_dim,
            "layer_norm_eps": hp.hypernet_layer_norm_eps,
            "calibration": hp.hypernet_calibration,
        }
        if self.layout.kind == "lora":
            return LoRAHyperNetwork(lora_sites, hp.lora_rank, **common)
        return HyperNetwork(d_model, hp.adapter_dim, self.layout.generated, init_scale=hp.hypernet_init_scale, **common)

    # ------------------------------------------------------------------ structure
    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The backbone's tokenizer, loaded on first use (T5 decoding)."""
        return load_tokenizer(self.hparams.backbone)

    def _split_blocks(self, split_layer: int | None) -> tuple[int, int]:
        before, after = num_blocks(self.backbone, self.family)
        if self.family == "seq2seq":
            return before, after
        k = before // 2 if split_layer is None else split_layer
        if not 1 <= k < before:
            raise ConfigError(f"split_layer must be in [1, {before - 1}] for a {before}-block encoder, got {split_layer}")
        return k, before - k

    def trainable_parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts of the whole module."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def on_fit_start(self) -> None:
        if self.transfer and self.trainer.ckpt_path is None:  # not when resuming a transfer run
            # every rank sees all support examples and the same seed, so all ranks start alike
            rankings = initialize_new_tasks(self, self.trainer.datamodule.task_dataloaders("train"))
            rank_zero_info(f"transfer ({self.transfer.init}) — source tasks ranked by retrieval:\n{format_rankings(rankings)}")
        trainable, total = self.trainable_parameter_counts()
        rank_zero_info(
            f"{self.hparams.method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f} %)"
        )
        for logger in self.loggers:
            logger.log_metrics({"params/trainable": trainable, "params/total": total}, step=0)

    # ------------------------------------------------------------------ generated adapters
    def batch_adapter_weights(self, task_ids: Tensor) -> WeightSet | None:
        """The generated (or per-task) adapter weights a batch needs before the backbone runs.

        ``None`` when the method has no such adapters, or when they come from the examples
        themselves (HyperDecoder: set at the retrieval point during the forward pass).
        """
        source = self.layout.source
        if source == "prototype":
            return self.generated_weights(task_ids)
        if source == "task_bank":
            return self.task_adapters(task_ids)
        return None

    def generated_weights(self, task_ids: Tensor) -> WeightSet:
        """Adapter weights for the tasks of a batch: the hypernetwork runs once per distinct task.

        Outside training (no grad) a task's weights are generated once and reused until any
        hypernetwork or prototype parameter changes.
        """
        tasks, group_of = torch.unique(task_ids, return_inverse=True)
        if torch.is_grad_enabled():
            return self.hypernetwork(self.prototypes(tasks), group_of)
        return stack_groups([self._cached_task_weights(int(t)) for t in tasks.tolist()], group_of)

    def _cached_task_weights(self, task: int) -> WeightSet:
        params = [*self.hypernetwork.parameters(), *self.prototypes.parameters()]
        stamp = (torch.is_autocast_enabled(self.device.type), *((p.data_ptr(), p._version) for p in params))
        if stamp != self._eval_cache_stamp:
            self._eval_cache, self._eval_cache_stamp = {}, stamp
        if task not in self._eval_cache:
            rows = torch.tensor([task], device=self.device)
            self._eval_cache[task] = self.hypernetwork(self.prototypes(rows), torch.zeros(1, dtype=torch.long, device=self.device))
        return self._eval_cache[task]

    def _at_retrieval_point(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        """Forward hook at the retrieval point: compute ``z``; HyperDecoder generates from it."""
        state = self._retrieval
        if state is None:  # the backbone was called directly, outside this module's forward
            return
        state.z = self.retriever(site_hidden_states(output), state.attention_mask)
        if self.layout.source == "instance":
            self.adapter_context.weights = self.hypernetwork(state.z)

    def run_backbone(self, batch: dict[str, Tensor], call: Callable[[], Any]) -> tuple[Any, Tensor | None]:
        """Run ``call`` (a backbone forward or ``generate``) with this batch's adapters in place.

        Returns its output and the retrieval vectors ``z`` (``None`` for methods without a retriever).
        """
        return self.run_backbone_with(batch, call, self.batch_adapter_weights(batch["task_ids"]))

    def run_backbone_with(
        self, batch: dict[str, Tensor], call: Callable[[], Any], weights: WeightSet | None
    ) -> tuple[Any, Tensor | None]:
        """:meth:`run_backbone` with generated weights made beforehand (once for all chunks of a batch)."""
        self._retrieval = _Retrieval(batch["attention_mask"])
        try:
            with self.adapter_context.use(weights):
                output = call()
            return output, self._retrieval.z
        finally:
            self._retrieval = None

    def retrieval_forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Retrieval vectors ``z`` of a batch, running no more than they need.

        T5: the encoder alone. Encoder-only backbones run whole (the retrieval point is mid-stack).
        """
        if self.retriever is None:
            raise ConfigError(f"method {self.hparams.method!r} (with these loss weights) has no retriever")
        if self.family == "seq2seq":
            call = lambda: self.backbone.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])  # noqa: E731
        else:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            call = lambda: self.backbone(**inputs)  # noqa: E731
        return self.run_backbone(batch, call)[1]

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, Tensor], chunked: bool = True) -> dict[str, Tensor]:
        """Run the backbone with the method's adapters.

        Returns the retrieval vectors ``z`` (when the method has a retriever), the ``pooled``
        final states (encoder-only backbones: what the task heads read; T5: the mean of the final
        encoder states) and, for T5, the decoder's ``lm_logits`` (teacher forced on ``labels``).
        Generated weights are made once per batch; the backbone runs the batch in length-sorted
        chunks when that pays (``chunk_cost_tokens``), unless ``chunked`` is false (hooks that
        need the batch's own layout, e.g. the health probe).
        """
        weights = self.batch_adapter_weights(batch["task_ids"])
        chunks = plan_chunks(batch["attention_mask"], self.hparams.chunk_cost_tokens) if chunked else None
        if chunks is None:
            return self._forward_rows(batch, weights)
        return run_chunked(batch, chunks, lambda sub, rows: self._forward_rows(sub, restrict_weights(weights, rows)))

    def _forward_rows(self, batch: dict[str, Tensor], weights: WeightSet | None) -> dict[str, Tensor | None]:
        """:meth:`forward` of one padded batch (or chunk) with its generated weights."""
        if self.family == "seq2seq":
            out, z = self.run_backbone_with(
                batch,
                lambda: self.backbone(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    decoder_input_ids=self.backbone._shift_right(batch["labels"]),
                ),
                weights,
            )
            pooled = masked_mean(out.encoder_last_hidden_state, batch["attention_mask"])
            return {"z": z, "lm_logits": out.logits, "pooled": pooled}
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        out, z = self.run_backbone_with(batch, lambda: self.backbone(**inputs), weights)
        final = out.last_hidden_state
        pooled = masked_mean(final, batch["attention_mask"]) if self.hparams.head_pooling == "mean" else final[:, 0]
        return {"z": z, "pooled": pooled}

    # ------------------------------------------------------------------ losses
    def task_loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """Label-smoothed CE (MSE for regression heads), averaged over the examples of the batch."""
        eps = self.hparams.label_smoothing
        if self.family == "seq2seq":
            return label_smoothed_cross_entropy(out["lm_logits"], batch["labels"], eps)
        outputs, total = self.heads.outputs(out["pooled"], batch["task_ids"])
        for task, (idx, head_out) in outputs.items():
            target = batch["targets"].index_select(0, idx)
            if isinstance(self.heads, LabelWordHead):
                loss = label_smoothed_cross_entropy(head_out, self.heads.classes(task, target), eps)
            elif self.task_objects[task].is_regression:
                center, half = self.regression_scale(self.task_objects[task])
                scaled = (target.float() - center) / half
                loss = self.hparams.regression_loss_weight * F.mse_loss(head_out.squeeze(-1).float(), scaled)
            else:
                loss = label_smoothed_cross_entropy(head_out, target.long(), eps)
            total = total + loss * len(idx)
        return total / len(batch["task_ids"])

    def loss_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = self(batch)
        hp = self.hparams
        terms = {"ce": self.task_loss(out, batch)}
        if out["z"] is None or self.prototypes is None:  # baselines, and PHA with both weights 0
            terms["loss"] = terms["ce"]
            return terms
        if hp.lambda_ir:
            terms["l_ir"] = instance_contrastive_loss(out["z"], batch["task_ids"], hp.contrastive_temperature)
        if hp.lambda_pro:
            terms["l_pro"] = prototype_contrastive_loss(
                out["z"], self.prototypes.table(), batch["task_ids"], hp.contrastive_temperature, hp.pro_denominator
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

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_values(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-example predictions as floats: class index (``INVALID`` if unparseable) or regression value."""
        task_ids = batch["task_ids"]
        if self.family == "seq2seq":
            return self.rank_values(batch) if self.hparams.seq2seq_eval == "rank" else self._generate_values(batch)
        out = self(batch)
        preds = torch.empty(len(task_ids), device=task_ids.device)
        for task, (idx, head_out) in self.heads.outputs(out["pooled"], task_ids)[0].items():
            if isinstance(self.heads, LabelWordHead):
                preds[idx] = self.heads.values(task, head_out)
            elif self.task_objects[task].is_regression:
                center, half = self.regression_scale(self.task_objects[task])
                preds[idx] = head_out.squeeze(-1).float() * half + center
            else:
                preds[idx] = head_out.argmax(-1).float()
        return preds

    def regression_scale(self, task: Task) -> tuple[float, float]:
        """``(center, half-width)`` of the task's ``target_range``: a head predicts
        ``(y - center) / half-width``; ``(0, 1)`` (the raw value) with ``regression_target: raw``."""
        if self.hparams.regression_target == "raw":
            return 0.0, 1.0
        if task.target_range is None:
            raise ConfigError(f"regression task {task.name!r} has no target_range to normalise its targets by")
        low, high = task.target_range
        return (low + high) / 2, (high - low) / 2

    def generate_texts(self, batch: dict[str, Tensor]) -> list[str]:
        """Greedy generation (T5 path) with each example's task adapters."""
        tokens, _ = self.run_backbone(
            batch,
            lambda: self.backbone.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                max_new_tokens=self.hparams.generation_max_length,
                num_beams=1,
                do_sample=False,
            ),
        )
        return [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    def rank_values(self, batch: dict[str, Tensor]) -> Tensor:
        """Rank classification (T5 path): score every candidate target of the example's task by
        its summed token log-likelihood and take the best; no generation, never invalid."""
        values = torch.empty(len(batch["task_ids"]), device=self.device)
        for task in torch.unique(batch["task_ids"]).tolist():
            rows = (batch["task_ids"] == task).nonzero(as_tuple=True)[0]
            sub = {k: v.index_select(0, rows) for k, v in batch.items() if isinstance(v, Tensor) and len(v) == len(values)}
            candidates = self.task_objects[task].rank_candidates()
            scores, _ = self.run_backbone(sub, lambda sub=sub, candidates=candidates: self._candidate_scores(sub, candidates))
            best = scores.argmax(-1).tolist()
            parsed = [self.task_objects[task].parse_generation(candidates[i]) for i in best]
            values[rows] = torch.tensor(parsed, dtype=torch.float32, device=self.device)
        return values

    def _candidate_scores(self, batch: dict[str, Tensor], candidates: tuple[str, ...]) -> Tensor:
        """``(B, C)`` summed log-likelihoods; the encoder runs once, the decoder once per candidate."""
        encoded = self.backbone.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        targets = self.tokenizer(text_target=list(candidates), padding=True, return_tensors="pt")["input_ids"]
        targets = targets.masked_fill(targets == self.tokenizer.pad_token_id, -100).to(self.device)
        scores = []
        for target in targets:
            labels = target.expand(len(batch["input_ids"]), -1)
            logits = self.backbone(
                encoder_outputs=encoded,
                attention_mask=batch["attention_mask"],
                decoder_input_ids=self.backbone._shift_right(labels),
            ).logits
            log_probs = logits.float().log_softmax(-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            scores.append(log_probs.masked_fill(labels == -100, 0.0).sum(-1))
        return torch.stack(scores, dim=1)

    def _generate_values(self, batch: dict[str, Tensor]) -> Tensor:
        texts = self.generate_texts(batch)
        values = [self.task_objects[t].parse_generation(text) for t, text in zip(batch["task_ids"].tolist(), texts)]
        return torch.tensor([INVALID if v is None else v for v in values], dtype=torch.float32, device=self.device)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        if "example_ids" in batch:  # raw examples of data.predict_file, with or without a task
            return predict_rows(self, batch)
        values = self.predict_values(batch)
        rows = []
        for task_id, value, target in zip(batch["task_ids"].tolist(), values.tolist(), batch["targets"].tolist()):
            task = self.task_objects[task_id]
            rows.append({"task": task.name, "prediction": value, "label": _label_string(task, value), "target": target})
        return rows

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Tensor], metrics: nn.ModuleDict) -> None:
        preds = self.predict_values(batch)
        for task in torch.unique(batch["task_ids"]).tolist():
            mask = batch["task_ids"] == task
            # MultiRC's exact match is per question: its metric takes the question ids as `groups`
            extra = {"groups": batch["groups"][mask]} if "groups" in batch else {}
            metrics[self.task_objects[task].name].update(preds[mask], batch["targets"][mask], **extra)

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
        """Weights saved before a setting existed were trained with its legacy value: use it.

        Only settings that change how weights are read (not which weights exist) can be switched
        after the model is built; a mismatch in the others is reported by ``check_compatible``.
        """
        for key in SWITCHABLE_SETTINGS:
            if key not in saved:
                self.hparams[key] = LEGACY_SETTINGS[key]
        if self.hypernetwork is not None:
            self.hypernetwork.set_calibration(self.hparams.hypernet_calibration)

    def saved_state_keys(self) -> set[str]:
        """What a checkpoint holds: every parameter outside the backbone, and trained backbone weights.

        Frozen PHA parts of a transfer (the source tasks' weights) are kept too: they cannot be
        rebuilt from the hub like the backbone.
        """
        return {name for name, p in self.named_parameters() if p.requires_grad or not name.startswith("backbone.")}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen backbone weights; record how to rebuild the backbone."""
        keep = self.saved_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["pha_backbone"] = {
            "name": self.hparams.backbone,
            "resolved_path": resolve_backbone_path(self.hparams.backbone),
            "family": self.family,
            "init": self.hparams.backbone_init,
        }
        checkpoint["pha_val_metrics"] = dict(self.last_val_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {})
        self.adopt_legacy_settings(saved)
        # trained on other tasks, another backbone or architecture: a clear error, not a silent misfit
        check_compatible(with_legacy_settings(saved), dict(self.hparams), "the checkpoint")
        check_state_fits(checkpoint["state_dict"], self.state_dict(), "the checkpoint")
        missing = sorted(self.saved_state_keys() - set(checkpoint["state_dict"]))
        if missing:
            raise ConfigError(f"checkpoint lacks {len(missing)} trainable weights of this model, e.g. {missing[:3]}")


def contrastive_terms_apply(method: str, tasks: list[str], lambda_ir: float, lambda_pro: float) -> bool:
    """Whether PHA trains L_IR and L_Pro (and so builds its retriever).

    Both contrast tasks with each other: with a single task L_IR has no negatives and L_Pro no
    other prototype (its ``exclude_positive`` denominator would be empty). Such a run trains on the
    task loss alone and says so once, rather than failing at its first step.
    """
    wanted = bool(lambda_ir or lambda_pro)
    if method != "pha" or not wanted or len(tasks) > 1:
        return wanted
    rank_zero_info(
        f"PHA on the single task {tasks[0]!r}: L_IR and L_Pro contrast tasks with each other, so with one task "
        f"they have nothing to contrast; training on the task loss alone (model.lambda_ir={lambda_ir} and "
        f"model.lambda_pro={lambda_pro} are inactive, and no retriever is built)"
    )
    return False


@dataclass
class _Retrieval:
    """What the retrieval-point hook needs from, and gives back to, one forward pass."""

    attention_mask: Tensor
    z: Tensor | None = None


def _label_string(task: Task, value: float) -> str | None:
    if task.is_regression:
        return f"{value:.3f}"
    return None if math.isnan(value) else task.label_names[int(value)]
