"""Per-task exports of bottleneck-adapter models on BERT in AdapterHub's format (``adapters``' ``par_bn``).

On a BERT encoder our adapter is ``ReLU(x·W_down + b_down)·W_up + b_up`` on the feed-forward
sublayer's input ``x`` (the attention block's normalised output), added beside the FFN before the
block's output LayerNorm: ``LN(x + Dropout(FFN(x)) + Adapter(x))``. AdapterHub's parallel bottleneck
adapter (``ParBnConfig``: ``is_parallel``, ReLU, no LayerNorm or gating of its own) reads the same
input, adds ``scaling·up(ReLU(down(x)))`` to the FFN's output and applies the block's LayerNorm to
that plus the residual: with ``scaling`` 1.0 it is ours exactly. On T5 they differ (AdapterHub's
adapter reads the residual stream before the RMSNorm, ours the normalised input), so T5 is refused.
The files are written here: ``adapters`` is not imported (docs/production.md, "Serve a task with
AdapterHub").
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from pha_lightning.errors import ConfigError
from pha_lightning.files import atomic_directory
from pha_lightning.hub import load_backbone_config
from pha_lightning.model.adapters import GeneratedAdapter, GeneratedWeights, SharedAdapter
from pha_lightning.model.backbone import adapter_sites
from pha_lightning.model.peft_export import INDEX_NAME, export_index, prepare_export, write_head_and_card

if TYPE_CHECKING:
    from pha_lightning.model.pha import PHAModel

ADAPTERHUB_CONFIG_NAME = "adapter_config.json"
ADAPTERHUB_WEIGHTS_NAME = "adapter.safetensors"
#: the ``adapters`` release whose file layout is written (and which tests/model/test_adapterhub_export.py loads)
ADAPTERHUB_FORMAT = "adapters.1.3.0"
#: backbones whose mapping is checked against ``adapters``
ADAPTERHUB_MODEL_TYPES = ("bert",)

#: a block's adapter in ``nn.Linear`` layout: ``down.weight (r, d)``, ``down.bias``, ``up.weight (d, r)``, ``up.bias``
BlockAdapter = tuple[Tensor, Tensor, Tensor, Tensor]


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
    reduction_factor(model)


def reduction_factor(model: PHAModel) -> int | float:
    """AdapterHub's ``reduction_factor``: the bottleneck is ``int(hidden_size // reduction_factor)`` wide."""
    d, r = model.d_model, model.config.adapter_dim
    factor: int | float = d // r if d % r == 0 else d / r
    if int(d // factor) != r:
        raise ConfigError(
            f"AdapterHub sizes the bottleneck as int(hidden_size // reduction_factor); no factor gives adapter_dim "
            f"{r} for hidden size {d}"
        )
    return factor


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


def adapterhub_state(name: str, blocks: Sequence[BlockAdapter]) -> dict[str, Tensor]:
    """``adapters``' keys for a ``BertModel``: ``encoder.layer.<i>.output.adapters.<name>.adapter_down.0.weight`` …"""
    state = {}
    for i, (down_w, down_b, up_w, up_b) in enumerate(blocks):
        prefix = f"encoder.layer.{i}.output.adapters.{name}."
        state |= {
            prefix + "adapter_down.0.weight": down_w,
            prefix + "adapter_down.0.bias": down_b,
            prefix + "adapter_up.weight": up_w,
            prefix + "adapter_up.bias": up_b,
        }
    return state


def adapterhub_config(model: PHAModel, name: str) -> dict[str, Any]:
    """``adapter_config.json``: a ``ParBnConfig`` with ``scaling`` 1.0 and this model's bottleneck width."""
    bottleneck = {
        "adapter_residual_before_ln": False,
        "cross_adapter": False,
        "dropout": 0.0,
        "init_weights": "mam_adapter",
        "init_weights_seed": None,
        "inv_adapter": None,
        "inv_adapter_reduction_factor": None,
        "is_parallel": True,
        "leave_out": [],
        "ln_after": False,
        "ln_before": False,
        "mh_adapter": False,
        "non_linearity": "relu",
        "original_ln_after": True,
        "original_ln_before": False,
        "output_adapter": True,
        "phm_layer": False,
        "reduction_factor": reduction_factor(model),
        "residual_before_ln": True,
        "scaling": 1.0,
        "stochastic_depth": 0.0,
        "use_gating": False,
    }
    return {
        "config": bottleneck,
        "hidden_size": model.d_model,
        "model_class": "BertModel",
        "model_name": model.config.backbone,  # portable: resolve_backbone_path maps pypi: names to a path
        "model_type": "bert",
        "name": name,
        "version": ADAPTERHUB_FORMAT,
    }


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
    ``export.json`` index, atomically into ``output_dir``."""
    check_adapterhub_exportable(model)
    indices, output_dir, data = prepare_export(model, output_dir, tasks, overwrite, data)
    return atomic_directory(
        output_dir, lambda folder: _write(model, folder, indices, data, dict(extra or {})), "export"
    )


def _write(model: PHAModel, folder: Path, indices: list[int], data: dict[str, Any], extra: dict[str, Any]) -> None:
    index = export_index(model, "adapterhub", extra)
    for task in indices:
        name = model.task_objects[task].name
        directory = folder / "adapterhub" / name
        directory.mkdir(parents=True)
        config = adapterhub_config(model, name)
        (directory / ADAPTERHUB_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file(adapterhub_state(name, task_adapters(model, task)), str(directory / ADAPTERHUB_WEIGHTS_NAME))
        write_head_and_card(model, directory, task, data, "adapterhub")
        index["tasks"][name] = {"adapterhub": f"adapterhub/{name}"}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, default=str) + "\n")
