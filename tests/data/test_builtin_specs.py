"""The built-in GLUE/SuperGLUE tasks are spec files shipped as package data, parsed by the one schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pha_lightning.cli.tasks import source_of
from pha_lightning.data.benchmark import BenchmarkTask
from pha_lightning.data.catalog import benchmark_tasks, builtin_specs, get_task, resolve_tasks
from pha_lightning.data.kinds import KINDS
from pha_lightning.data.schema import parse_spec
from pha_lightning.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
BENCHMARK_TASKS = {
    *("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"),
    *("boolq", "cb", "copa", "multirc", "superglue_rte", "wic", "wsc"),
}


def test_every_benchmark_task_is_a_spec_file_found_as_a_package_resource() -> None:
    folder = resources.files("pha_lightning.data").joinpath("builtin")
    names = {entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml")}
    assert names == BENCHMARK_TASKS
    assert {spec.name for spec in builtin_specs()} == BENCHMARK_TASKS
    assert set(benchmark_tasks("glue")) | set(benchmark_tasks("superglue")) == BENCHMARK_TASKS


def test_the_tasks_that_need_code_name_their_kind() -> None:
    kinds = {spec.name: spec.kind for spec in builtin_specs() if spec.kind}
    assert kinds == {"copa": "copa", "multirc": "multirc", "wic": "wic", "wsc": "wsc"}
    assert all(type(get_task(name)) is KINDS[kind] for name, kind in kinds.items())
    assert type(get_task("rte")) is BenchmarkTask


def test_a_builtin_spec_round_trips_through_the_schema() -> None:
    for spec in builtin_specs():
        assert parse_spec(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"meanings": ["a", "b"]}, r"\['meanings'\] describe a benchmark's official files: give them with a protocol"),
        ({"kind": "wsc"}, r"\['kind'\] describe a benchmark's official files: give them with a protocol"),
        ({"kind": "copy"}, r"unknown kind 'copy'; valid: \['copa', 'multirc', 'wic', 'wsc'\]"),
        ({"protocol": "tiny"}, r"unknown protocol 'tiny'; valid: \['small', 'large', 'mnli'\]"),
    ],
)
def test_benchmark_keys_outside_a_benchmark_are_named(extra: dict, message: str) -> None:
    raw = {"name": "mine", "inputs": ["text"], "labels": ["a", "b"], "files": {"train": "t.csv"}, **extra}
    with pytest.raises(ConfigError, match=message):
        parse_spec(raw)


def test_a_benchmark_spec_with_a_bad_column_map_is_named() -> None:
    raw = yaml.safe_load(resources.files("pha_lightning.data").joinpath("builtin/mrpc.yaml").read_text("utf-8"))
    raw["column_map"]["tsv"]["sentence3"] = "#3 String"
    with pytest.raises(ConfigError, match=r"task spec 'mrpc': unknown column_map.tsv keys \['sentence3'\]"):
        parse_spec(raw)


@pytest.mark.slow  # builds the wheel
def test_an_installed_wheel_has_the_builtin_tasks(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a clean copy: no build folder of an earlier build may supply the files
    shutil.copytree(REPO / "pha_lightning", source / "pha_lightning", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    subprocess.run([*pip, str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = (
        "import pha_lightning; from pha_lightning.data.catalog import get_task; "
        "print(pha_lightning.__file__); print(get_task('mnli').spec.hub.splits['dev'])"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=tmp_path
    )
    where, split = out.stdout.split()
    assert Path(where).is_relative_to(tmp_path / "site") and split == "validation_matched"


def test_a_users_task_can_follow_an_official_protocol(tmp_path: Path) -> None:
    """The schema is one: a user's spec with a protocol reads its official files like a built-in task."""
    header = "id\ttext\tverdict\n"
    (tmp_path / "train.tsv").write_text(header + "".join(f"{i}\tgood {i}\tyes\n" for i in range(4)), "utf-8")
    (tmp_path / "dev.tsv").write_text(header + "".join(f"{i}\tbad {i}\tno\n" for i in range(6)), "utf-8")
    spec = {
        "name": "verdicts",
        "inputs": ["text"],
        "meanings": ["no", "yes"],
        "label_encoding": "word",
        "protocol": "small",
        "benchmark": "glue",
        "files": {"train": "train.tsv", "dev": "dev.tsv"},
        "column_map": {"tsv": {"label": "verdict"}},
    }
    (task,) = resolve_tasks(["verdicts"], [spec])
    splits = task.load_splits(["train", "validation", "test"], source="local", data_dir=str(tmp_path), data_seed=3)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [4, 3, 3]
    assert splits["train"][1] == {"text": "good 1", "label": 1, "idx": 1}
    assert sorted(r["text"] for s in ("validation", "test") for r in splits[s]) == [f"bad {i}" for i in range(6)]
    with pytest.raises(DataError, match=r"task 'verdicts': its spec names no hub dataset split for its train split"):
        task.load_official("train", "hub")
    data = SimpleNamespace(source_options=lambda: {"source": "local", "data_dir": "/d"})
    assert source_of(task, data) == "spec, official protocol, local /d"  # what pha tasks --config says
    assert source_of(get_task("rte"), data) == "built-in, local /d"
