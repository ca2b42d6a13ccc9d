"""Per-task exports of LoRA models: peft adapter directories, and merged transformers checkpoints.

Once a task's LoRA factors are generated, PHA's network for that task is the frozen backbone with
an ordinary LoRA update on each adapted linear layer, ``base(x) + (alpha/r)·B·A·dropout(x)``,
which is what peft's ``LoraModel`` computes. This module writes, per task, the shared factors of
the blocks before the retrieval point and the task's generated factors after it under peft's key
names, with an ``adapter_config.json`` naming every adapted module by its full path; the task's
head (encoder backbones, which pool and classify outside any Hugging Face head) in a small
safetensors file; a model card with the input format. With ``merge`` it also writes the backbone
with each update merged into its weights (``W + (alpha/r)·B·A``), a checkpoint plain transformers
loads. peft itself is not imported: the JSON and the keys are written here (docs/production.md,
"Serve a task with peft, or as a merged model").
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

import pha_lightning
from pha_lightning.data.tasks import Task
from pha_lightning.errors import ConfigError
from pha_lightning.files import atomic_directory
from pha_lightning.hub import from_hub
from pha_lightning.model.backbone import backbone_class
from pha_lightning.model.bundle import check_output_dir
from pha_lightning.model.heads import LabelWordHead, TaskHeads
from pha_lightning.model.lora import GeneratedLoRA, LoRALinear, SharedLoRA
from pha_lightning.model.router import why_no_router, write_router_files

if TYPE_CHECKING:
    from pha_lightning.model.pha import PHAModel

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
HEAD_NAME = "task_head.safetensors"
CARD_NAME = "README.md"
INDEX_NAME = "export.json"
#: peft's task type for each backbone family (``PeftModelForFeatureExtraction`` / ``…ForSeq2SeqLM``)
PEFT_TASK_TYPES = {"encoder": "FEATURE_EXTRACTION", "seq2seq": "SEQ_2_SEQ_LM"}

#: module path -> ``(A (r, d_in), B (d_out, r))``
Factors = dict[str, tuple[Tensor, Tensor]]


# ---------------------------------------------------------------------------------------- what maps
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
def peft_state(factors: Factors) -> dict[str, Tensor]:
    """peft's keys for the factors: ``base_model.model.<path>.lora_A.weight`` and ``.lora_B.weight``."""
    state = {}
    for path, (a, b) in factors.items():
        state[f"base_model.model.{path}.lora_A.weight"] = a
        state[f"base_model.model.{path}.lora_B.weight"] = b
    return state


def peft_config(model: PHAModel, paths: Sequence[str]) -> dict[str, Any]:
    """A complete ``LoraConfig`` as JSON: the model's rank, alpha and dropout on exactly ``paths``
    (full module paths: a suffix such as BERT's ``output.dense`` would also match the attention output)."""
    config = model.config
    return {
        "peft_type": "LORA",
        "task_type": PEFT_TASK_TYPES[model.family],
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


def head_state(model: PHAModel, task: int) -> tuple[dict[str, Tensor], dict[str, str]] | None:
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


def input_format(model: PHAModel, task: Task) -> str:
    """How the task's examples are turned into model input, for the model card: the task's own
    formatting applied to ``{field}`` placeholders (or a pointer to it, where it needs real values)."""
    fields = ", ".join(f"`{field}`" for field in task.source_fields)
    placeholders = {field: "{" + field + "}" for field in task.source_fields}
    try:
        texts = task.encoder_text(placeholders) if model.family == "encoder" else (task.seq2seq_source(placeholders),)
    except (KeyError, TypeError, ValueError, NotImplementedError):
        return f"Inputs are built by task `{task.name}`'s own formatting in pha-lightning from the fields {fields}."
    if model.family == "seq2seq":
        return f"The encoder reads one string, `{texts[0]}`, filled in from the fields {fields}, truncated to `max_length` tokens."
    text, pair = texts
    shown = f"the text `{text}`" + (f" and the pair `{pair}`" if pair is not None else "")
    return (
        f"The backbone's tokenizer gets {shown}, filled in from the fields {fields}: "
        '`inputs = tokenizer(text[, pair], truncation=True, max_length=max_length, return_tensors="pt")`.'
    )


# ---------------------------------------------------------------------------------------- writing
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
    """Write ``peft/<task>/`` (and with ``merge``, ``merged/<task>/``) for every selected task, and an
    ``export.json`` index, atomically into ``output_dir``."""
    check_peft_exportable(model)
    indices, output_dir, data = prepare_export(model, output_dir, tasks, overwrite, data)
    return atomic_directory(
        output_dir, lambda folder: _write_export(model, folder, indices, merge, data, dict(extra or {})), "export"
    )


def prepare_export(
    model: PHAModel,
    output_dir: str | os.PathLike,
    tasks: Sequence[str] | None,
    overwrite: bool,
    data: Mapping[str, Any] | None,
) -> tuple[list[int], Path, dict[str, Any]]:
    """What every per-task export checks and needs first: the tasks' indices, the output directory,
    the data settings (by default the bundle's); the model is put in eval mode."""
    indices = select_tasks(model, tasks)
    output_dir = check_output_dir(output_dir, overwrite)
    model.eval()
    return indices, output_dir, dict(data if data is not None else (model.bundle_config or {}).get("data", {}))


def _write_export(
    model: PHAModel, folder: Path, indices: list[int], merge: bool, data: dict[str, Any], extra: dict[str, Any]
) -> None:
    factors = {task: task_factors(model, task) for task in indices}
    index = export_index(model, "peft", extra)
    for task in indices:
        name = model.task_objects[task].name
        _write_adapter(model, folder / "peft" / name, task, factors[task], data)
        index["tasks"][name] = {"peft": f"peft/{name}"}
    if merge:
        for task, directory in _write_merged(model, folder / "merged", indices, factors, data):
            index["tasks"][model.task_objects[task].name]["merged"] = directory
    index["router"] = why_no_router(model) or "router"
    if index["router"] == "router":
        write_router_files(folder / "router", model, data)
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, default=str) + "\n")


