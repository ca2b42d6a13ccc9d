"""The tokenised-data cache is found by its sources' identity before any row is read (issue 55, item 3),
and ``data.num_proc`` tokenises in several processes to the same tokens (item 4)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from glue_fixtures import write_files

from pha_lightning.data import spec_task, token_cache
from pha_lightning.data.benchmark import BenchmarkTask
from pha_lightning.data.catalog import get_task
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.errors import ConfigError

ROWS = 60


def counting(monkeypatch: pytest.MonkeyPatch, owner: object, reader: str) -> Counter:
    """How often ``owner.reader`` reads files into rows, and how many rows are tokenised."""
    counts: Counter = Counter()
    read, tokenize_columns = getattr(owner, reader), token_cache.tokenize_columns

    def counting_read(*args, **kwargs):
        counts["reads"] += 1
        return read(*args, **kwargs)

    def counting_tokenize(batch, *args, **kwargs):
        counts["tokenised"] += len(batch["source"])
        return tokenize_columns(batch, *args, **kwargs)

    monkeypatch.setattr(owner, reader, counting_read)
    monkeypatch.setattr(token_cache, "tokenize_columns", counting_tokenize)
    return counts


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How often a spec task's files are read, and how many rows are tokenised."""
    return counting(monkeypatch, spec_task, "read_table")


def write_rows(path: Path, labels: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": f"review number {i} was fine", "label": label}) + "\n"
                            for i, label in enumerate(labels)))  # fmt: skip


def built(tmp_path: Path, **settings) -> PHADataModule:
    spec = {"name": "reviews", "inputs": ["text"], "labels": ["neg", "pos"], "files": {"all": "rows.jsonl"}}
    data = PHADataModule(
        ["reviews"],
        task_specs=[spec],
        data_dir=str(tmp_path),
        cache_dir=str(tmp_path / "cache"),
        max_source_length=settings.pop("max_source_length", 32),
        **settings,
    )
    data.setup("fit")
    return data


def rows_of(data: PHADataModule) -> dict[str, list[dict]]:
    return {split: data.datasets[split][0].to_list() for split in ("train", "validation")}


