"""Per-task exports of bottleneck-adapter models on BERT in AdapterHub's format (``adapters``' ``par_bn``).

On a BERT encoder our adapter is ``ReLU(x·W_down + b_down)·W_up + b_up`` on the feed-forward
sublayer's input ``x`` (the attention block's normalised output), added beside the FFN before the
block's output LayerNorm: ``LN(x + Dropout(FFN(x)) + Adapter(x))``. AdapterHub's parallel bottleneck
adapter (``ParBnConfig``: ``is_parallel``, ReLU, no LayerNorm or gating of its own) reads the same
input, adds ``scaling·up(ReLU(down(x)))`` to the FFN's output and applies the block's LayerNorm to
that plus the residual: with ``scaling`` 1.0 it is ours exactly. On T5 they differ (AdapterHub's
adapter reads the residual stream before the RMSNorm, ours the normalised input), so T5 is refused.
The weights come from the model (:func:`pha_lightning.model.exports.write_adapterhub_export`); the
files are written here: ``adapters`` is not imported (docs/production.md, "Serve a task with
AdapterHub").
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from pha_lightning.errors import ConfigError
from pha_lightning.files import atomic_directory
from pha_lightning.formats.bundle import check_output_dir
from pha_lightning.formats.task_export import ExportedModel, export_index, write_head_and_card, write_index

ADAPTERHUB_CONFIG_NAME = "adapter_config.json"
ADAPTERHUB_WEIGHTS_NAME = "adapter.safetensors"
#: the ``adapters`` release whose file layout is written (and which tests/model/test_adapterhub_export.py loads)
ADAPTERHUB_FORMAT = "adapters.1.3.0"
#: backbones whose mapping is checked against ``adapters``
ADAPTERHUB_MODEL_TYPES = ("bert",)

#: a block's adapter in ``nn.Linear`` layout: ``down.weight (r, d)``, ``down.bias``, ``up.weight (d, r)``, ``up.bias``;
#: an :class:`~pha_lightning.formats.task_export.ExportedTask`'s ``weights`` here are one per block
BlockAdapter = tuple[Tensor, Tensor, Tensor, Tensor]


def reduction_factor(hidden_size: int, adapter_dim: int) -> int | float:
    """AdapterHub's ``reduction_factor``: the bottleneck is ``int(hidden_size // reduction_factor)`` wide."""
    d, r = hidden_size, adapter_dim
    factor: int | float = d // r if d % r == 0 else d / r
    if int(d // factor) != r:
        raise ConfigError(
            f"AdapterHub sizes the bottleneck as int(hidden_size // reduction_factor); no factor gives adapter_dim "
            f"{r} for hidden size {d}"
        )
    return factor


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


def adapterhub_config(exported: ExportedModel, name: str) -> dict[str, Any]:
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
        "reduction_factor": reduction_factor(exported.hidden_size, exported.adapter_dim),
        "residual_before_ln": True,
        "scaling": 1.0,
        "stochastic_depth": 0.0,
        "use_gating": False,
    }
    return {
        "config": bottleneck,
        "hidden_size": exported.hidden_size,
        "model_class": "BertModel",
        "model_name": exported.backbone,  # portable: resolve_backbone_path maps pypi: names to a path
        "model_type": "bert",
        "name": name,
        "version": ADAPTERHUB_FORMAT,
    }


def write_adapterhub_files(
    exported: ExportedModel,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``adapterhub/<task>/`` (config, weights, head, card) for every task of ``exported`` and an
    ``export.json`` index, atomically into ``output_dir``."""
    output_dir = check_output_dir(output_dir, overwrite)
    return atomic_directory(output_dir, lambda folder: _write(exported, folder, dict(extra or {})), "export")


def _write(exported: ExportedModel, folder: Path, extra: dict[str, Any]) -> None:
    index = export_index(exported, "adapterhub", extra)
    for task in exported.tasks:
        name = task.spec.name
        directory = folder / "adapterhub" / name
        directory.mkdir(parents=True)
        config = adapterhub_config(exported, name)
        (directory / ADAPTERHUB_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file(adapterhub_state(name, task.weights), str(directory / ADAPTERHUB_WEIGHTS_NAME))
        write_head_and_card(exported, directory, task, "adapterhub")
        index["tasks"][name] = {"adapterhub": f"adapterhub/{name}"}
    write_index(folder, index)