def export_index(model: PHAModel, kind: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """``export.json`` before its ``tasks`` are filled in: the format, the backbone, the source (``extra``)."""
    return {
        "format": f"pha-{kind}-export",
        "library_version": pha_lightning.__version__,
        "backbone": model.config.backbone,
        "base_model_name_or_path": model.config.backbone,
        "method": model.config.method,
        "tasks": {},
        **extra,
    }


def _write_adapter(model: PHAModel, directory: Path, task: int, factors: Factors, data: Mapping[str, Any]) -> None:
    """One peft adapter directory: config, factors, head, model card."""
    directory.mkdir(parents=True)
    config = peft_config(model, list(factors))
    (directory / PEFT_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file(peft_state(factors), str(directory / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    write_head_and_card(model, directory, task, data, "peft")


def write_head_and_card(model: PHAModel, directory: Path, task: int, data: Mapping[str, Any], kind: str) -> None:
    """The task's head file (encoders) and its model card (``kind`` of :data:`CARD_KINDS`) in ``directory``."""
    head = head_state(model, task)
    if head is not None:
        save_file(head[0], str(directory / HEAD_NAME), metadata=head[1])
    (directory / CARD_NAME).write_text(model_card(model, task, data, kind))


def _write_merged(
    model: PHAModel, folder: Path, indices: list[int], factors: dict[int, Factors], data: Mapping[str, Any]
) -> list[tuple[int, str]]:
    """A full transformers checkpoint per task with its LoRA updates merged into the base weights."""
    dtype = next(model.backbone.parameters()).dtype
    name = model.config.backbone
    auto = backbone_class(name)
    base = from_hub(name, "weights", lambda path: auto.from_pretrained(path, dtype=dtype)).eval()
    originals = {path: base.get_submodule(path).weight.detach().clone() for path in factors[indices[0]]}
    written = []
    for task in indices:
        merge_factors(base, originals, factors[task], model.config.lora_alpha / model.config.lora_rank)
        directory = folder / model.task_objects[task].name
        base.save_pretrained(directory)
        model.tokenizer.save_pretrained(directory)
        write_head_and_card(model, directory, task, data, "merged")
        written.append((task, f"merged/{model.task_objects[task].name}"))
    return written


def merge_factors(base: nn.Module, originals: Mapping[str, Tensor], factors: Factors, scaling: float) -> None:
    """Set each adapted weight of ``base`` to ``W + scaling·B·A`` (``W`` from ``originals``), as peft merges."""
    with torch.no_grad():
        for path, (a, b) in factors.items():
            weight = base.get_submodule(path).weight
            weight.copy_(originals[path] + (b.to(weight) @ a.to(weight)) * scaling)


# ---------------------------------------------------------------------------------------- model card
#: per kind of export: its title, the card's ``library_name`` and tag, and what it holds
CARD_KINDS: dict[str, tuple[str, str, str]] = {
    "peft": ("peft LoRA adapter", "peft", "lora"),
    "merged": ("merged checkpoint", "transformers", "merged-lora"),
    "adapterhub": ("AdapterHub parallel bottleneck adapter", "adapter-transformers", "adapterhub:par_bn"),
}


def model_card(model: PHAModel, task: int, data: Mapping[str, Any], kind: str) -> str:
    """The README of an exported task (``kind`` of :data:`CARD_KINDS`): what it is, how to load it,
    the input format, the outputs."""
    spec, config = model.task_objects[task], model.config
    base = config.backbone
    max_length = data.get("max_source_length", 128)
    title, library, tag = CARD_KINDS[kind]
    front = ["---", f"base_model: {json.dumps(base)}", f"library_name: {library}"]
    front += ["tags:", "- pha-lightning", f"- {tag}", "---", ""]
    adapters = (
        f"LoRA r={config.lora_rank}, alpha={config.lora_alpha}"
        if model.layout.kind == "lora"
        else f"bottleneck adapters of width {config.adapter_dim}"
    )
    lines = [
        f"# {spec.name}: {title} exported by pha-lightning {pha_lightning.__version__}",
        "",
        f"Task `{spec.name}` of a `{config.method}` model ({adapters}) on the frozen backbone `{base}`. "
        + _what_it_computes(config.method),
        "",
        "## Input",
        "",
        input_format(model, spec) + f" `max_length` was {max_length} in training.",
        "",
        "## Load",
        "",
        "```python",
        *_load_lines(model, base, kind),
        "```",
        "",
        *_output_lines(model, task),
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


def _load_lines(model: PHAModel, base: str, kind: str) -> list[str]:
    auto = "AutoModelForSeq2SeqLM" if model.family == "seq2seq" else "AutoModel"
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


def _output_lines(model: PHAModel, task: int) -> list[str]:
    spec = model.task_objects[task]
    if model.family == "seq2seq":
        answer = (
            "a number with one decimal"
            if spec.is_regression
            else "one of " + ", ".join(f"`{word}`" for word in spec.label_names)
        )
        return [
            "## Output",
            "",
            f"Greedy `generate` (at most {model.config.generation_max_length} tokens) writes the answer as text: {answer}.",
        ]
    head = head_state(model, task)
    pooling = (
        "pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)"
        if model.config.head_pooling == "mean"
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
        f"The task's head is in `{HEAD_NAME}` (not a Hugging Face head): the {model.config.head_pooling} of the final "
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
