"""Route raw examples to tasks, without Lightning: ``Router.from_pretrained(path).route(examples)``.

A router answers, for each example that names no task, which task it belongs to and how sure it is
(a calibrated probability), or ``None`` when it abstains (docs/routing.md). It loads the
``router/`` directory of a peft export (the shared lower adapters, the retriever, the prototypes,
the calibration: :mod:`pha_lightning.model.router`) or a whole bundle, and its answers are ready
for peft's ``adapter_names=``::

    router = Router.from_pretrained("served/router")
    routes = router.route([{"sentence": "a gripping, beautifully shot film"}])  # [("sst2", 0.97)] or [(None, 0.41)]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from pha_lightning.errors import ConfigError
from pha_lightning.files import atomic_directory
from pha_lightning.formats.bundle import check_output_dir, is_bundle
from pha_lightning.model.calibration import Decision
from pha_lightning.model.pha import PHAModel
from pha_lightning.model.prediction import example_batches, route_batch
from pha_lightning.model.router import CONFIG_NAME, load_router_model, write_router_files


class Router:
    """Routes examples as ``model`` does for those that name no task (:meth:`PHAModel.predict`)."""

    def __init__(self, model: PHAModel) -> None:
        if model.calibration is None:
            raise ConfigError(
                "this model has no routing calibration (trained before routing was calibrated), so it cannot say how "
                "sure a routing is or abstain; retrain it, or use PHAModel.predict (nearest prototype, with a note)"
            )
        self.model = model.eval()
        self.tasks = [task.name for task in model.task_objects]

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, backbone: str | None = None) -> Router:
        """A ``router/`` directory (``pha export --format peft``), the export holding one, or a bundle."""
        path = Path(path)
        if (path / "router" / CONFIG_NAME).is_file():
            path = path / "router"
        if is_bundle(path) and not (path / "router.safetensors").exists():
            return cls(PHAModel.from_pretrained(path, backbone=backbone))
        return cls(load_router_model(PHAModel, path, backbone)[0])

    def decisions(
        self, examples: Iterable[Mapping[str, Any]], batch_size: int = 32, max_source_length: int | None = None
    ) -> list[Decision]:
        """Every example's :class:`~pha_lightning.model.calibration.Decision`, with the reason of an abstention."""
        examples = [{k: v for k, v in example.items() if k not in ("task", "label")} for example in examples]
        found: dict[int, Decision] = {}
        with torch.no_grad():
            for batch in example_batches(self.model, examples, batch_size, max_source_length):
                indices = [meta["index"] for meta in batch["meta"]]
                found.update(zip(indices, route_batch(self.model, batch)))
        return [found[i] for i in range(len(examples))]

    def route(
        self, examples: Iterable[Mapping[str, Any]], batch_size: int = 32, max_source_length: int | None = None
    ) -> list[tuple[str | None, float]]:
        """``(task or None, confidence)`` per raw example, in input order; a ``task`` or ``label``
        an example carries is ignored (routing reads the text alone)."""
        return [
            (None if d.task is None else self.tasks[d.task], d.confidence)
            for d in self.decisions(examples, batch_size, max_source_length)
        ]

    def save_pretrained(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the router directory (the ``router/`` of a peft export)."""
        data = (self.model.bundle_config or {}).get("data")
        return atomic_directory(
            check_output_dir(path, overwrite), lambda folder: write_router_files(folder, self.model, data), "router"
        )
