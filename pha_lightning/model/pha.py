"""``PHAModel``: Prototype-based HyperAdapter on a frozen transformer, as a plain ``torch.nn.Module``.

A frozen backbone; shared adapters before the retrieval point; the retriever on the hidden states
at that point; a prototype table; a hypernetwork that turns each task's prototype (⊕ a layer
embedding) into the adapters of the blocks after it; task heads on encoder-only backbones. The
same parts build PHA's baselines (:mod:`pha_lightning.model.methods`). What runs on top of the
network lives beside it: T5 decoding (:mod:`~pha_lightning.model.seq2seq`), raw-example prediction
(:mod:`~pha_lightning.model.prediction`); saving and loading a bundle (the format is
:mod:`~pha_lightning.formats.bundle`, which sees plain state dicts and files).
Training (losses, optimiser, checkpoints) is :mod:`pha_lightning.training`; docs/method.md
explains the method.

    model = PHAModel.from_pretrained("bundles/demo")
    model.predict([{"task": "synth_polarity", "sentence": "the red cat was lovely"}])
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import PreTrainedTokenizerBase

from pha_lightning.data.catalog import resolve_tasks
from pha_lightning.data.tasks import Task
from pha_lightning.errors import ConfigError
from pha_lightning.formats import bundle
from pha_lightning.formats.state import check_state_complete, check_state_fits, merge_added_rows
from pha_lightning.hub import backbone_family, load_tokenizer
from pha_lightning.model import prediction, seq2seq
from pha_lightning.model.adapters import (
    AdapterContext,
    GeneratedAdapter,
    SharedAdapter,
    TaskAdapterBank,
    WeightSet,
    stack_groups,
)
from pha_lightning.model.backbone import (
    attach_adapters,
    full_precision,
    hidden_size,
    load_backbone,
    num_blocks,
    retrieval_site,
    site_hidden_states,
)
from pha_lightning.model.calibration import Calibration
from pha_lightning.model.chunking import plan_chunks, restrict_weights, run_chunked
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.heads import LabelWordHead, TaskHeads
from pha_lightning.model.hypernetwork import Generator, HyperNetwork
from pha_lightning.model.lora import DEFAULT_LORA_TARGETS, LoRAHyperNetwork, attach_lora
from pha_lightning.model.methods import method_layout
from pha_lightning.model.multi_lora import MTLLoRABank, SkillLoRABank, TaskLoRABank
from pha_lightning.model.prototypes import PrototypeTable
from pha_lightning.model.retriever import Retriever, masked_mean
from pha_lightning.model.sharding import is_sharded

#: ``choose(z, rows, features)``: the task ids of a batch's (or chunk's) rows, chosen from their retrieval
#: vectors and pooled hidden states at the retrieval point (what a routing probe scores)
ChooseTasks = Callable[[Tensor, dict[str, Tensor], Tensor | None], Tensor]


class PHAModel(nn.Module):
    """PHA (or one of its baselines) on a frozen backbone, built from a :class:`PHAConfig`."""

    def __init__(self, config: PHAConfig) -> None:
        super().__init__()
        self.config = config
        self.task_objects: list[Task] = resolve_tasks(config.tasks, config.task_specs or ())
        #: how many leading tasks were added to a trained model (:meth:`add_tasks`)
        self.num_added_tasks = 0
        self.family = backbone_family(config.backbone)
        self.backbone = load_backbone(config.backbone, config.backbone_init, config.backbone_dtype)
        before, after = self._split_blocks(config.split_layer)
        self.split_layer = before
        self.layout = method_layout(config.method, before, after, config.retriever, config.adapter_kind)
        self.backbone.requires_grad_(self.layout.trains_backbone)
        self.backbone.train()  # from_pretrained returns eval mode; docs/method.md keeps the FFN dropout in training
        self.d_model = hidden_size(self.backbone)
        self._build_parts()
        if config.activation_checkpointing:
            self.backbone.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False, "context_fn": self._recomputation_contexts}
            )
        self._eval_cache: dict[int, WeightSet] = {}
        self._eval_cache_stamp: tuple | None = None
        self._retrieval: RetrievalPoint | None = None
        #: precomputed generated adapters ``generated.<part>`` of shape (tasks, layers, …), if served
        self.generated_table: dict[str, Tensor] | None = None
        self.generated_kind: WeightSet | None = None
        #: the bundle's ``config.json`` when loaded with :meth:`from_pretrained`
        self.bundle_config: dict[str, Any] | None = None
        #: how examples without a task are routed (fitted on validation by training; ``None``: nearest prototype)
        self.calibration: Calibration | None = None

    def _build_parts(self) -> None:
        """Create the trainable parts the method's layout asks for and wire them into the backbone."""
        config, layout, d_model = self.config, self.layout, self.d_model
        self.adapter_context = AdapterContext()
        lora_sites = self._attach_adapters()
        self.retriever = (
            Retriever(d_model, config.retriever_hidden_dim, config.retrieval_dim) if layout.uses_retriever else None
        )
        if self.retriever is not None:
            retrieval_site(self.backbone, self.family, self.split_layer).register_forward_hook(self._at_retrieval_point)
        # PHA's prototypes; for HyperFormer the same table is its learned task embedding
        num_tasks = len(self.task_objects)
        self.prototypes = (
            PrototypeTable(num_tasks, config.retrieval_dim, config.prototype_init_std)
            if layout.source == "prototype"
            else None
        )
        self.task_adapters = (
            TaskAdapterBank(num_tasks, layout.generated, d_model, config.adapter_dim, config.shared_adapter_init_gain)
            if layout.source == "task_bank"
            else None
        )
        self.hypernetwork = self._build_generator(lora_sites) if layout.source in ("prototype", "instance") else None
        self.lora_bank = self._build_lora_bank(num_tasks, lora_sites)
        self.heads: TaskHeads | LabelWordHead | None = None
        if self.family == "encoder" and config.output_layer == "label_words":
            self.heads = LabelWordHead(d_model, self.task_objects, config.head_dropout)
        elif self.family == "encoder":
            self.heads = TaskHeads(d_model, self.task_objects, config.head_dropout, config.regression_target)

    def _attach_adapters(self) -> list[tuple[int, int]]:
        """Shared adapters (or LoRA) in the blocks before the split, generated ones after; returns
        the ``(d_in, d_out)`` of every generated LoRA site (none for bottleneck adapters)."""
        config, layout = self.config, self.layout
        if layout.kind == "lora":
            self.shared_adapters, lora_sites = attach_lora(
                self.backbone, self.family, config.lora_targets or DEFAULT_LORA_TARGETS, config.lora_rank,
                config.lora_alpha, config.lora_dropout, layout.shared, self.adapter_context,
            )  # fmt: skip
            return lora_sites
        self.shared_adapters = nn.ModuleList(
            SharedAdapter(self.d_model, config.adapter_dim, config.shared_adapter_init_gain)
            for _ in range(layout.shared)
        )
        generated = [GeneratedAdapter(self.adapter_context, layer) for layer in range(layout.generated)]
        if layout.shared or layout.generated:
            attach_adapters(self.backbone, self.family, [*self.shared_adapters, *generated])
        return []

    def _build_generator(self, lora_sites: list[tuple[int, int]]) -> Generator:
        """The hypernetwork: bottleneck adapters per generated layer, or LoRA factors per generated site."""
        config = self.config
        common = {
            "cond_dim": config.retrieval_dim,
            "layer_emb_dim": config.layer_embedding_dim,
            "hidden_dim": config.hypernet_hidden_dim,
            "out_dim": config.hypernet_out_dim,
            "layer_norm_eps": config.hypernet_layer_norm_eps,
            "calibration": config.hypernet_calibration,
        }
        if self.layout.kind == "lora":
            return LoRAHyperNetwork(lora_sites, config.lora_rank, **common)
        return HyperNetwork(
            self.d_model,
            config.adapter_dim,
            self.layout.generated,
            init_scale=config.hypernet_init_scale,
            output_scale=config.generated_output_scale,
            **common,
        )

    def _build_lora_bank(self, num_tasks: int, lora_sites: list[tuple[int, int]]) -> nn.Module | None:
        """The multi-task LoRA methods' per-task factors (:mod:`~pha_lightning.model.multi_lora`)."""
        config, source = self.config, self.layout.source
        if source == "task_lora":
            return TaskLoRABank(num_tasks, lora_sites, config.lora_rank)
        if source == "skills":
            return SkillLoRABank(num_tasks, lora_sites, config.lora_rank, config.poly_skills, config.skill_splits)
        if source == "mtl_lora":
            return MTLLoRABank(num_tasks, lora_sites, config.lora_rank, config.mtl_up_projections, config.mtl_sharpness)
        return None

    def _split_blocks(self, split_layer: int | None) -> tuple[int, int]:
        before, after = num_blocks(self.backbone, self.family)
        if self.family == "seq2seq":
            return before, after
        k = before // 2 if split_layer is None else split_layer
        if not 1 <= k < before:
            raise ConfigError(
                f"split_layer must be in [1, {before - 1}] for a {before}-block encoder, got {split_layer}"
            )
        return k, before - k

    # ------------------------------------------------------------------ structure
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The backbone's tokenizer, loaded on first use (T5 decoding, raw examples)."""
        return load_tokenizer(self.config.backbone)

    def trainable_parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def saved_state_keys(self) -> set[str]:
        """What is saved: every parameter outside the backbone, and trained backbone weights.

        Frozen PHA parts (e.g. the source tasks' weights after :meth:`add_tasks`) are kept too:
        they cannot be rebuilt from the hub like the backbone.
        """
        return {name for name, p in self.named_parameters() if p.requires_grad or not name.startswith("backbone.")}

    # ------------------------------------------------------------------ new tasks (few-shot transfer)
    def add_tasks(self, names: list[str], specs: list[dict[str, Any]] | None = None) -> None:
        """Put new tasks in front of the trained ones (ids ``0..n-1``; the trained tasks follow);
        ``specs`` declares those that are spec tasks (their portable specs).

        Their prototype rows live in ``prototypes.added`` (N(0, σ²)) and, on encoder backbones,
        they get fresh heads; everything else is shared with the trained tasks.
        """
        if self.prototypes is None or not isinstance(self.heads, (TaskHeads, type(None))):
            raise ConfigError(
                f"new tasks need a model with prototypes and per-task heads (method 'pha' or 'hyperformer', "
                f"output_layer 'task_heads'); this one is {self.config.method!r} with {self.config.output_layer!r}"
            )
        overlap = sorted(set(names) & set(self.config.tasks))
        if overlap:
            raise ConfigError(f"tasks {overlap} are already tasks of this model; new tasks must be new")
        new_specs = [spec for spec in specs or () if spec["name"] in names]
        new = resolve_tasks(names, new_specs)
        self.prototypes.add_rows(len(new), self.config.prototype_init_std)
        if self.heads is not None:
            self.heads.prepend(self.d_model, new, self.config.head_dropout)
        self.task_objects = [*new, *self.task_objects]
        self.config.tasks = [*names, *self.config.tasks]
        self.config.task_specs = [*new_specs, *(self.config.task_specs or ())] or None
        self.num_added_tasks = len(new)
        self.calibration = None  # fitted on the old tasks alone

    def copy_head(self, target: int, source: int) -> bool:
        """Start task ``target``'s head from task ``source``'s when their label spaces match."""
        if self.heads is None or self.task_objects[target].num_labels != self.task_objects[source].num_labels:
            return False
        self.heads[target].load_state_dict(self.heads[source].state_dict())
        return True

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
        if self.config.method == "arrow" and not self.training:  # routed per token, the task label unused
            return self.lora_bank.arrow(self.config.arrow_top_k, self.config.arrow_temperature, len(task_ids))
        if self.lora_bank is not None:
            return self.lora_bank(task_ids)
        return None

    def task_weights(self, task_ids: Tensor) -> WeightSet | None:
        """Each task's own adapter weights (Arrow's: its LoRA of the library, not the routed mixture):
        what exports write per task."""
        if self.config.method == "arrow":
            return self.lora_bank(task_ids)
        return self.batch_adapter_weights(task_ids)

    def generated_weights(self, task_ids: Tensor) -> WeightSet:
        """Adapter weights for the tasks of a batch: the hypernetwork runs once per distinct task.

        Outside training (no grad) a task's weights are generated once and reused until any
        hypernetwork or prototype parameter changes, or served from a precomputed table.
        """
        tasks, group_of = torch.unique(task_ids, return_inverse=True)
        if torch.is_grad_enabled():
            return self.hypernetwork(self.prototypes(tasks), group_of)
        if self.generated_table is not None and not self.training:
            names = self.generated_kind.parts()
            parts = {
                name: self.generated_table[f"generated.{name}"].to(task_ids.device).index_select(0, tasks)
                for name in names
            }
            return self.generated_kind.with_parts(parts, group_of)
        return stack_groups([self._cached_task_weights(int(t)) for t in tasks.tolist()], group_of)

    def _cached_task_weights(self, task: int) -> WeightSet:
        params = [*self.hypernetwork.parameters(), *self.prototypes.parameters()]
        stamp = (torch.is_autocast_enabled(self.device.type), *((p.data_ptr(), p._version) for p in params))
        if stamp != self._eval_cache_stamp:
            self._eval_cache, self._eval_cache_stamp = {}, stamp
        if task not in self._eval_cache:
            rows = torch.tensor([task], device=self.device)
            self._eval_cache[task] = self.hypernetwork(
                self.prototypes(rows), torch.zeros(1, dtype=torch.long, device=self.device)
            )
        return self._eval_cache[task]

    def precomputed_adapters(self) -> dict[str, Tensor]:
        """Every task's generated adapter weights, exactly as evaluation generates them (one task at a time)."""
        if self.hypernetwork is None or self.prototypes is None:
            raise ConfigError(
                f"method {self.config.method!r} generates no adapters from prototypes; nothing to precompute"
            )
        tasks = torch.arange(len(self.task_objects), device=self.device)
        with torch.no_grad():
            table = stack_groups([self.generated_weights(task[None]) for task in tasks], tasks)
        return {f"generated.{name}": part.contiguous().cpu() for name, part in table.parts().items()}

    def use_generated_table(self, table: Mapping[str, Tensor] | None) -> None:
        """Serve generated adapters from ``table`` (:meth:`precomputed_adapters`) instead of the hypernetwork."""
        if table is not None:
            first = torch.zeros(1, dtype=torch.long, device=self.device)
            with torch.no_grad():  # one task's weights: what the table must hold, and of which kind
                self.generated_kind = self.hypernetwork(self.prototypes(first), first)
            expected = {f"generated.{name}" for name in self.generated_kind.parts()}
            if set(table) != expected or any(len(part) != len(self.task_objects) for part in table.values()):
                raise bundle.BundleError(
                    f"precomputed adapters hold {sorted(table)} for the wrong tasks or parts; expected {sorted(expected)}"
                )
        self.generated_table = dict(table) if table is not None else None

    # ------------------------------------------------------------------ running the backbone
    def _at_retrieval_point(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        """Forward hook at the retrieval point: compute ``z``; HyperDecoder generates from it."""
        state = self._retrieval
        if state is None:  # the backbone was called directly, outside this model's forward
            return
        hidden = full_precision(site_hidden_states(output))
        state.z = self.retriever(hidden, state.attention_mask)
        state.features = masked_mean(hidden, state.attention_mask) if state.pool else None
        if state.stop:
            raise _RetrievalDone
        if self.layout.source == "instance":
            self.adapter_context.weights = self.hypernetwork(state.z)
        elif state.choose is not None:
            task_ids = state.choose(state.z, state.batch, state.features)
            self.adapter_context.weights = self.batch_adapter_weights(task_ids)

    def _recomputation_contexts(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """Activation checkpointing's contexts for one block: nothing in the forward pass; in the
        recomputation (during backward, after the forward has cleared the adapter context) the
        generated weights the block saw in its forward pass."""
        return contextlib.nullcontext(), self.adapter_context.use(self.adapter_context.weights)

    def run_backbone(
        self,
        batch: dict[str, Tensor],
        call: Callable[[], Any],
        weights: WeightSet | None = None,
        stop_at_retrieval: bool = False,
        choose: ChooseTasks | None = None,
        pool: bool = False,
    ) -> tuple[Any, RetrievalPoint]:
        """Run ``call`` (a backbone forward or ``generate``) with this batch's adapters in place.

        ``weights`` are the batch's generated weights when made beforehand (once for all chunks of
        a batch). Returns the output and what the retrieval point saw: the retrieval vectors ``z``
        (``None`` without a retriever) and, with ``pool`` or ``choose``, the pooled hidden states;
        with ``stop_at_retrieval`` the pass ends at the retrieval point and the output is ``None``;
        with ``choose`` the tasks are chosen there (:meth:`forward`).
        """
        if weights is None and choose is None:
            weights = self.batch_adapter_weights(batch["task_ids"])
        self._retrieval = state = RetrievalPoint(batch, stop_at_retrieval, choose, pool or choose is not None)
        try:
            with self.adapter_context.use(weights):
                try:
                    output = call()
                except _RetrievalDone:
                    output = None
            return output, state
        finally:
            self._retrieval = None

    @property
    def running_batch(self) -> dict[str, Tensor] | None:
        """The batch the backbone is running on now (one chunk of it under length-aware execution),
        ``None`` outside a forward pass: what hooks inside the backbone read its token masks from."""
        return None if self._retrieval is None else self._retrieval.batch

    def retrieval_forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Retrieval vectors ``z`` of a batch, running no more than they need.

        T5: the encoder alone. Encoder-only backbones: the blocks up to the retrieval point (the
        retrieval-point hook stops the pass there), or the whole stack when sharded (every rank
        must make the same collective calls, which a pass stopped mid-stack would not).
        """
        return self.retrieval_features(batch, pool=False)[0]

    def retrieval_features(self, batch: dict[str, Tensor], pool: bool = True) -> tuple[Tensor, Tensor | None]:
        """:meth:`retrieval_forward`'s ``z`` and (``pool``) the retriever's mean hidden state: what a routing probe scores."""
        if self.retriever is None:
            raise ConfigError(f"method {self.config.method!r} (with these loss weights) has no retriever")
        if self.family == "seq2seq":
            call = lambda: self.backbone.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])  # noqa: E731
        else:
            call = lambda: self.backbone(**_encoder_inputs(batch))  # noqa: E731
        stop = self.family != "seq2seq" and not is_sharded(self)
        state = self.run_backbone(batch, call, stop_at_retrieval=stop, pool=pool)[1]
        return state.z, state.features

    def retrieval_scores(self, z: Tensor) -> Tensor:
        """Cosine of every retrieval vector with every task's prototype: ``(B, tasks)``."""
        return F.normalize(z.float(), dim=-1) @ self.prototypes.normalized().float().T

    @property
    def chooses_tasks_in_pass(self) -> bool:
        """Whether :meth:`forward` can choose the tasks at the retrieval point (``choose``): the blocks
        below it carry shared adapters only and those above prototype-generated ones (``pha``), the
        backbone is encoder-only and not sharded."""
        below_shared = self.layout.shared >= self.split_layer
        return self.layout.source == "prototype" and below_shared and self.family != "seq2seq" and not is_sharded(self)

    def forward(
        self, batch: dict[str, Tensor], chunked: bool = True, choose: ChooseTasks | None = None
    ) -> dict[str, Tensor]:
        """Run the backbone with the method's adapters.

        Returns the retrieval vectors ``z`` (when the method has a retriever), the ``pooled``
        final states (encoder-only backbones: what the task heads read; T5: the mean of the final
        encoder states) and, for T5, the decoder's ``lm_logits`` (teacher forced on ``labels``).
        Generated weights are made once per batch; the backbone runs the batch in length-sorted
        chunks when that pays (``chunk_cost_tokens``), unless ``chunked`` is false (hooks that
        need the batch's own layout) or the model is sharded.

        ``choose`` (when :attr:`chooses_tasks_in_pass`): the tasks are chosen at the retrieval point,
        ``choose(z, rows, features)`` giving the task ids of the rows a backbone call runs (the batch, or
        a chunk of it), and the generated weights are made there: routing costs no second pass below it.
        """
        if choose is not None and not self.chooses_tasks_in_pass:
            raise ConfigError(
                f"method {self.config.method!r} on a {self.family} backbone cannot choose tasks at the retrieval point "
                "(only pha, encoder-only, unsharded: the blocks below it must not depend on the task); name the tasks"
            )
        weights = None if choose is not None else self.batch_adapter_weights(batch["task_ids"])
        # sharded: every rank must make the same backbone calls (each gathers weights collectively)
        chunked = chunked and not is_sharded(self)
        chunks = plan_chunks(batch["attention_mask"], self.config.chunk_cost_tokens) if chunked else None
        if chunks is None:
            return self._forward_rows(batch, weights, choose)
        return run_chunked(
            batch, chunks, lambda sub, rows: self._forward_rows(sub, restrict_weights(weights, rows), choose)
        )

    def _forward_rows(
        self, batch: dict[str, Tensor], weights: WeightSet | None, choose: ChooseTasks | None = None
    ) -> dict[str, Tensor | None]:
        """:meth:`forward` of one padded batch (or chunk) with its generated weights."""
        if self.family == "seq2seq":
            out, seen = self.run_backbone(
                batch,
                lambda: self.backbone(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    decoder_input_ids=self.backbone._shift_right(batch["labels"]),
                ),
                weights,
            )
            pooled = masked_mean(full_precision(out.encoder_last_hidden_state), batch["attention_mask"])
            return {"z": seen.z, "lm_logits": out.logits, "pooled": pooled}
        out, seen = self.run_backbone(batch, lambda: self.backbone(**_encoder_inputs(batch)), weights, choose=choose)
        final = full_precision(out.last_hidden_state)  # the heads stay float32 under a half-precision backbone
        pooled = masked_mean(final, batch["attention_mask"]) if self.config.head_pooling == "mean" else final[:, 0]
        return {"z": seen.z, "pooled": pooled}

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_values(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-example predictions as floats: class index (``INVALID`` if unparseable) or regression value."""
        if self.family == "seq2seq":
            return seq2seq.predicted_values(self, batch)
        return self.heads.predictions(self(batch)["pooled"], batch["task_ids"])

    def predict(
        self, examples: Iterable[Mapping[str, Any]], batch_size: int = 32, max_source_length: int | None = None
    ) -> list[dict[str, Any]]:
        """Predict raw examples (dicts as in a ``pha predict`` JSONL file); rows come back in input order.

        ``max_source_length`` defaults to the one the model was trained with (its bundle), else 128.
        """
        return prediction.predict(self, examples, batch_size, max_source_length)

    # ------------------------------------------------------------------ saving and loading (formats/bundle.py)
    def save_pretrained(
        self,
        output_dir: str | os.PathLike,
        *,
        precompute: bool = False,
        overwrite: bool = False,
        data: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a bundle: ``config.json`` (this :class:`PHAConfig`, versions, checksums) and the
        weights in safetensors (docs/production.md, "Export a portable adapter bundle"). ``data`` records the input settings
        (``max_source_length`` …), by default those of the bundle this model was loaded from."""
        if data is None:
            data = (self.bundle_config or {}).get("data", {})
        if self.calibration is not None:
            extra = {**(extra or {}), "routing": self.calibration.to_dict()}
        saved = {k: v for k, v in self.state_dict().items() if k in self.saved_state_keys()}
        return bundle.write_bundle(
            output_dir,
            self.config.to_dict(),
            self.task_objects,
            merge_added_rows(saved),  # added tasks' prototype rows in the one table of the plain model
            data=data,
            precomputed=self.precomputed_adapters() if precompute else None,
            extra=extra,
            routing_probe=self.calibration.probe_tensors() if self.calibration is not None else None,
            overwrite=overwrite,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        backbone: str | None = None,
        use_precomputed_adapters: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> PHAModel:
        """Rebuild the frozen backbone and load a bundle (safetensors only: nothing is unpickled).

        ``backbone`` replaces the recorded backbone name (e.g. a local copy of the same model);
        it must have the architecture the bundle was trained on. Precomputed adapters, when the
        bundle has them, replace the hypernetwork at inference unless ``use_precomputed_adapters``
        is false.
        """
        record = bundle.read_bundle_config(path)
        name = backbone or record["config"]["backbone"]
        bundle.check_backbone(record, name, path, given=backbone is not None)
        model = cls(PHAConfig.from_dict({**record["config"], "backbone": name}))
        model.load_bundle(path, record)
        model.bundle_config = record
        if use_precomputed_adapters and bundle.ADAPTERS_NAME in record["files"]:
            model.use_generated_table(bundle.read_precomputed(path, record))
        return model.eval().to(map_location)

    def load_bundle(self, path: str | os.PathLike, config: Mapping[str, Any] | None = None) -> None:
        """Load a bundle's weights into this (already built) model (``pha test --ckpt_path <bundle>``):
        they must fit it and hold every weight it saves."""
        config = bundle.read_bundle_config(path) if config is None else config
        state = bundle.read_bundle_weights(path, config)
        source = f"bundle {str(path)!r}"
        check_state_fits(state, self.state_dict(), source)
        check_state_complete(state, self.saved_state_keys(), source, bundle.BundleError)
        self.load_state_dict(state, strict=False)
        routing = config.get("routing")
        self.calibration = Calibration.from_dict(routing, bundle.read_routing_probe(path, config)) if routing else None


@dataclass
class RetrievalPoint:
    """What the retrieval-point hook needs from, and gives back to, one forward pass."""

    batch: dict[str, Tensor]
    #: whether only ``z`` is wanted: the hook then stops the pass (:class:`_RetrievalDone`)
    stop: bool = False
    #: chooses the rows' task ids from ``z`` at the retrieval point (:meth:`PHAModel.forward`)
    choose: ChooseTasks | None = None
    pool: bool = False  # keep ``features``, the pooled hidden states at the retrieval point
    z: Tensor | None = None
    features: Tensor | None = None

    @property
    def attention_mask(self) -> Tensor:
        return self.batch["attention_mask"]


class _RetrievalDone(Exception):
    """Raised by the retrieval-point hook when only ``z`` is wanted: the blocks above it do not run."""


def _encoder_inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
