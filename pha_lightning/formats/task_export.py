"""What every per-task export shares: the model as plain values, the index, the head file, the card.

A per-task export (:mod:`~pha_lightning.formats.peft`, :mod:`~pha_lightning.formats.adapterhub`)
is written from an :class:`ExportedModel`: the settings the files name and, per task, its
definition, its head's tensors and its adapter weights, all handed over by the model
(:mod:`pha_lightning.model.exports`), so that the files are written here without the model.
Each task folder gets its head (encoder backbones, which pool and classify outside any Hugging Face
head) in a small safetensors file and a model card with the input format; ``export.json`` indexes
the folders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from pha_lightning.data.tasks import Task
from pha_lightning.version import __version__

HEAD_NAME = "task_head.safetensors"
CARD_NAME = "README.md"
INDEX_NAME = "export.json"

#: a head as ``weight (outputs, d)``, ``bias (outputs,)`` and what the outputs mean (safetensors metadata)
Head = tuple[dict[str, Tensor], dict[str, str]]


@dataclass(frozen=True)
class ExportedTask:
    """One task of an export: its definition, its head (``None`` for T5, whose answers are text) and
    its adapter weights in the export's own layout."""

    spec: Task
    head: Head | None
    weights: Any


@dataclass(frozen=True)
class ExportedModel:
    """The model as a per-task export sees it: plain settings and the selected tasks."""

    backbone: str
    family: str  # "encoder" or "seq2seq"
    method: str
    adapter_kind: str  # "lora" or "bottleneck"
    adapter_dim: int
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    hidden_size: int
    head_pooling: str
    generation_max_length: int
    tasks: list[ExportedTask]
    #: the input settings the model was trained with (``max_source_length`` …)
    data: Mapping[str, Any] = field(default_factory=dict)


def export_index(exported: ExportedModel, kind: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """``export.json`` before its ``tasks`` are filled in: the format, the backbone, the source (``extra``)."""
    return {
        "format": f"pha-{kind}-export",
        "library_version": __version__,
        "backbone": exported.backbone,
        "base_model_name_or_path": exported.backbone,
        "method": exported.method,
        "tasks": {},
        **extra,
    }


def write_index(folder: Path, index: Mapping[str, Any]) -> None:
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, default=str) + "\n")


def write_head_and_card(exported: ExportedModel, directory: Path, task: ExportedTask, kind: str) -> None:
    """The task's head file (encoders) and its model card (``kind`` of :data:`CARD_KINDS`) in ``directory``."""
    if task.head is not None:
        save_file(task.head[0], str(directory / HEAD_NAME), metadata=task.head[1])
    (directory / CARD_NAME).write_text(model_card(exported, task, kind))


def input_format(task: Task, family: str) -> str:
    """How the task's examples are turned into model input, for the model card: the task's own
    formatting applied to ``{field}`` placeholders (or a pointer to it, where it needs real values)."""
    fields = ", ".join(f"`{field}`" for field in task.source_fields)
    placeholders = {field: "{" + field + "}" for field in task.source_fields}
    try:
        texts = task.encoder_text(placeholders) if family == "encoder" else (task.seq2seq_source(placeholders),)
    except (KeyError, TypeError, ValueError, NotImplementedError):
        return f"Inputs are built by task `{task.name}`'s own formatting in pha-lightning from the fields {fields}."
    if family == "seq2seq":
        return f"The encoder reads one string, `{texts[0]}`, filled in from the fields {fields}, truncated to `max_length` tokens."
    text, pair = texts
    shown = f"the text `{text}`" + (f" and the pair `{pair}`" if pair is not None else "")
    return (
        f"The backbone's tokenizer gets {shown}, filled in from the fields {fields}: "
        '`inputs = tokenizer(text[, pair], truncation=True, max_length=max_length, return_tensors="pt")`.'
    )


#: per kind of export: its title, the card's ``library_name`` and tag, and what it holds
CARD_KINDS: dict[str, tuple[str, str, str]] = {
    "peft": ("peft LoRA adapter", "peft", "lora"),
    "merged": ("merged checkpoint", "transformers", "merged-lora"),
    "adapterhub": ("AdapterHub parallel bottleneck adapter", "adapter-transformers", "adapterhub:par_bn"),
}


