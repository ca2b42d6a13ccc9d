"""``last.ckpt`` is the latest state, even when validation stopped improving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from pha_lightning.training.callbacks import LatestCheckpoint


class WorseEveryValidation(BoringModel):
    """Its monitored score falls at every validation, so the best checkpoint is the first one."""

    def on_validation_epoch_end(self) -> None:
        self.log("val/avg", -float(self.trainer.global_step))


def fit(callback: ModelCheckpoint) -> None:
    trainer = Trainer(
        accelerator="cpu",
        max_steps=6,
        val_check_interval=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(WorseEveryValidation())


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.parametrize(("cls", "last_step"), [(LatestCheckpoint, 6), (ModelCheckpoint, 2)])
def test_last_checkpoint_is_the_latest_validation(cls: type[ModelCheckpoint], last_step: int, tmp_path: Path) -> None:
    fit(cls(dirpath=tmp_path, monitor="val/avg", mode="max", save_last=True, filename="{step}"))
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt", "step=2.ckpt"]
    assert step_of(tmp_path / "step=2.ckpt") == 2
    # Lightning's own class (the control) leaves the best state in last.ckpt
    assert step_of(tmp_path / "last.ckpt") == last_step


def test_latest_checkpoint_keeps_the_best_for_resuming(tmp_path: Path) -> None:
    callback = LatestCheckpoint(dirpath=tmp_path, monitor="val/avg", mode="max", save_last=True, filename="{step}")
    fit(callback)
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)["callbacks"]
    (saved,) = (v for k, v in state.items() if k.startswith("LatestCheckpoint"))
    assert Path(saved["best_model_path"]).name == "step=2.ckpt" and float(saved["best_model_score"]) == -2.0
