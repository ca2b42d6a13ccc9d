"""Fingerprints of every built-in task's records, formatted inputs and listing: the identity gate of
refactors of the data package (tests/data/test_task_identity.py compares them with the recorded ones).

A fingerprint is the sha256 of the canonical JSON (sorted keys, no spaces) of a split's records,
and of what the model sees of them (encoder text pair, text-to-text source and target, metric
group). Sources: the genuine files of ``<shared>/data`` (when present), the tiny fixture files in
each benchmark's format (tests/glue_fixtures.py), the hub stand-ins the tests use, and the
generated synthetic suite; plus the output of ``pha tasks``.

Record the expectations (with the code to compare against) by running, from the repository root::

    PYTHONPATH=. python tests/task_fingerprints.py tests/data/task_fingerprints.json
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import datasets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from glue_fixtures import EXPECTED, hub_dataset, write_files  # noqa: E402

#: The genuine benchmark files: ``../shared/data`` seen from the repository root (as the other tests
#: that read them), or ``$PHA_TEST_SHARED_DATA`` (a worktree elsewhere).
SHARED_DATA = Path(os.environ.get("PHA_TEST_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
BENCHMARK_TASKS = (
    *("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"),
    *("boolq", "cb", "copa", "multirc", "superglue_rte", "wic", "wsc"),
)
OFFICIAL_SPLITS = ("train", "dev", "dev_mismatched")
SPLITS = ("train", "validation", "test")


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(task: Any, records: list[dict] | datasets.Dataset) -> dict[str, Any]:
    """Rows, records' hash and the hash of the model's view of them (inputs, targets, groups); a table's
    records are its rows."""
    records = records if isinstance(records, list) else records.to_list()
    seen = [
        [list(task.encoder_text(r)), task.seq2seq_source(r), task.seq2seq_target(r), task.group_of(r)] for r in records
    ]
    return {"rows": len(records), "records": digest(records), "inputs": digest(seen)}


def _splits_from(task: Any, load: Callable[[str], list[dict]]) -> dict[str, Any]:
    """Fingerprints of every official split ``load`` can read (a missing file is skipped)."""
    from pha_lightning.errors import ConfigError, DataError

    out = {}
    for official in OFFICIAL_SPLITS:
        try:
            out[f"official/{official}"] = fingerprint(task, load(official))
        except (ConfigError, DataError):
            continue
    return out


def _protocol(task: Any, **options: Any) -> dict[str, Any]:
    """Fingerprints of the protocol splits (both settings of split_validation_test), where they can be built."""
    from pha_lightning.errors import DataError

    out = {}
    for halves in (True, False):
        try:
            loaded = task.load_splits(SPLITS, split_validation_test=halves, data_seed=42, **options)
        except DataError:
            continue
        for split in SPLITS:
            out[f"protocol/{split}/halves={halves}"] = fingerprint(task, loaded[split])
    return out


def local_fingerprints(data_dir: Path) -> dict[str, Any]:
    from pha_lightning.data.catalog import get_task

    out = {}
    for name in BENCHMARK_TASKS:
        task = get_task(name)
        found = _splits_from(task, lambda official: task.load_official(official, "local", data_dir))
        found |= _protocol(task, source="local", data_dir=str(data_dir))
        out[name] = found
    return out


def hub_fingerprints() -> dict[str, Any]:
    """Records of the hub stand-ins the tests use (tests/glue_fixtures.py: hub-shaped datasets of EXPECTED)."""
    from pha_lightning.data.catalog import get_task

    out: dict[str, Any] = {}
    for (name, official), records in sorted(EXPECTED.items()):
        with mock.patch.object(datasets, "load_dataset", lambda *a, **k: hub_dataset(name, records)):
            task = get_task(name)
            out.setdefault(name, {})[f"official/{official}"] = fingerprint(task, task.load_official(official, "hub"))
    return out


def synthetic_fingerprints() -> dict[str, Any]:
    from pha_lightning.data.catalog import available_tasks, get_task

    out = {}
    for name in available_tasks():
        if name.startswith("synth_"):
            task = get_task(name)
            loaded = task.load_splits(SPLITS)
            out[name] = {f"protocol/{split}": fingerprint(task, loaded[split]) for split in SPLITS}
    return out


def listing() -> str:
    """The output of ``pha tasks``."""
    from pha_lightning.cli.tasks import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([])
    return out.getvalue()


def task_properties() -> dict[str, Any]:
    """What every built-in task declares: label space, metrics, inputs, candidates, protocol."""
    from pha_lightning.data.catalog import available_tasks, get_task

    out = {}
    for name in available_tasks():
        task = get_task(name)
        out[name] = {
            "label_names": list(task.label_names),
            "class_names": list(task.class_names),
            "metric_names": list(task.metric_names),
            "source_fields": list(task.source_fields),
            "target_range": None if task.target_range is None else list(task.target_range),
            "num_labels": task.num_labels,
            "rank_candidates": list(task.rank_candidates()),
            "reads_external_data": task.reads_external_data,
            "protocol": getattr(task, "protocol", None),
            "label_space": task.label_space() if not task.is_regression else None,
        }
    return out


def record(shared: Path | None = SHARED_DATA) -> dict[str, Any]:
    """Every fingerprint; ``shared`` None (or absent) leaves the genuine files out."""
    with tempfile.TemporaryDirectory() as folder:
        fixtures = local_fingerprints(write_files(Path(folder)))
    out = {
        "fixture_files": fixtures,
        "hub_stand_ins": hub_fingerprints(),
        "synthetic": synthetic_fingerprints(),
        "properties": task_properties(),
        "pha_tasks": listing(),
    }
    if shared is not None and shared.is_dir():
        out["shared_files"] = local_fingerprints(shared)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.write_text(json.dumps(record(), indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {target}")