def model_card(exported: ExportedModel, task: ExportedTask, kind: str) -> str:
    """The README of an exported task (``kind`` of :data:`CARD_KINDS`): what it is, how to load it,
    the input format, the outputs."""
    spec, base = task.spec, exported.backbone
    max_length = exported.data.get("max_source_length", 128)
    title, library, tag = CARD_KINDS[kind]
    front = ["---", f"base_model: {json.dumps(base)}", f"library_name: {library}"]
    front += ["tags:", "- pha-lightning", f"- {tag}", "---", ""]
    adapters = (
        f"LoRA r={exported.lora_rank}, alpha={exported.lora_alpha}"
        if exported.adapter_kind == "lora"
        else f"bottleneck adapters of width {exported.adapter_dim}"
    )
    lines = [
        f"# {spec.name}: {title} exported by pha-lightning {__version__}",
        "",
        f"Task `{spec.name}` of a `{exported.method}` model ({adapters}) on the frozen backbone `{base}`. "
        + _what_it_computes(exported.method),
        "",
        "## Input",
        "",
        input_format(spec, exported.family) + f" `max_length` was {max_length} in training.",
        "",
        "## Load",
        "",
        "```python",
        *_load_lines(exported.family, base, kind),
        "```",
        "",
        *_output_lines(exported, task),
    ]
    return "\n".join(front + lines) + "\n"


def _what_it_computes(method: str) -> str:
    if method == "arrow":  # the export is the library Arrow routes over, not the routing
        return (
            "It is this task's LoRA of the Arrow library: the `arrow` model routes every token over all the "
            "tasks' LoRAs (give every exported task's folder to peft's `create_arrow_model` with `ArrowConfig("
            "top_k, router_temperature)`); alone it computes what `PHAModel` computes for this task with the task label."
        )
    return "The shared adapter weights and this task's own ones are fixed: it computes what `PHAModel` computes for this task."


def _load_lines(family: str, base: str, kind: str) -> list[str]:
    auto = "AutoModelForSeq2SeqLM" if family == "seq2seq" else "AutoModel"
    if kind == "merged":
        return [
            f"from transformers import {auto}, AutoTokenizer",
            "",
            f'model = {auto}.from_pretrained(".").eval()  # a plain transformers checkpoint: no peft, no pha',
            'tokenizer = AutoTokenizer.from_pretrained(".")',
        ]
    resolver, base = base_lines(base)
    if kind == "adapterhub":
        return [
            "import adapters",
            f"from transformers import {auto}",
            *resolver,
            "",
            f"model = {auto}.from_pretrained({base})",
            "adapters.init(model)",
            'name = model.load_adapter(".", use_safetensors=True, set_active=True)',
            "model.eval()  # more tasks: load each, then model.set_active_adapters(task) per batch of that task",
        ]
    return [
        "from peft import PeftModel",
        f"from transformers import {auto}",
        *resolver,
        "",
        f"base = {auto}.from_pretrained({base})",
        'model = PeftModel.from_pretrained(base, ".").eval()  # more tasks: model.load_adapter(dir, adapter_name=task)',
        "# a batch mixing tasks: model(**inputs, adapter_names=[task of each example])",
        "# examples without a task: ../../router (pha_lightning.routing.Router) names it, or abstains",
    ]


def base_lines(name: str) -> tuple[list[str], str]:
    """The import a model card needs to load the backbone ``name`` and the expression that names it:
    a ``pypi:`` name goes through :func:`~pha_lightning.hub.resolve_backbone_path` (its path differs
    between machines), a hub id or a directory is given as it is."""
    if name.startswith("pypi:"):
        return ["from pha_lightning.hub import resolve_backbone_path"], f"resolve_backbone_path({json.dumps(name)})"
    return [], json.dumps(name)


def _output_lines(exported: ExportedModel, task: ExportedTask) -> list[str]:
    spec = task.spec
    if exported.family == "seq2seq":
        answer = (
            "a number with one decimal"
            if spec.is_regression
            else "one of " + ", ".join(f"`{word}`" for word in spec.label_names)
        )
        return [
            "## Output",
            "",
            f"Greedy `generate` (at most {exported.generation_max_length} tokens) writes the answer as text: {answer}.",
        ]
    head = task.head
    pooling = (
        "pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)"
        if exported.head_pooling == "mean"
        else "pooled = hidden[:, 0]"
    )
    meta = head[1] if head else {}
    reading = (
        f"`value = outputs[:, 0] * {meta.get('regression_half_width')} + {meta.get('regression_center')}`"
        if meta.get("kind") == "regression"
        else f"the argmax over the outputs, which are {meta.get('outputs')}"
    )
    if spec.is_regression and meta.get("kind") != "regression":
        reading += " (grid values: the best-scoring one is the prediction)"
    return [
        "## Task head",
        "",
        f"The task's head is in `{HEAD_NAME}` (not a Hugging Face head): the {exported.head_pooling} of the final "
        "hidden states over real tokens, then one linear layer. Two lines apply it:",
        "",
        "```python",
        "from safetensors.torch import load_file",
        f'head = load_file("{HEAD_NAME}")',
        'hidden, mask = model(**inputs).last_hidden_state, inputs["attention_mask"]',
        pooling,
        'outputs = pooled @ head["weight"].T + head["bias"]',
        "```",
        "",
        f"The prediction is {reading}.",
    ]
