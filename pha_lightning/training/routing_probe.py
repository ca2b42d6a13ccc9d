"""Routing by a linear probe fitted on unlabelled training texts (``model.routing.unlabelled_per_task``,
docs/routing.md): the draw of texts, their pooled hidden states, the fit and its calibration, and
the refit of a saved checkpoint (``pha calibrate``, and the end of ``pha fit``).

Routing needs only which task a text came from, and each task's training split holds far more
texts than the labelled ones a low-data run trains on. The probe
(:class:`~pha_lightning.model.calibration.RoutingProbe`) scores the mean hidden state at the
retrieval point; it is calibrated on validation as the nearest-prototype rule is, while the novelty
floor stays on the prototype cosine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pha_lightning.data.datamodule import PHADataModule, longest_first, recorded_data_module
from pha_lightning.errors import ConfigError
from pha_lightning.files import atomic_write
from pha_lightning.formats.bundle import is_bundle
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.model.calibration import Calibration, RoutingConfig, RoutingProbe, calibrate
from pha_lightning.model.pha import PHAModel
from pha_lightning.model.prediction import no_router_error, retrieval_batches, routes


def verbatim(data: PHADataModule) -> set[tuple[int, ...]]:
    """The token ids of every validation and test input of ``data`` (set up for ``fit`` and ``test``)."""
    return {
        tuple(ids) for split in ("validation", "test") for loader in data.task_dataloaders(split)
        for ids in loader.dataset["input_ids"]
    }  # fmt: skip


def unlabelled_draw(
    full: PHADataModule, seen: set[tuple[int, ...]], start: int, stop: int, seed: int
) -> tuple[list[DataLoader], dict[str, list[int]]]:
    """Per task, rows ``start:stop`` of its whole training split (``full``: the data settings with
    every training row) shuffled with ``seed`` (so a longer draw extends a shorter one), less those
    whose input appears verbatim in ``seen`` (validation or test); and, per task, how many rows were
    drawn and how many of them were dropped so."""
    loaders, counts = [], {"drawn": [], "dropped": []}
    for loader in full.task_dataloaders("train"):
        rows = loader.dataset.shuffle(seed=seed)
        rows = rows.select(list(range(start, min(stop, len(rows)))))
        keep = [i for i, ids in enumerate(rows["input_ids"]) if tuple(ids) not in seen]
        counts["drawn"].append(len(rows))
        counts["dropped"].append(len(rows) - len(keep))
        kept = longest_first(rows.select(keep))
        loaders.append(DataLoader(kept, batch_size=loader.batch_size, shuffle=False, collate_fn=full.collator()))
    return loaders, counts


@torch.no_grad()
def pooled_features(model: PHAModel, loaders: list[DataLoader]) -> tuple[Tensor, Tensor, Tensor]:
    """The pooled hidden states at the retrieval point, the prototype cosines and the task ids of the
    loaders' examples (one retrieval pass each)."""
    features, similarity, ids = [], [], []
    for z, pooled, task_ids in retrieval_batches(model, loaders, pool=True):
        features.append(pooled.cpu())
        similarity.append(model.retrieval_scores(z).double().cpu())
        ids.append(task_ids.cpu())
    return torch.cat(features), torch.cat(similarity), torch.cat(ids)


def check_routable(model: PHAModel) -> None:
    """Routing can be calibrated on ``model``'s own tasks: it has a router and no tasks added by transfer."""
    if not routes(model):
        raise no_router_error(model.config.method)
    if model.num_added_tasks or (model.calibration is not None and model.calibration.added_tasks):
        raise ConfigError(
            "this model has tasks added by few-shot transfer, which route on the source's calibration "
            "(docs/routing.md); calibrate the source model instead"
        )


def calibrate_model(model: PHAModel, data: PHADataModule, config: RoutingConfig) -> Calibration:
    """``model``'s routing calibration on the validation split of ``data`` (set up for ``fit``): by
    the prototype cosines (``unlabelled_per_task`` 0, as ``pha fit`` calibrates after each
    validation), or by a probe fitted on up to ``unlabelled_per_task`` training texts per task."""
    check_routable(model)
    model.eval()
    names = [task.name for task in model.task_objects]
    if data.tasks != names:
        raise ConfigError(f"the data's tasks {data.tasks} are not the model's {names}, in its order")
    features, similarity, targets = pooled_features(model, data.task_dataloaders("validation"))
    if not config.unlabelled_per_task:
        return calibrate(similarity, targets, names, config)
    probe, fit = fit_routing_probe(model, data, config)
    calibration = calibrate(probe.scores(features), targets, names, config, similarity=similarity)
    calibration.probe, calibration.probe_fit = probe, fit
    return calibration


def fit_routing_probe(
    model: PHAModel, data: PHADataModule, config: RoutingConfig
) -> tuple[RoutingProbe, dict[str, Any]]:
    """The probe fitted on the unlabelled draw of ``config.unlabelled_per_task`` texts per task from
    ``data``'s settings with every training row, and how it was fitted."""
    full = recorded_data_module(data.hparams, ("fit", "test"), n_train=None, percent_train=None)
    n = config.unlabelled_per_task
    loaders, counts = unlabelled_draw(full, verbatim(full), 0, n, config.probe_seed)
    features, _, ids = pooled_features(model, [loader for loader in loaders if len(loader.dataset)])
    probe = RoutingProbe.fit(
        features, ids, len(data.tasks), config.probe_weight_decay, config.probe_steps, config.probe_seed
    )
    kept = [drawn - dropped for drawn, dropped in zip(counts["drawn"], counts["dropped"])]
    fit = {
        "unlabelled_per_task": n,
        "texts": len(ids),
        "per_task": dict(zip(data.tasks, kept)),
        "dropped_verbatim": dict(zip(data.tasks, counts["dropped"])),
        "weight_decay": config.probe_weight_decay,
        "seed": config.probe_seed,
        "steps": config.probe_steps,
    }
    return probe, fit


def calibrate_checkpoint(
    ckpt_path: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    data_dir: str | None = None,
    output: str | os.PathLike | None = None,
) -> Calibration:
    """Refit the routing calibration of a training checkpoint on its own data settings (``data_dir``
    replacing the recorded folder) with the routing settings it recorded, ``overrides`` replacing
    some (``model.routing`` names), and write the checkpoint, its routing and its recorded routing
    settings replaced, to ``output`` (default: in place)."""
    from pha_lightning.training.system import load_system  # the system imports this module's callers

    if is_bundle(ckpt_path):
        raise ConfigError(
            f"{str(ckpt_path)!r} is a bundle; routing is refitted on a training checkpoint (it needs the data settings "
            "it recorded): calibrate the checkpoint the bundle was exported from, then export it again"
        )
    checkpoint = read_checkpoint(str(ckpt_path))
    settings = checkpoint.get("datamodule_hyper_parameters")
    if not settings:
        raise ConfigError(f"{str(ckpt_path)!r} records no data settings: it was not written by pha fit")
    config = RoutingConfig(**{**(checkpoint["hyper_parameters"].get("routing") or {}), **(overrides or {})})
    model = load_system(checkpoint).model
    place = {} if data_dir is None else {"data_dir": data_dir}
    data = recorded_data_module(settings, ("fit",), **place)
    calibration = calibrate_model(model, data, config)
    checkpoint["pha_routing"] = calibration.to_dict(with_tensors=True)
    checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "routing": asdict(config)}
    atomic_write(Path(output or ckpt_path), lambda file: torch.save(checkpoint, file), "checkpoint")
    return calibration
