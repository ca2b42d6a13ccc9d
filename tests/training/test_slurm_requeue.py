"""SLURM's pre-emption signal arriving mid-step (the batch handed to the training step, so counted as
consumed, not yet trained): `SlurmRequeue` checkpoints the completed step, consistent with the
sampler position, and requeues the job. Lightning's own handler saved the half-done step there:
the weights of step N with the position of step N + 1, so the resumed run skipped a batch.
In-process, with SLURM's environment variables and a stub `scontrol`; the real scheduler is in
tests/cluster/test_slurm_cluster.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.callbacks import SlurmRequeue
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.settings import OptimConfig
from pha_lightning.training.system import PHAModule

pytestmark = pytest.mark.slow  # trains a few steps

TASKS = ["synth_polarity", "synth_match"]
SIGNAL_AT = 2


class _SignalMidStep(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == SIGNAL_AT:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture
def slurm_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SLURM's variables for a one-task job 4242, and an `scontrol` that records its arguments."""
    calls = tmp_path / "scontrol_calls"
    stub = tmp_path / "bin" / "scontrol"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    for name, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "pha",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    previous = signal.getsignal(signal.SIGUSR1)
    yield calls
    signal.signal(signal.SIGUSR1, previous)


def test_signal_mid_step_checkpoints_the_completed_step_and_requeues(slurm_job: Path, tmp_path: Path) -> None:
    data = PHADataModule(tasks=TASKS, n_train=16, batch_size=4, eval_batch_size=8, max_source_length=32)
    model = PHAModule(PHAConfig(tasks=TASKS), optim=OptimConfig(warmup_steps=0))
    trainer = quiet_trainer(
        max_steps=5,
        limit_val_batches=0,
        enable_checkpointing=False,
        default_root_dir=tmp_path / "run",
        callbacks=[SlurmRequeue(), _SignalMidStep()],
    )
    trainer.fit(model, datamodule=data)
    (saved,) = (tmp_path / "run").glob("hpc_ckpt_*.ckpt")
    assert saved.name == "hpc_ckpt_1.ckpt"
    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)
    # the step the signal interrupted was completed first; weights and data position agree
    assert checkpoint["global_step"] == SIGNAL_AT + 1
    position = checkpoint["PHADataModule"]["train_sampler"]
    assert (position["epoch"], position["batches_consumed"]) == (0, SIGNAL_AT + 1)
    assert slurm_job.read_text().splitlines() == ["requeue 4242"]
