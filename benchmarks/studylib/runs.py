"""Launching ``pha`` commands for a study, and what a finished run left on disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: the checkout the benchmarks belong to
ROOT = Path(__file__).resolve().parents[2]


def pha_command() -> list[str]:
    """The ``pha`` entry point of this Python (its venv), else the one on ``PATH``."""
    script = shutil.which("pha", path=str(Path(sys.executable).parent)) or shutil.which("pha")
    if script is None:
        raise SystemExit("the pha command is not installed: pip install -e . (or make install)")
    return [script]


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() or "unknown"


def run_logged(cmd: list[str], log: Path, what: str) -> None:
    """Run a ``pha`` command offline with its output appended to ``log`` (a resumed run continues
    its log); a failure names ``what`` and the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        result = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}); see {log}")


def best_checkpoint(root: Path) -> Path:
    """The run's best checkpoint: the one monitored checkpoint it keeps (``last*.ckpt`` are the
    latest states, not the best). Two would mean two best-checkpoint records in one run folder."""
    kept = [p for p in sorted(root.rglob("*.ckpt")) if not p.name.startswith("last")]
    if len(kept) != 1:
        raise SystemExit(f"expected one best checkpoint under {root}, found {[str(p) for p in kept] or 'none'}")
    return kept[0]


class OldTree:
    """``git worktree add`` of ``commit`` into a temporary directory, removed on exit: the older
    code a benchmark measures beside this tree's."""

    def __init__(self, commit: str) -> None:
        self.commit = commit
        self.path = Path(tempfile.mkdtemp(prefix="pha-old-")) / "tree"

    def __enter__(self) -> Path:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(self.path), self.commit],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        return self.path

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["git", "worktree", "remove", "--force", str(self.path)], cwd=ROOT, check=False)
