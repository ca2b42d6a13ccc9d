"""Run by the cluster tests inside `pha fit` under SLURM: each rank writes what Lightning made of the
SLURM environment to ``<dirpath>/rank<global rank>-restart<SLURM_RESTART_COUNT>.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch import Callback

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURMD_NODENAME", "SLURM_NTASKS")


class RecordEnvironment(Callback):
    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        environment = trainer.strategy.cluster_environment
        row = {
            "cluster_environment": type(environment).__name__,
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "main_address": environment.main_address,
            "default_root_dir": str(Path(trainer.default_root_dir).resolve()),
            "start_step": trainer.global_step,
            **{name: os.environ.get(name) for name in SLURM_VARIABLES},
        }
        self.dirpath.mkdir(parents=True, exist_ok=True)
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        (self.dirpath / f"rank{trainer.global_rank}-restart{restart}.json").write_text(json.dumps(row))
