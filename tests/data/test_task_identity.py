"""The identity gate of the task catalogue: every built-in task reads the same records, shows the model
the same inputs and targets, declares the same label spaces and lists the same in ``pha tasks`` as
the code that recorded ``task_fingerprints.json`` (tests/task_fingerprints.py says how)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from glue_fixtures import write_files
from task_fingerprints import (
    SHARED_DATA,
    hub_fingerprints,
    listing,
    local_fingerprints,
    synthetic_fingerprints,
    task_properties,
)

RECORDED = json.loads((Path(__file__).parent / "task_fingerprints.json").read_text(encoding="utf-8"))


def test_fixture_files_give_the_recorded_records() -> None:
    with tempfile.TemporaryDirectory() as folder:
        assert local_fingerprints(write_files(Path(folder))) == RECORDED["fixture_files"]


def test_hub_stand_ins_give_the_recorded_records() -> None:
    assert hub_fingerprints() == RECORDED["hub_stand_ins"]


def test_synthetic_suite_gives_the_recorded_records() -> None:
    assert synthetic_fingerprints() == RECORDED["synthetic"]


def test_every_task_declares_what_it_declared() -> None:
    assert task_properties() == RECORDED["properties"]


def test_pha_tasks_lists_the_same() -> None:
    assert listing() == RECORDED["pha_tasks"]


@pytest.mark.slow  # reads every genuine GLUE/SuperGLUE file
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no local benchmark data at {SHARED_DATA}")
def test_the_genuine_files_give_the_recorded_records() -> None:
    assert local_fingerprints(SHARED_DATA) == RECORDED["shared_files"]
