"""``last.ckpt`` is the latest state, even when validation stopped improving."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from pha_lightning.training.callbacks import LatestCheckpoint
from pha_lightning.training.scripting import quiet_trainer


class WorseEveryValidation(BoringModel):
    """Its monitored score falls at every validation, so the best checkpoint is the first one."""

    def on_validation_epoch_end(self) -> None:
        self.log("val/avg", -float(self.trainer.global_step))


def fit(callback: ModelCheckpoint, max_steps: int = 6, root: Path | None = None, ckpt_path: Path | None = None) -> None:
    """Without ``root``, no logger (so ``callback`` needs a dirpath); with it, a new logger version."""
    trainer = quiet_trainer(
        max_steps=max_steps,
        val_check_interval=2,
        limit_val_batches=1,
        logger=CSVLogger(root) if root else False,
        callbacks=[callback],
    )
    trainer.fit(WorseEveryValidation(), ckpt_path=ckpt_path)


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


@pytest.mark.parametrize(("cls", "best_step"), [(LatestCheckpoint, 2), (ModelCheckpoint, 4)])
def test_resuming_without_dirpath_keeps_the_best(cls: type[ModelCheckpoint], best_step: int, tmp_path: Path) -> None:
    """A run resumed without ``dirpath`` starts a new logger version; its best checkpoint must
    still be the best of the whole run. Lightning's own class, the control, resumes from its
    last.ckpt (step 2) and takes the next, worse, validation at step 4 as the best."""
    first = cls(monitor="val/avg", mode="max", save_last=True, filename="{step}")
    fit(first, root=tmp_path)
    folder = Path(first.dirpath)
    assert folder == tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    resumed = cls(monitor="val/avg", mode="max", save_last=True, filename="{step}")
    fit(resumed, max_steps=10, root=tmp_path, ckpt_path=folder / "last.ckpt")
    assert (tmp_path / "lightning_logs" / "version_1").is_dir()
    assert step_of(Path(resumed.best_model_path)) == best_step
    if cls is LatestCheckpoint:
        assert Path(resumed.dirpath) == folder and float(resumed.best_model_score) == -2.0
        assert step_of(folder / "last.ckpt") == 10


@pytest.mark.parametrize(("cls", "best_step"), [(LatestCheckpoint, 2), (ModelCheckpoint, 4)])
def test_a_copied_run_folder_resumes_with_its_best(cls: type[ModelCheckpoint], best_step: int, tmp_path: Path) -> None:
    """A run folder copied elsewhere (another worktree) and resumed there with ``dirpath`` set to
    the copy keeps its best checkpoint and score; Lightning's class, the control, sees another
    folder than the saved one, forgets them and writes ``last-v1.ckpt`` beside the copied files."""
    first = cls(dirpath=tmp_path / "a", monitor="val/avg", mode="max", save_last=True, filename="{step}")
    fit(first, max_steps=4)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    resumed = cls(dirpath=tmp_path / "b", monitor="val/avg", mode="max", save_last=True, filename="{step}")
    fit(resumed, max_steps=8, ckpt_path=tmp_path / "b" / "last.ckpt")
    assert step_of(Path(resumed.best_model_path)) == best_step
    if cls is LatestCheckpoint:
        assert Path(resumed.best_model_path) == tmp_path / "b" / "step=2.ckpt"
        assert float(resumed.best_model_score) == -2.0
        assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["last.ckpt", "step=2.ckpt"]
        assert step_of(tmp_path / "b" / "last.ckpt") == 8
        assert step_of(tmp_path / "a" / "last.ckpt") == 4  # the original is left alone
    else:
        assert "last-v1.ckpt" in {p.name for p in (tmp_path / "b").iterdir()}


def test_a_moved_run_folder_without_dirpath_keeps_writing_there(tmp_path: Path) -> None:
    first = LatestCheckpoint(monitor="val/avg", mode="max", save_last=True, filename="{step}")
    fit(first, max_steps=4, root=tmp_path / "old")
    (tmp_path / "old").rename(tmp_path / "new")
    folder = tmp_path / "new" / "lightning_logs" / "version_0" / "checkpoints"
    resumed = LatestCheckpoint(monitor="val/avg", mode="max", save_last=True, filename="{step}")
    fit(resumed, max_steps=8, root=tmp_path / "new", ckpt_path=folder / "last.ckpt")
    assert Path(resumed.dirpath) == folder and Path(resumed.best_model_path) == folder / "step=2.ckpt"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step=2.ckpt"]
    assert step_of(folder / "last.ckpt") == 8
