"""A checkpoint or bundle given as ``--ckpt_path``: what it was trained with, and whether it serves.

``pha predict --ckpt_path X --data.predict_file in.jsonl`` needs no config: the checkpoint's or
bundle's record supplies the defaults of ``data.*`` and ``model.*`` (:func:`saved_defaults`);
explicit options and configs still win, and a mismatch with what the record says is then one error
(:func:`check_saved`). ``--ckpt_path last`` is the run's checkpoint furthest along
(:func:`~pha_lightning.training.checkpoints.resolve_last_checkpoint`). Reading the files is
:mod:`pha_lightning.formats`'; :class:`~pha_lightning.cli.app.PHACLI` calls these hooks.
"""

from __future__ import annotations

import os
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_info

from pha_lightning.cli.checks import MODEL_GROUPS
from pha_lightning.data.catalog import portable_specs
from pha_lightning.errors import ConfigError
from pha_lightning.formats.bundle import is_bundle, read_bundle_config
from pha_lightning.formats.checkpoint import read_checkpoint, served_hyper_parameters
from pha_lightning.training.checkpoints import check_compatible, resolve_last_checkpoint

#: Data settings a checkpoint's or bundle's record never supplies: the backbone (linked from the model),
#: the record's own keys, and where to write: a recorded cache is the exporting machine's, not this one's.
DATA_NOT_FROM_RECORD: tuple[str, ...] = ("backbone", "_instantiator", "cache_dir")

#: ``ckpt_path`` values Lightning resolves itself (``last`` is resolved here, across version folders)
LIGHTNING_CKPT_NAMES = ("best", "hpc")


def read_saved(path: str) -> dict[str, Any]:
    """What a checkpoint or bundle was trained with (``kind``, ``hyper_parameters``, ``data``, and
    ``served``: a transferred model as the plain one it holds); a clear error for a corrupt one."""
    if is_bundle(path) or os.path.isdir(path):
        config = read_bundle_config(path)
        hyper_parameters = {"arch": config["config"]}
        saved = {"kind": "bundle", "hyper_parameters": hyper_parameters, "served": hyper_parameters}
        return saved | {"data": config.get("data", {}), "config": config, "path": path}
    checkpoint = read_checkpoint(path)
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    saved = {"kind": "checkpoint", "hyper_parameters": checkpoint["hyper_parameters"], "data": data}
    return saved | {"served": served_hyper_parameters(checkpoint), "path": path}


def saved_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """The ``model.*`` and ``data.*`` defaults a checkpoint or bundle supplies (link targets take none)."""
    served = saved["served"]
    linked = {"tasks", "task_specs", "retriever", "generation_max_length"}
    defaults = {
        f"model.{group}.{key}": value
        for group in MODEL_GROUPS
        for key, value in (served.get(group) or {}).items()
        if not (group == "arch" and key in linked)
    }
    defaults.update({f"data.{k}": v for k, v in saved["data"].items() if k not in DATA_NOT_FROM_RECORD})
    # the model's tasks, which a transferred model's run did not list (its source's, behind the new ones)
    defaults["data.tasks"] = served["arch"]["tasks"]
    specs = served_specs(saved["data"].get("task_specs"), served["arch"].get("task_specs"))
    if specs:
        defaults["data.task_specs"] = specs
    return defaults


def served_specs(data_specs: list[dict] | None, model_specs: list[dict] | None) -> list[dict] | None:
    """``data.task_specs`` for a saved model: the run's specs (with their files), and the model's portable
    specs of the spec tasks the run did not list (a bundle's, or a transferred model's source tasks)."""
    listed = {spec["name"] for spec in data_specs or ()}
    specs = [*(data_specs or ()), *(spec for spec in model_specs or () if spec["name"] not in listed)]
    return specs or None


def resolve_ckpt_path(config: Namespace) -> str | None:
    """The command's ``ckpt_path``, with ``last`` resolved across the run's version folders and SLURM
    ``hpc_ckpt`` files (``None``: no checkpoint there yet, the run starts from scratch)."""
    ckpt_path = config.get("ckpt_path")
    if ckpt_path == "last":
        root = config.trainer.get("default_root_dir") or os.getcwd()
        ckpt_path = resolve_last_checkpoint(root, config.get("checkpoint", {}).get("dirpath"))
        if ckpt_path is None:
            rank_zero_info(f"ckpt_path=last: no checkpoint under {root} yet; starting from scratch")
    return ckpt_path


def check_saved(saved: dict[str, Any], config: Namespace, subcommand: str, ckpt_path: str) -> None:
    """A checkpoint or bundle must fit the command: a bundle does not resume training, a transfer
    checkpoint resumes with its transfer settings, and it was trained on the tasks, backbone, method and
    architecture the configuration asks for."""
    if saved["kind"] == "bundle" and subcommand == "fit":
        raise ConfigError(
            f"{ckpt_path!r} is an adapter bundle: it holds no optimizer or loop state to resume training "
            "from; resume from a checkpoint (.ckpt)"
        )
    if subcommand == "fit" and saved["hyper_parameters"].get("transfer") and not config.model.get("transfer"):
        raise ConfigError(
            f"{ckpt_path!r} is a few-shot transfer checkpoint: its training resumes with the run's transfer "
            "settings (model.transfer); give the run's config.yaml (--config), which holds them"
        )
    arch = config.model.arch
    asked = arch.as_dict() if hasattr(arch, "as_dict") else dict(arch)
    asked["tasks"] = list(config.data.tasks)
    asked["task_specs"] = portable_specs(config.data.get("task_specs"), config.data.tasks, config.data.get("data_dir"))
    # a transferred model is served as the plain model it holds unless the run's transfer settings are given
    saved_hp = saved["hyper_parameters"] if config.model.get("transfer") else saved["served"]
    transfer = bool(saved_hp.get("transfer") or config.model.get("transfer"))
    check_compatible(saved_hp["arch"], asked, f"{saved['kind']} {ckpt_path!r}", transfer=transfer)
