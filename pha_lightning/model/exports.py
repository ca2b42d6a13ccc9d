"""What a per-task export reads from a model: its tasks' adapter weights and heads, as plain tensors.

The files (peft LoRA adapters and merged checkpoints, AdapterHub parallel bottleneck adapters) are
:mod:`pha_lightning.formats`'s; this module checks that a model has a fixed adapter per task in the
export's kind, generates each selected task's weights (shared sites' own, generated sites' for the
task), takes its head, and hands them over as an
:class:`~pha_lightning.formats.task_export.ExportedModel`. :func:`write_peft_export` and
:func:`write_adapterhub_export` are what ``pha export --format peft|adapterhub`` calls.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pha_lightning.errors import ConfigError
from pha_lightning.formats.adapterhub import (
    ADAPTERHUB_MODEL_TYPES,
    BlockAdapter,
    reduction_factor,
    write_adapterhub_files,
)
from pha_lightning.formats.peft import Factors, MergeBase, write_peft_files
from pha_lightning.formats.task_export import ExportedModel, ExportedTask, Head
from pha_lightning.hub import from_hub, load_backbone_config
from pha_lightning.model.adapters import GeneratedAdapter, GeneratedWeights, SharedAdapter
from pha_lightning.model.backbone import adapter_sites, backbone_class
from pha_lightning.model.heads import LabelWordHead, TaskHeads
from pha_lightning.model.lora import GeneratedLoRA, LoRALinear, SharedLoRA
from pha_lightning.model.router import why_no_router, write_router_files

if TYPE_CHECKING:
    from pha_lightning.model.pha import PHAModel


# ---------------------------------------------------------------------------------------- peft
def check_peft_exportable(model: PHAModel) -> None:
    """One :class:`ConfigError` saying why a model has no per-task LoRA adapter, and what would work."""
    config, layout = model.config, model.layout
    if layout.trains_backbone:
        raise ConfigError(
            f"--format peft exports LoRA adapters; method {config.method!r} trains the backbone itself, so there is "
            "no adapter to export: export a bundle (--format bundle), or train LoRA (model.arch.method lora)"
        )
    if layout.kind != "lora":
        raise ConfigError(
            f"--format peft exports LoRA adapters; method {config.method!r} with adapter_kind {config.adapter_kind!r} "
            "uses parallel bottleneck adapters, which peft's LoRA cannot represent: export a bundle (--format bundle, "
            "served by PHAModel.from_pretrained), or train with model.arch.adapter_kind lora "
            "(methods pha, hyperformer, adapter, lora)"
        )
    if layout.source == "instance":
        raise ConfigError(
            f"--format peft exports one fixed adapter per task; method {config.method!r} generates LoRA factors from "
            "each example's own retrieval vector, so no per-task adapter exists: export a bundle (--format bundle)"
        )
    if config.backbone_init == "random":
        raise ConfigError(
            "this model's frozen backbone was built at random init (backbone_init='random'); a peft adapter needs a "
            "base model that from_pretrained can load: export models on a pretrained backbone"
        )
    scalings = sorted({site.scaling for _, site in lora_sites(model)})
    if scalings != [config.lora_alpha / config.lora_rank]:
        raise ConfigError(
            f"peft scales every LoRA site by lora_alpha / r = {config.lora_alpha / config.lora_rank}; this model's "
            f"sites use {scalings}"
        )


def lora_sites(model: PHAModel) -> list[tuple[str, LoRALinear]]:
    """Every LoRA site of the backbone, by its module path, in module order."""
    return [(name, module) for name, module in model.backbone.named_modules() if isinstance(module, LoRALinear)]


def task_factors(model: PHAModel, task: int) -> Factors:
    """The LoRA factors task ``task`` runs with: shared sites' own, generated sites' for this task."""
    with torch.no_grad():
        generated = model.task_weights(torch.tensor([task], device=model.device))
    factors = {}
    for name, site in lora_sites(model):
        update = site.update
        if isinstance(update, SharedLoRA):
            a, b = update.a.weight, update.b.weight
        elif isinstance(generated, GeneratedLoRA):
            a, b = generated.a[update.shape_set][0, update.index], generated.b[update.shape_set][0, update.index]
        else:
            raise ConfigError(f"LoRA site {name} has no factors for task {model.task_objects[task].name!r}")
        factors[name] = (a.detach().contiguous().cpu(), b.detach().contiguous().cpu())
    return factors


def select_tasks(model: PHAModel, names: Sequence[str] | None) -> list[int]:
    """The indices of ``names`` among the model's tasks (all of them when ``None``)."""
    known = [task.name for task in model.task_objects]
    if names is None:
        return list(range(len(known)))
    unknown = [name for name in names if name not in known]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(f"--tasks must be distinct tasks of this model {known}, got {list(names)}")
    return [known.index(name) for name in names]


