"""The reproducibility record of a run: commit and dirty state, package versions, command line, accelerator."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import torch
from lightning.pytorch import Trainer

import pha_lightning
from pha_lightning.training.run_record import RECORD_FILE, code_version, write_run_record

CHECKOUT = Path(pha_lightning.__file__).resolve().parents[1]


def _git(*args: str, cwd: Path = CHECKOUT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_record_names_the_commit_versions_command_and_accelerator(tmp_path: Path) -> None:
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    path = write_run_record(trainer, ["pha", "fit", "--trainer.max_steps=3"])
    record = json.loads(path.read_text())
    assert path == tmp_path / RECORD_FILE
    assert record["command"] == ["pha", "fit", "--trainer.max_steps=3"]
    assert record["code"]["commit"] == _git("rev-parse", "HEAD")
    assert record["code"]["dirty"] == bool(_git("status", "--porcelain", "--untracked-files=no"))
    assert record["packages"]["torch"] == metadata.version("torch") == torch.__version__
    assert record["packages"]["lightning"] == metadata.version("lightning")
    assert record["packages"]["pha-lightning"] == metadata.version("pha-lightning")
    assert record["machine"]["accelerator"] == "CPUAccelerator" and record["machine"]["devices"] == 1
    assert path.stat().st_size < 4000  # small


def test_dirty_state_follows_the_checkout(tmp_path: Path) -> None:
    """A copy of the package in a fresh repository: clean after the commit, dirty after an edit."""
    repo = tmp_path / "repo"
    (repo / "pha_lightning").mkdir(parents=True)
    (repo / "pha_lightning" / "x.py").write_text("a = 1\n")
    _git("init", "-q", cwd=repo)
    _git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "0", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "1", cwd=repo)
    assert code_version(repo) == {"checkout": str(repo), "commit": _git("rev-parse", "HEAD", cwd=repo), "dirty": False}
    (repo / "pha_lightning" / "x.py").write_text("a = 2\n")
    assert code_version(repo)["dirty"] is True
    assert code_version(tmp_path / "elsewhere") is None