@pytest.fixture
def rows_file(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    write_rows(path, ["neg", "pos"] * (ROWS // 2))
    return path


def test_an_unchanged_file_is_neither_read_nor_tokenised_again(rows_file: Path, counted: Counter) -> None:
    first = rows_of(built(rows_file.parent))
    assert counted == {"reads": 1, "tokenised": ROWS - 6}  # validation 6 and train 48 rows; test not set up
    counted.clear()
    assert rows_of(built(rows_file.parent)) == first
    assert counted == {}  # the cache was found before any row was read


def _same_size_new_time(path: Path) -> None:
    """Every label flipped (``neg`` and ``pos`` are as long), the modification time one second later."""
    before = path.stat()
    write_rows(path, ["pos", "neg"] * (ROWS // 2))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert path.stat().st_size == before.st_size


def _one_row_more(path: Path) -> None:
    write_rows(path, ["neg", "pos"] * (ROWS // 2) + ["pos"])


@pytest.mark.parametrize("change", [_same_size_new_time, _one_row_more], ids=["same_size_new_mtime", "new_size"])
def test_a_changed_file_is_read_and_tokenised_again(rows_file: Path, counted: Counter, change) -> None:
    first = rows_of(built(rows_file.parent))
    change(rows_file)
    counted.clear()
    second = rows_of(built(rows_file.parent))
    assert counted["reads"] == 1 and counted["tokenised"] >= ROWS - 6
    if change is _same_size_new_time:  # the same texts, every target flipped
        assert [row["input_ids"] for row in second["train"]] == [row["input_ids"] for row in first["train"]]
        assert [row["targets"] for row in second["train"]] == [1 - row["targets"] for row in first["train"]]
    else:
        assert len(second["train"]) + len(second["validation"]) == ROWS - 6 + 1


@pytest.mark.parametrize("setting", [{"max_source_length": 4}, {"n_train": 10}, {"data_seed": 7}])
def test_a_changed_setting_that_decides_the_tokens_rebuilds(rows_file: Path, counted: Counter, setting) -> None:
    first = rows_of(built(rows_file.parent))
    counted.clear()
    second = rows_of(built(rows_file.parent, **setting))
    assert counted["reads"] == 1 and counted["tokenised"] > 0 and second != first
    if "max_source_length" in setting:
        assert max(row["length"] for row in second["train"]) == 4


def test_num_proc_tokenises_in_processes_to_the_same_tokens(
    rows_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(token_cache, "ROWS_PER_PROCESS", 10)  # 48 train rows: 2 processes
    one = built(rows_file.parent, num_proc=1)
    assert one.tokenising().processes(48) == 1
    two = PHADataModule(**{**one.hparams, "num_proc": 2, "cache_dir": str(tmp_path / "cache2")})
    assert two.tokenising().processes(48) == 2
    two.setup("fit")
    assert rows_of(two) == rows_of(one)
    train_files = sorted(p.name for p in (tmp_path / "cache2" / "tokenized").glob("reviews-train-*"))
    assert len(train_files) == 2  # one Arrow file and its checksum, whatever the number of processes
    in_memory = PHADataModule(**{**one.hparams, "num_proc": 2, "cache_tokenized": False})
    in_memory.setup("fit")
    assert rows_of(in_memory) == rows_of(one)


def test_num_proc_defaults_to_the_usable_cpus_one_per_rows_per_process(
    rows_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(token_cache, "available_cpus", lambda: 4)
    data = PHADataModule(["synth_polarity"])
    per = token_cache.ROWS_PER_PROCESS
    assert [data.tokenising().processes(n) for n in (5, per, 2 * per + 1, 100 * per)] == [1, 1, 2, 4]
    assert PHADataModule(["synth_polarity"], num_proc=1).tokenising().processes(100 * per) == 1


def test_num_proc_must_be_a_positive_integer() -> None:
    with pytest.raises(ConfigError, match="num_proc"):
        PHADataModule(["synth_polarity"], num_proc=0)


# ------------------------------------------------------------------ built-in tasks (GLUE files)
RTE_ROWS = {"train": 30, "dev": 10}


def write_rte(root: Path, flipped: bool = False) -> Path:
    """RTE in GLUE's own TSV layout under ``root``; ``flipped`` swaps every label (the same texts)."""
    words = ["entailment", "not_entailment"]
    files = {
        f"glue/RTE/{name}.tsv": "index\tsentence1\tsentence2\tlabel\n"
        + "".join(f'{i}\tA "claim" number {i}.\tIt holds {i}.\t{words[(i + flipped) % 2]}\n' for i in range(rows))
        for name, rows in RTE_ROWS.items()
    }
    return write_files(root, files)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How often a built-in task reads its files, and how many rows are tokenised."""
    return counting(monkeypatch, BenchmarkTask, "load_splits")


def built_rte(root: Path) -> PHADataModule:
    data = PHADataModule(["rte"], data_dir=str(root), cache_dir=str(root / "cache"), max_source_length=32)
    data.setup("fit")
    return data


def test_a_built_in_task_starts_warm_without_reading_its_files(tmp_path: Path, loads: Counter) -> None:
    first = rows_of(built_rte(write_rte(tmp_path)))
    assert loads == {"reads": 1, "tokenised": RTE_ROWS["train"] + RTE_ROWS["dev"] // 2}
    loads.clear()
    assert rows_of(built_rte(tmp_path)) == first
    assert loads == {}  # the cache was found from the files' identity before any row was read


def test_a_changed_built_in_file_is_read_and_tokenised_again(tmp_path: Path, loads: Counter) -> None:
    first = rows_of(built_rte(write_rte(tmp_path)))
    train = tmp_path / "glue" / "RTE" / "train.tsv"
    before = train.stat()
    write_rte(tmp_path, flipped=True)
    os.utime(train, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    loads.clear()
    second = rows_of(built_rte(tmp_path))
    assert loads["reads"] == 1 and loads["tokenised"] == RTE_ROWS["train"] + RTE_ROWS["dev"] // 2
    assert [row["input_ids"] for row in second["train"]] == [row["input_ids"] for row in first["train"]]
    assert [row["targets"] for row in second["train"]] == [1 - row["targets"] for row in first["train"]]


def test_a_built_in_task_names_each_official_file_it_reads(tmp_path: Path) -> None:
    mnli = get_task("mnli")
    assert mnli.source_identity(source="hub") is None  # no revision pinned: the records digest keys the cache
    identity = mnli.source_identity(source="local", data_dir=str(write_files(tmp_path)))
    dev = (tmp_path / "glue" / "MNLI" / "dev.jsonl").resolve()  # the first candidate that exists
    assert identity["files"]["dev"] == [str(dev), dev.stat().st_size, dev.stat().st_mtime_ns]
    assert set(identity["files"]) == {"train", "dev", "dev_mismatched"}
    assert get_task("rte").source_identity(source="local", data_dir=str(tmp_path / "nowhere"))["files"] == {
        "train": None,
        "dev": None,
    }
