"""Where a run writes, safely: a version folder of its own, checkpoints that are whole or absent.

* :class:`AtomicCheckpointIO` — the ``pha`` command's checkpoint writer: every checkpoint file
  (step, best, ``last.ckpt``, SLURM ``hpc_ckpt``) is written to a temporary sibling, flushed and
  renamed, so a run killed mid-write leaves the previous checkpoints intact and no partial file
  under a checkpoint's name; a full disk is one error naming the file.
* :class:`RunLogger` — Lightning's TensorBoard logger, but the ``version_N`` folder is claimed with
  an atomic ``mkdir`` when the logger is built, so two runs started at once in one
  ``trainer.default_root_dir`` get two folders instead of sharing (and overwriting) one.
* :func:`log_artifacts` — a run's files (config, health report, run record, retrieval pictures)
  sent to the loggers that keep files: MLflow's artifact store and W&B's run files.
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from pha_lightning.files import atomic_write, reported_write

VERSION_PATTERN = re.compile(r"version_(\d+)")


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local files are written to a temporary name and renamed into place.

    Lightning's own writer commits through a temporary file in the system's temp directory, which
    is a copy, not a rename, when that is another file system; remote paths keep its behaviour."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            with reported_write(path, "checkpoint"):
                super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_write(path, lambda file: torch.save(checkpoint, file), "checkpoint")

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        with reported_write(path, "checkpoint (removing an old one)"):
            super().remove_checkpoint(path)


def claim_version(folder: str | os.PathLike) -> int:
    """The next free ``version_N`` under ``folder``, created here: ``mkdir`` fails for every run
    but one, so concurrent runs never share a number."""
    folder = Path(folder)
    with reported_write(folder, "the run's log folder"):
        folder.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for p in folder.iterdir() if (m := VERSION_PATTERN.fullmatch(p.name))]
        version = max(taken, default=-1) + 1
        while True:
            try:
                (folder / f"version_{version}").mkdir()
                return version
            except FileExistsError:
                version += 1


class RunLogger(TensorBoardLogger):
    """TensorBoardLogger that claims its version folder when built (see :func:`claim_version`).

    Only the global-rank-zero process claims (the others' logger writes nothing); an explicit
    ``version`` is used as given."""

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        if version is None and rank_zero_only.rank == 0:
            version = claim_version(Path(save_dir) / (name or ""))
        super().__init__(save_dir, name=name, version=version, **kwargs)

    def _writing(self) -> AbstractContextManager[None]:
        return reported_write(self.log_dir, "the run's TensorBoard logs under")

    @property
    def experiment(self) -> Any:
        """The SummaryWriter; it opens its event file when made, so a full disk shows here first."""
        with self._writing():
            return super().experiment

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        with self._writing():
            super().log_metrics(metrics, step)

    def save(self) -> None:
        with self._writing():
            super().save()

    def finalize(self, status: str) -> None:
        with self._writing():
            super().finalize(status)


def run_folder(trainer: Trainer) -> str:
    """Where the run's own files go: the logger's folder, or ``trainer.default_root_dir`` for a logger
    that keeps none locally (MLflow with a tracking server). A collective under DDP: every rank calls."""
    return trainer.log_dir or trainer.default_root_dir


def log_artifacts(trainer: Trainer, paths: list[Path], run_dir: str | os.PathLike) -> None:
    """Send files written under the run folder ``run_dir`` to each logger that stores files, at their
    path relative to it (global rank 0 only). TensorBoard and CSV loggers keep the run folder itself."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        for path in paths:
            relative = Path(path).absolute().relative_to(Path(run_dir).absolute()).parent
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path), None if relative == Path() else str(relative))
            elif isinstance(logger, WandbLogger):
                logger.experiment.save(str(path), base_path=str(run_dir), policy="now")
