"""Checkpoints and bundles as inputs to a run: do they fit the configuration, which one is ``last``.

Reading a checkpoint or bundle and checking its format is :mod:`pha_lightning.formats`; here:

* :func:`check_compatible` compares the architecture a checkpoint or bundle was trained with (tasks,
  backbone, method, the settings that decide the weights' shapes) with what the configuration asks
  for (the saved weights' shapes are checked against a built model by
  :func:`~pha_lightning.formats.state.check_state_fits`);
* :func:`resolve_last_checkpoint` finds the checkpoint furthest along (highest global step; any
  ``*.ckpt``: step, ``last``, SLURM ``hpc_ckpt_*``) under a run directory, across the TensorBoard
  logger's ``version_*`` folders, which Lightning's own ``ckpt_path="last"`` does not search (each
  new run gets a new version folder).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from pha_lightning.errors import ConfigError
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.hub import backbone_fingerprint
from pha_lightning.model.config import ARCHITECTURE_KEYS
from pha_lightning.model.methods import weights_of

#: Architecture settings besides tasks and backbone that decide which weights a model has and their shapes.
STRUCTURE_KEYS: tuple[str, ...] = ("method", *ARCHITECTURE_KEYS)


def _same_backbone(saved: str, asked: str, source: str) -> None:
    if saved == asked:
        return
    saved_arch, asked_arch = backbone_fingerprint(saved), backbone_fingerprint(asked)
    if saved_arch is not None and asked_arch is not None and saved_arch != asked_arch:
        differ = {
            k: (saved_arch.get(k), asked_arch.get(k))
            for k in saved_arch.keys() | asked_arch.keys()
            if saved_arch.get(k) != asked_arch.get(k)
        }
        raise ConfigError(
            f"{source} was trained on backbone {saved!r} but the configuration asks for {asked!r}, a different "
            f"model ({', '.join(f'{k}: {a!r} vs {b!r}' for k, (a, b) in sorted(differ.items()))}); "
            f"use --model.arch.backbone={saved}"
        )
    if asked_arch is None:
        return  # loading the asked backbone will report it
    # same architecture under another name (a moved local copy), or the saved one is not here to compare:
    # the weights' shapes are still checked when they are loaded (check_state_fits)
    rank_zero_warn(f"{source} was trained on backbone {saved!r}; using {asked!r} instead as the configuration asks")


def _same_task_specs(saved: list | None, asked: list | None, source: str) -> None:
    """A spec task must keep its inputs, labels and template: the weights were trained on them."""
    if asked is None:
        return
    before = {spec["name"]: spec for spec in saved or ()}
    for spec in asked:
        old = before.get(spec["name"])
        if old is None or old == spec:
            continue
        key = sorted(k for k in old.keys() | spec.keys() if old.get(k) != spec.get(k))[0]
        raise ConfigError(
            f"{source} was trained on task {spec['name']!r} with {key}={old.get(key)!r}, but its spec in "
            f"data.task_specs now says {key}={spec.get(key)!r}; a trained task keeps its spec"
        )


def check_compatible(saved: Mapping[str, Any], asked: Mapping[str, Any], source: str, transfer: bool = False) -> None:
    """Raise :class:`ConfigError` if the architecture a checkpoint or bundle was trained with,
    ``saved`` (a :class:`PHAConfig` dict), cannot serve the one the configuration asks for, ``asked``.

    Tasks must match in order (their positions are the task ids of prototype rows and heads), the
    backbone must be the same model, and the method and architecture settings equal (or the method one
    with the same weights: an ``arrow`` model serves a ``task_lora`` checkpoint). A transfer
    model (``transfer``) takes its architecture from its source checkpoint, so for it only tasks,
    backbone and method are compared. Keys ``asked`` lacks are not compared.
    """
    if asked.get("tasks") is not None and list(asked["tasks"]) != list(saved["tasks"]):
        raise ConfigError(
            f"{source} was trained on tasks {list(saved['tasks'])}, but the configuration asks for "
            f"{list(asked['tasks'])} (data.tasks); the task order fixes the task ids, so they must match exactly"
        )
    _same_task_specs(saved.get("task_specs"), asked.get("task_specs"), source)
    if asked.get("backbone") is not None:
        _same_backbone(saved["backbone"], asked["backbone"], source)
    for key in ("method",) if transfer else STRUCTURE_KEYS:
        if key in asked and key in saved and not _same_setting(key, asked[key], saved[key]):
            raise ConfigError(
                f"{source} was trained with model.arch.{key}={saved[key]!r}, but the configuration asks for "
                f"{asked[key]!r}; drop the option or use --model.arch.{key}={saved[key]}"
            )


def _same_setting(key: str, asked: Any, saved: Any) -> bool:
    """Whether a saved architecture setting serves the asked one (a method: one with its weights)."""
    return weights_of(asked) == weights_of(saved) if key == "method" else asked == saved


def checkpoint_files(root: str | os.PathLike) -> list[Path]:
    """Every checkpoint (``*.ckpt``: step, best, ``last``, SLURM ``hpc_ckpt``) anywhere under ``root``;
    temporaries of writes in progress (hidden, ``.tmp``) are none."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [p for p in root.rglob("*.ckpt") if p.is_file() and not p.name.startswith(".")]


def checkpoint_step(path: Path) -> int | None:
    """The global step a checkpoint was saved at, or ``None`` when it cannot be read (cut short, or
    not a checkpoint). Memory-mapped, so its tensors are not read; a legacy (pre-zip) file cannot
    be mapped and is read whole."""
    for mmap in (True, False):
        try:
            return int(torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)["global_step"])
        except Exception:  # any damage: this file is not a candidate, the others still are
            continue
    return None


def resolve_last_checkpoint(root: str | os.PathLike, dirpath: str | os.PathLike | None = None) -> str | None:
    """The resumable checkpoint of a run that is furthest along, or ``None`` when there is none yet.

    ``dirpath`` (``checkpoint.dirpath``) is searched when set, and every folder under ``root``
    (``trainer.default_root_dir``: the logger's ``version_*`` folders, SLURM's ``hpc_ckpt_*.ckpt``).
    Every complete checkpoint takes part, not only ``last.ckpt``: a run killed after writing a step
    checkpoint but before rewriting ``last.ckpt`` resumes from that step. The highest global step
    wins; among equal steps, the most recently written file. Unreadable files are skipped with a
    warning; when every one is unreadable, reading the newest reports what is wrong with it.
    """
    candidates = set(checkpoint_files(dirpath) if dirpath else []) | set(checkpoint_files(root))
    if not candidates:
        return None
    steps = {path: checkpoint_step(path) for path in candidates}
    readable = [path for path, step in steps.items() if step is not None]
    if not readable:
        newest = str(max(candidates, key=lambda p: p.stat().st_mtime_ns))
        read_checkpoint(newest)  # reports what is wrong with it
        raise ConfigError(f"checkpoint {newest!r} records no global step: it is no pha fit checkpoint to resume")
    for path in sorted(set(candidates) - set(readable)):
        rank_zero_warn(f"ckpt_path=last: skipping {path}, which cannot be read as a checkpoint (cut short?)")
    return str(max(readable, key=lambda p: (steps[p], p.stat().st_mtime_ns)))