# ---------------------------------------------------------------------------------------- peft files
def head_state(model: PHAModel, task: int) -> Head | None:
    """An encoder task's head as ``weight (outputs, d)``, ``bias (outputs,)`` and what the outputs
    mean (safetensors metadata); ``None`` for T5, whose answers are generated text."""
    heads, spec = model.heads, model.task_objects[task]
    if isinstance(heads, TaskHeads):
        linear = heads[task][1]
        weight, bias = linear.weight, linear.bias
        outputs = list(spec.class_names) if not spec.is_regression else ["value"]
        center, half = heads.regression_scale(task) if spec.is_regression else (0.0, 1.0)
    elif isinstance(heads, LabelWordHead):
        words = heads.task_words[task]
        weight, bias = heads.layer[1].weight[words], heads.layer[1].bias[words]
        outputs, (center, half) = list(spec.rank_candidates()), (0.0, 1.0)
    else:
        return None
    metadata = {
        "task": spec.name,
        "pooling": model.config.head_pooling,
        "kind": "regression" if spec.is_regression and isinstance(heads, TaskHeads) else "classification",
        "outputs": json.dumps(outputs),
        "regression_center": repr(float(center)),
        "regression_half_width": repr(float(half)),
    }
    return {"weight": weight.detach().contiguous().cpu(), "bias": bias.detach().contiguous().cpu()}, metadata


