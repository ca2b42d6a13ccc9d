"""Checks of user inputs that would otherwise fail late, deep inside a run, or half-way through a write."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pha_lightning.errors import ConfigError, DataError
from pha_lightning.tasks import Task


def check_targets(task: Task, values: Sequence[float], split: str) -> list[float]:
    """Every target must lie in the task's label space: a class index ``0..n-1`` (classification) or
    a finite number (regression). A bad one is reported with its position instead of surfacing as
    an index error in the loss, or as a silently wrong metric."""
    bad = []
    for index, value in enumerate(values):
        if task.is_regression:
            ok = isinstance(value, (int, float)) and math.isfinite(value)
        else:
            ok = isinstance(value, (int, float)) and math.isfinite(value) and float(value).is_integer() and 0 <= value < task.num_labels
        if not ok:
            bad.append((index, value))
    if bad:
        index, value = bad[0]
        space = "a finite number" if task.is_regression else f"a class index in 0..{task.num_labels - 1} ({list(task.label_names)})"
        raise DataError(
            f"task {task.name!r}, {split} split: {len(bad)} of {len(values)} labels lie outside its label space "
            f"(each must be {space}); e.g. record {index} has {value!r}"
        )
    return list(values)


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create ``path`` if needed and prove a file can be written in it; a clear error otherwise."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".pha-write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to {what} {str(path)!r}: {err.strerror or err}") from None
    return path
