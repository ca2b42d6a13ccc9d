"""Per-task exports of LoRA models: peft adapter directories, and merged transformers checkpoints.

Once a task's LoRA factors are generated, PHA's network for that task is the frozen backbone with
an ordinary LoRA update on each adapted linear layer, ``base(x) + (alpha/r)·B·A·dropout(x)``,
which is what peft's ``LoraModel`` computes. This module writes, per task, the shared factors of
the blocks before the retrieval point and the task's generated factors after it under peft's key
names, with an ``adapter_config.json`` naming every adapted module by its full path, and the
task's head and model card (:mod:`~pha_lightning.formats.task_export`). With a base model to merge
into it also writes the backbone with each update merged into its weights (``W + (alpha/r)·B·A``),
a checkpoint plain transformers loads. The factors come from the model
(:func:`pha_lightning.model.exports.write_peft_export`); peft itself is not imported: the JSON and
the keys are written here (docs/production.md, "Serve a task with peft, or as a merged model").
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from pha_lightning.files import atomic_directory
from pha_lightning.formats.bundle import check_output_dir
from pha_lightning.formats.task_export import (
    ExportedModel,
    ExportedTask,
    export_index,
    write_head_and_card,
    write_index,
)

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
#: peft's task type for each backbone family (``PeftModelForFeatureExtraction`` / ``…ForSeq2SeqLM``)
PEFT_TASK_TYPES = {"encoder": "FEATURE_EXTRACTION", "seq2seq": "SEQ_2_SEQ_LM"}

#: module path -> ``(A (r, d_in), B (d_out, r))``: an :class:`ExportedTask`'s ``weights`` here
Factors = dict[str, tuple[Tensor, Tensor]]
#: a base model to merge into (a transformers ``PreTrainedModel``) and the tokenizer saved beside it
MergeBase = tuple[nn.Module, Any]


def peft_state(factors: Factors) -> dict[str, Tensor]:
    """peft's keys for the factors: ``base_model.model.<path>.lora_A.weight`` and ``.lora_B.weight``."""
    state = {}
    for path, (a, b) in factors.items():
        state[f"base_model.model.{path}.lora_A.weight"] = a
        state[f"base_model.model.{path}.lora_B.weight"] = b
    return state


def peft_config(exported: ExportedModel, paths: Sequence[str]) -> dict[str, Any]:
    """A complete ``LoraConfig`` as JSON: the model's rank, alpha and dropout on exactly ``paths``
    (full module paths: a suffix such as BERT's ``output.dense`` would also match the attention output)."""
    config = exported
    return {
        "peft_type": "LORA",
        "task_type": PEFT_TASK_TYPES[exported.family],
        "base_model_name_or_path": config.backbone,  # portable: resolve_backbone_path maps pypi: names here
        "revision": None,
        "inference_mode": True,
        "r": config.lora_rank,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": list(paths),
        "exclude_modules": None,
        "bias": "none",
        "lora_bias": False,
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_parameters": None,
    }


def write_peft_files(
    exported: ExportedModel,
    output_dir: str | os.PathLike,
    *,
    router: str | Callable[[Path], None],
    merge_base: Callable[[], MergeBase] | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``peft/<task>/`` for every task of ``exported`` (and with ``merge_base``, which loads the
    base model, ``merged/<task>/``), ``router/`` (``router`` writes it, or says why there is none) and
    an ``export.json`` index, atomically into ``output_dir``."""
    output_dir = check_output_dir(output_dir, overwrite)
    return atomic_directory(
        output_dir, lambda folder: _write_export(exported, folder, router, merge_base, dict(extra or {})), "export"
    )


def _write_export(
    exported: ExportedModel,
    folder: Path,
    router: str | Callable[[Path], None],
    merge_base: Callable[[], MergeBase] | None,
    extra: dict[str, Any],
) -> None:
    index = export_index(exported, "peft", extra)
    for task in exported.tasks:
        name = task.spec.name
        _write_adapter(exported, folder / "peft" / name, task)
        index["tasks"][name] = {"peft": f"peft/{name}"}
    if merge_base is not None:
        for name, directory in _write_merged(exported, folder / "merged", merge_base()):
            index["tasks"][name]["merged"] = directory
    index["router"] = router if isinstance(router, str) else "router"
    if not isinstance(router, str):
        router(folder / "router")
    write_index(folder, index)


def _write_adapter(exported: ExportedModel, directory: Path, task: ExportedTask) -> None:
    """One peft adapter directory: config, factors, head, model card."""
    directory.mkdir(parents=True)
    config = peft_config(exported, list(task.weights))
    (directory / PEFT_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file(peft_state(task.weights), str(directory / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    write_head_and_card(exported, directory, task, "peft")


def _write_merged(exported: ExportedModel, folder: Path, merge_base: MergeBase) -> list[tuple[str, str]]:
    """A full transformers checkpoint per task with its LoRA updates merged into the base weights."""
    base, tokenizer = merge_base
    originals = {path: base.get_submodule(path).weight.detach().clone() for path in exported.tasks[0].weights}
    written = []
    for task in exported.tasks:
        merge_factors(base, originals, task.weights, exported.lora_alpha / exported.lora_rank)
        directory = folder / task.spec.name
        base.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        write_head_and_card(exported, directory, task, "merged")
        written.append((task.spec.name, f"merged/{task.spec.name}"))
    return written


def merge_factors(base: nn.Module, originals: Mapping[str, Tensor], factors: Factors, scaling: float) -> None:
    """Set each adapted weight of ``base`` to ``W + scaling·B·A`` (``W`` from ``originals``), as peft merges."""
    with torch.no_grad():
        for path, (a, b) in factors.items():
            weight = base.get_submodule(path).weight
            weight.copy_(originals[path] + (b.to(weight) @ a.to(weight)) * scaling)
