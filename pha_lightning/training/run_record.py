"""The reproducibility record of a run (``<log_dir>/run_record.json``): what a result needs beside its
``config.yaml`` to be rerun or explained later. The code's commit (and whether the checkout had
uncommitted changes) when the package runs from a git checkout, the versions of the packages that
change numbers, the command line, and the machine's accelerator. Written once, at the start of ``fit``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer

from pha_lightning.files import atomic_write_text
from pha_lightning.training.outputs import log_artifacts, run_folder

RECORD_FILE = "run_record.json"
#: the distributions whose versions change a run's numbers or its files (those installed are recorded)
KEY_PACKAGES: tuple[str, ...] = (
    "pha-lightning",
    "torch",
    "lightning",
    "transformers",
    "tokenizers",
    "datasets",
    "torchmetrics",
    "jsonargparse",
    "safetensors",
    "numpy",
    "optuna",
    "mlflow",
    "wandb",
)


def _git(checkout: Path, *args: str) -> str | None:
    """``git <args>`` in ``checkout``; ``None`` when git is missing or it is not a checkout."""
    try:
        result = subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def code_version(source: Path = Path(__file__).resolve().parents[2]) -> dict[str, Any] | None:
    """The commit of the checkout the package runs from and whether tracked files differ from it
    (``None`` for an installed package outside a checkout)."""
    top = _git(source, "rev-parse", "--show-toplevel")
    if top is None or not (source / "pha_lightning").is_dir():
        return None
    changed = _git(source, "status", "--porcelain", "--untracked-files=no")
    return {"checkout": top, "commit": _git(source, "rev-parse", "HEAD"), "dirty": bool(changed)}


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    """The installed version of each of ``names`` (those not installed are left out)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def accelerator(trainer: Trainer) -> dict[str, Any]:
    """The accelerator the trainer runs on, the devices' names and the host."""
    found: dict[str, Any] = {
        "accelerator": type(trainer.accelerator).__name__,
        "devices": trainer.num_devices,
        "nodes": trainer.num_nodes,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(trainer.precision),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda
        found["gpus"] = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return found


def run_record(trainer: Trainer, command: list[str] | None) -> dict[str, Any]:
    """Everything :data:`RECORD_FILE` holds; ``command``: the command line (default: the process's)."""
    return {
        "command": list(sys.argv if command is None else command),
        "code": code_version(),
        "packages": package_versions(),
        "machine": accelerator(trainer),
    }


def write_run_record(trainer: Trainer, command: list[str] | None) -> Path | None:
    """Write the record into the trainer's log folder (global rank 0; every rank must call: ``log_dir``
    is a collective under DDP)."""
    log_dir = run_folder(trainer)
    if not trainer.is_global_zero:
        return None
    text = json.dumps(run_record(trainer, command), indent=1) + "\n"
    path = atomic_write_text(Path(log_dir) / RECORD_FILE, text, "run record")
    log_artifacts(trainer, [path], log_dir)
    return path
