"""Few-shot transfer to a new task: the models and data of one transfer run, shared by the
transfer study (``few_shot_transfer.py``) and what a transfer costs the source tasks
(``transfer_source_cost.py``). A run's settings are the scripts' parsed arguments: ``task_specs``,
``backbone``, ``data_dir``, ``max_source_length``, ``lr``, ``tune`` and the source checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from pha_lightning.data.catalog import get_task, parse_specs, portable_specs
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.settings import OptimConfig
from pha_lightning.training.system import PHAModule
from pha_lightning.training.transfer import TransferConfig

PHA_INITS = {"pha_top1": "top1", "pha_mix": "mix", "pha_mean": "mean", "pha_random": "random"}


def read_config_specs(path: Path) -> list[dict]:
    """The ``data.task_specs`` of a pha config file, checked as ``pha fit`` checks them."""
    specs = (yaml.safe_load(path.read_text()) or {}).get("data", {}).get("task_specs") or []
    parse_specs(specs)
    return specs


def target_arch(target: str, args: argparse.Namespace, **settings: object) -> PHAConfig:
    """The architecture of a model for ``target`` (its portable spec when it is a spec task)."""
    return PHAConfig(tasks=[target], task_specs=portable_specs(args.task_specs, [target]), **settings)


def build_model(variant: str, target: str, args: argparse.Namespace) -> PHAModule:
    """A PHA transfer (``pha_<init>``), a HyperFormer transfer or a fresh model of method ``variant``."""
    optim = OptimConfig(learning_rate=args.lr, warmup_steps=0)
    if variant in PHA_INITS:
        transfer = TransferConfig(args.pha_ckpt, init=PHA_INITS[variant], tune=args.tune)
        return PHAModule(target_arch(target, args), optim=optim, transfer=transfer)
    if variant == "hyperformer":
        transfer = TransferConfig(args.hyperformer_ckpt, init="random", tune=args.tune)
        return PHAModule(target_arch(target, args, method="hyperformer"), optim=optim, transfer=transfer)
    return PHAModule(target_arch(target, args, backbone=args.backbone, method=variant), optim=optim)


def target_data(target: str, k: int, seed: int, args: argparse.Namespace, **options: object) -> PHADataModule:
    """The target's data module: its k support examples (drawn by ``seed``) and its test split."""
    return PHADataModule(
        tasks=[target],
        task_specs=[spec for spec in args.task_specs if spec["name"] == target] or None,
        backbone=args.backbone,
        n_train=k,
        seed=seed,
        max_source_length=args.max_source_length,
        **data_options(target, args),
        **options,
    )


def data_options(target: str, args: argparse.Namespace) -> dict:
    """Where the target's data comes from; a target without a local train file (BoolQ) draws its
    k support examples from its validation half, which is disjoint from its test half."""
    if not args.data_dir:
        return {}
    if any(spec["name"] == target for spec in args.task_specs):
        return {"data_dir": args.data_dir}  # a spec says itself where its splits come from
    task = get_task(target)
    no_train = getattr(task, "reads_external_data", False) and not task.has_local("train", args.data_dir)
    return {"data_dir": args.data_dir, **({"train_from_validation": [target]} if no_train else {})}
