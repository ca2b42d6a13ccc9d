"""The router directory (``router/`` of a peft export, or :meth:`pha_lightning.routing.Router.save_pretrained`).

Everything routing needs and nothing else: ``config.json`` (the architecture as a
:class:`PHAConfig`, the backbone record, the tasks, the input settings, the routing calibration
and the SHA-256 of the weights), ``router.safetensors`` (the shared adapters or LoRA factors of
the blocks before the retrieval point, the retriever, the prototypes) and, when routing scores by
a probe (``model.routing.unlabelled_per_task``), ``routing_probe.safetensors``. The blocks after the
retrieval point never run while routing, so their generated adapters are not needed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from pha_lightning.errors import ConfigError
from pha_lightning.files import sha256_of
from pha_lightning.formats.bundle import (
    BundleError,
    backbone_record,
    check_backbone,
    read_format_config,
    read_routing_probe,
    read_tensors,
    task_spec,
    write_routing_probe,
)
from pha_lightning.formats.state import check_state_complete, check_state_fits
from pha_lightning.model.calibration import Calibration
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.prediction import no_router_error, routes
from pha_lightning.version import __version__

if TYPE_CHECKING:
    from pha_lightning.model.pha import PHAModel

ROUTER_FORMAT = "pha-router"
ROUTER_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "router.safetensors"


def routing_state(model: PHAModel) -> dict[str, Tensor]:
    """The weights that compute routing scores: shared adapters (or LoRA), retriever, prototypes."""
    parts = [model.shared_adapters, model.retriever, model.prototypes]
    wanted = {id(p) for part in parts for p in part.parameters()}
    return {name: p.detach() for name, p in model.named_parameters() if id(p) in wanted}


def why_no_router(model: PHAModel) -> str | None:
    """Why ``model`` cannot be exported as a router (``None``: it can)."""
    if not routes(model):
        return str(no_router_error(model.config.method))
    if model.calibration is None:
        return (
            "this model has no routing calibration (trained before routing was calibrated): a router without one "
            "could not abstain; retrain it to export its router"
        )
    return None


def write_router_files(folder: Path, model: PHAModel, data: Mapping[str, Any] | None = None) -> None:
    """Create ``folder`` and write ``router.safetensors`` and ``config.json`` into it."""
    reason = why_no_router(model)
    if reason is not None:
        raise ConfigError(reason)
    folder.mkdir(parents=True, exist_ok=True)
    state = routing_state(model)
    if "prototypes.added" in state:  # a transfer's rows, in front: one table, as in a bundle
        state["prototypes.weight"] = torch.cat([state.pop("prototypes.added"), state["prototypes.weight"]])
    weights = {k: v.to("cpu").contiguous() for k, v in state.items()}
    save_file(weights, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "pha_router": str(ROUTER_VERSION)})
    files = {WEIGHTS_NAME: sha256_of(folder / WEIGHTS_NAME)} | write_routing_probe(
        folder, model.calibration.probe_tensors()
    )
    config = model.config.to_dict()
    record = {
        "format": ROUTER_FORMAT,
        "format_version": ROUTER_VERSION,
        "library": "pha-lightning",
        "library_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": importlib.metadata.version("transformers"),
        "backbone": backbone_record(config["backbone"], config.get("backbone_init", "pretrained")),
        "tasks": [task_spec(task) for task in model.task_objects],
        "config": config,
        "data": {"max_source_length": (data or {}).get("max_source_length")},
        "routing": model.calibration.to_dict(),
        "files": files,
    }
    (folder / CONFIG_NAME).write_text(json.dumps(record, indent=2, default=str) + "\n")


def read_router_config(path: str | os.PathLike) -> dict[str, Any]:
    """A router directory's ``config.json``, checked for format."""
    return read_format_config(Path(path), ROUTER_FORMAT, "pha router", f", expected {ROUTER_FORMAT!r}")


def load_router_model(
    cls: type[PHAModel], path: str | os.PathLike, backbone: str | None = None
) -> tuple[PHAModel, dict[str, Any]]:
    """The model a router directory routes with (its routing weights loaded, in eval mode) and its config."""
    record = read_router_config(path)
    name = backbone or record["config"]["backbone"]
    check_backbone(record, name, path, given=backbone is not None)
    model = cls(PHAConfig.from_dict({**record["config"], "backbone": name}))
    state = read_tensors(Path(path) / WEIGHTS_NAME, record["files"].get(WEIGHTS_NAME))
    source = f"router {str(path)!r}"
    check_state_fits(state, model.state_dict(), source)
    check_state_complete(state, routing_state(model), source, BundleError)
    model.load_state_dict(state, strict=False)
    model.calibration = Calibration.from_dict(record["routing"], read_routing_probe(path, record))
    model.bundle_config = {"data": record["data"]}
    return model.eval(), record