def write_peft_export(
    model: PHAModel,
    output_dir: str | os.PathLike,
    *,
    tasks: Sequence[str] | None = None,
    merge: bool = False,
    overwrite: bool = False,
    data: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``peft/<task>/`` (and with ``merge``, ``merged/<task>/``) for every selected task, the
    ``router/`` and an ``export.json`` index, atomically into ``output_dir``
    (:func:`~pha_lightning.formats.peft.write_peft_files`)."""
    check_peft_exportable(model)
    exported = exported_model(model, select_tasks(model, tasks), data, task_factors)
    reason = why_no_router(model)
    return write_peft_files(
        exported,
        output_dir,
        router=reason if reason else lambda folder: write_router_files(folder, model, exported.data),
        merge_base=(lambda: merge_base(model)) if merge else None,
        overwrite=overwrite,
        extra=extra,
    )


def merge_base(model: PHAModel) -> MergeBase:
    """A fresh copy of the model's backbone (its dtype, without adapters) to merge each task's LoRA
    into, and the tokenizer saved beside it."""
    dtype = next(model.backbone.parameters()).dtype
    name = model.config.backbone
    auto = backbone_class(name)
    return from_hub(name, "weights", lambda path: auto.from_pretrained(path, dtype=dtype)).eval(), model.tokenizer


# ---------------------------------------------------------------------------------------- AdapterHub
def check_adapterhub_exportable(model: PHAModel) -> None:
    """One :class:`ConfigError` saying why a model has no AdapterHub ``par_bn`` adapter per task, and what would work."""
    config, layout = model.config, model.layout
    model_type = load_backbone_config(config.backbone).model_type
    reasons = [
        (layout.trains_backbone, f"method {config.method!r} trains the backbone itself, so there is no adapter"),
        (layout.kind == "lora", f"this {config.method!r} model's adapters are LoRA: export them with --format peft"),
        (
            layout.source == "instance",
            f"method {config.method!r} generates adapters from each example's own retrieval vector, "
            "so no fixed per-task adapter exists",
        ),
        (
            model.family == "seq2seq",
            "on T5 AdapterHub's parallel adapter reads the residual stream before the feed-forward RMSNorm, "
            "while ours reads the normalised input, so the mapping would not be exact",
        ),
        (
            model_type not in ADAPTERHUB_MODEL_TYPES,
            f"the mapping is checked against adapters for model_type {list(ADAPTERHUB_MODEL_TYPES)}, "
            f"and backbone {config.backbone!r} is {model_type!r}",
        ),
        (config.backbone_init == "random", "the backbone was built at random init: there is no base model to load"),
    ]
    for refused, reason in reasons:
        if refused:
            raise ConfigError(f"--format adapterhub exports parallel bottleneck adapters of BERT; {reason}")
    reduction_factor(model.d_model, config.adapter_dim)


def task_adapters(model: PHAModel, task: int) -> list[BlockAdapter]:
    """Every block's adapter for ``task``: shared blocks' own weights, generated blocks' for this task."""
    with torch.no_grad():
        generated = model.batch_adapter_weights(torch.tensor([task], device=model.device))
    blocks = []
    for site in adapter_sites(model.backbone, model.family):
        adapter = site.adapter
        if isinstance(adapter, SharedAdapter):
            parts = (adapter.down.weight, adapter.down.bias, adapter.up.weight, adapter.up.bias)
        elif isinstance(adapter, GeneratedAdapter) and isinstance(generated, GeneratedWeights):
            w, layer = generated, adapter.layer
            parts = (w.down_w[0, layer].T, w.down_b[0, layer], w.up_w[0, layer].T, w.up_b[0, layer])
        else:
            raise ConfigError(f"block {len(blocks)} has no adapter weights for task {model.task_objects[task].name!r}")
        blocks.append(tuple(part.detach().contiguous().cpu() for part in parts))
    return blocks


def write_adapterhub_export(
    model: PHAModel,
    output_dir: str | os.PathLike,
    *,
    tasks: Sequence[str] | None = None,
    overwrite: bool = False,
    data: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``adapterhub/<task>/`` (config, weights, head, card) for every selected task and an
    ``export.json`` index, atomically into ``output_dir``
    (:func:`~pha_lightning.formats.adapterhub.write_adapterhub_files`)."""
    check_adapterhub_exportable(model)
    exported = exported_model(model, select_tasks(model, tasks), data, task_adapters)
    return write_adapterhub_files(exported, output_dir, overwrite=overwrite, extra=extra)


# ---------------------------------------------------------------------------------------- both
def exported_model(
    model: PHAModel, indices: list[int], data: Mapping[str, Any] | None, weights: Callable[[PHAModel, int], Any]
) -> ExportedModel:
    """The model as an export sees it (in eval mode): its settings, and per selected task its
    definition, head and ``weights(model, task)``; ``data`` the input settings (by default the bundle's)."""
    model.eval()
    config = model.config
    return ExportedModel(
        backbone=config.backbone,
        family=model.family,
        method=config.method,
        adapter_kind=model.layout.kind,
        adapter_dim=config.adapter_dim,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        hidden_size=model.d_model,
        head_pooling=config.head_pooling,
        generation_max_length=config.generation_max_length,
        tasks=[ExportedTask(model.task_objects[i], head_state(model, i), weights(model, i)) for i in indices],
        data=dict(data if data is not None else (model.bundle_config or {}).get("data", {})),
    )
