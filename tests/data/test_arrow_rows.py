"""A user's rows stay in ``datasets`` tables from the file to the batch (issue 55, item 2): a spec task's
splits are tables, the data module holds no row as a Python object, and a bad row is still reported
with its file and line, as a read row by row reports it."""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path

import datasets
import pytest
from glue_fixtures import write_files

from pha_lightning.data.catalog import get_task
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.data.schema import parse_spec
from pha_lightning.data.spec_task import SpecTask
from pha_lightning.errors import DataError

SPLITS = ("train", "validation", "test")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def spec(**overrides: object) -> dict:
    return {
        "name": "reviews",
        "inputs": ["text"],
        "labels": ["neg", "pos"],
        "files": {"all": "rows.jsonl"},
        **overrides,
    }


def reviews(count: int) -> list[dict]:
    return [
        {"text": f"review {i} was {'fine' if i % 2 else 'poor'}", "label": ["neg", "pos"][i % 2]} for i in range(count)
    ]


def load(raw: dict, folder: Path) -> dict[str, datasets.Dataset]:
    return SpecTask(parse_spec(raw)).load_splits(SPLITS, data_dir=str(folder), data_seed=3)


def test_a_spec_tasks_splits_are_datasets_tables(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", reviews(50))
    splits = load(spec(), tmp_path)
    assert all(isinstance(rows, datasets.Dataset) for rows in splits.values())
    assert [len(splits[split]) for split in SPLITS] == [40, 5, 5]
    first = splits["test"][0]
    row = reviews(50)[first["idx"]]
    assert first == {"text": row["text"], "label": float(row["label"] == "pos"), "idx": first["idx"]}


def retained_bytes(folder: Path, count: int) -> int:
    """Python memory (tracemalloc) a set-up data module keeps for a file of ``count`` rows."""
    folder.mkdir()
    write_jsonl(folder / "rows.jsonl", reviews(count))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        data = PHADataModule(
            ["reviews"],
            task_specs=[spec()],
            data_dir=str(folder),
            cache_dir=str(folder / "cache"),
            max_source_length=16,
            num_proc=1,
        )
        data.setup("fit")
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(data.datasets["train"][0]) == count - 2 * (count // 10)
    return retained


def test_the_data_module_keeps_no_row_as_a_python_object(tmp_path: Path) -> None:
    """5 000 more rows add well under 100 bytes of Python memory each once set up (as a dict of Python
    objects, every row took several hundred)."""
    retained_bytes(tmp_path / "warm", 200)  # imports, tokenizer and caches of the first run
    small, large = (retained_bytes(tmp_path / f"n{count}", count) for count in (1_000, 6_000))
    assert (large - small) / 5_000 < 100, f"{(large - small) / 5_000:.0f} bytes per row ({small} at 1 000 rows)"


# ------------------------------------------------------------------ bad rows name their file and line
@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({2: {"text": None, "label": "pos"}}, r"rows\.jsonl, line 3: field 'text' is None, not text"),
        ({4: {"text": "x", "label": "maybe"}}, r"rows\.jsonl, line 5: label 'maybe' is none of the labels \['neg'"),
        (  # the first bad row is the one named, whatever is wrong with it
            {6: {"text": None, "label": "pos"}, 3: {"text": "y", "label": "7"}},
            r"rows\.jsonl, line 4: label '7' is none of the labels",
        ),
        ({1: {"text": "z", "label": None}}, r"rows\.jsonl, line 2: label None is none of the labels"),
    ],
)
def test_a_bad_row_names_its_file_and_line(tmp_path: Path, rows: dict[int, dict], message: str) -> None:
    lines = reviews(30)
    for index, row in rows.items():
        lines[index] = row
    write_jsonl(tmp_path / "rows.jsonl", lines)
    with pytest.raises(DataError, match=rf"task 'reviews', .*{message}"):
        load(spec(), tmp_path)


def test_a_bad_score_and_a_non_text_input_name_their_line(tmp_path: Path) -> None:
    scores = [{"text": f"t {i}", "score": i / 10} for i in range(30)]
    write_jsonl(tmp_path / "rows.jsonl", [*scores[:8], {"text": "t", "score": 9.5}, *scores[8:]])
    regression = spec(labels=None, regression=[0, 5], label="score")
    with pytest.raises(DataError, match=r"rows\.jsonl, line 9: score 9\.5 is not a number in \[0, 5\]"):
        load({k: v for k, v in regression.items() if v is not None}, tmp_path)
    write_jsonl(tmp_path / "rows.jsonl", [{"text": i % 3 == 0, "label": "neg"} for i in range(30)])
    with pytest.raises(DataError, match=r"rows\.jsonl, line 1: field 'text' is True, not text"):
        load(spec(), tmp_path)


def test_numbers_as_inputs_are_read_as_python_writes_them(tmp_path: Path) -> None:
    values = [0.1, 2.5, 1e20, 3.0] * 10
    write_jsonl(tmp_path / "rows.jsonl", [{"text": v, "label": ["neg", "pos"][i % 2]} for i, v in enumerate(values)])
    rows = sorted((row for part in load(spec(), tmp_path).values() for row in part), key=lambda row: row["idx"])
    assert [row["text"] for row in rows] == [str(v) for v in values]


# ------------------------------------------------------------------ built-in tasks: GLUE TSVs
RTE_HEADER = "index\tsentence1\tsentence2\tlabel"
GLUE_TSV_TASKS = ("cola", "sst2", "mrpc", "stsb", "rte", "wnli", "qnli", "qqp")


def glue_splits(task: str, folder: Path) -> dict:
    return get_task(task).load_splits(SPLITS, data_dir=str(folder), split_validation_test=False)


@pytest.mark.parametrize("task", GLUE_TSV_TASKS)
def test_a_glue_tasks_splits_are_tables_of_the_row_readers_records(tmp_path: Path, task: str) -> None:
    splits = glue_splits(task, write_files(tmp_path))
    assert all(isinstance(rows, datasets.Dataset) for rows in splits.values())
    assert splits["train"].to_list() == get_task(task).load_official("train", "local", tmp_path)
    assert splits["test"].to_list() == get_task(task).load_official("dev", "local", tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        f'{RTE_HEADER}\r\n0\tHe said "no.\tb \t\r\n\r\n1\t" a\tb\tentailment\r\n',  # CRLF, empty line, quotes
        f"{RTE_HEADER}\n0\ta\t\tnot_entailment\n\n\n1\t\t\tentailment",  # empty fields, no final newline
        f"{RTE_HEADER}\n",  # no rows
    ],
    ids=["crlf_quotes_empty_line", "empty_fields", "header_only"],
)
def test_a_glue_tsvs_quirks_read_as_without_quoting(tmp_path: Path, text: str) -> None:
    path = tmp_path / "glue" / "RTE" / "train.tsv"
    path.parent.mkdir(parents=True)
    path.write_bytes(text.replace("\tb \t\r\n", "\tb \tentailment\r\n").encode())
    table = get_task("rte").official_records("train", "local", tmp_path)
    assert isinstance(table, datasets.Dataset)
    assert table.to_list() == get_task("rte").load_official("train", "local", tmp_path)


@pytest.mark.parametrize(
    ("task", "relative", "data"),
    [
        ("rte", "glue/RTE/train.tsv", f"{RTE_HEADER}\n0\ta\tb\tentailment\n1\ta b\tentailment\n".encode()),
        ("rte", "glue/RTE/train.tsv", f"{RTE_HEADER}\n0\ta\tb\tentailment\tmore\n".encode()),
        ("rte", "glue/RTE/train.tsv", f"{RTE_HEADER}\n0\ta\tb\tentailment\n0\ta\rb\tc\tentailment\n".encode()),
        ("rte", "glue/RTE/train.tsv", f"{RTE_HEADER}\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n".encode()),
        ("rte", "glue/RTE/train.tsv", f"{RTE_HEADER}\n0\ta\tb\tentailment\n1\t\xe9t\xe9\tb\tentailment\n".encode("latin-1")),
        ("rte", "glue/RTE/train.tsv", b"index\tsentence1\tlabel\n0\ta\tentailment\n"),
        ("rte", "glue/RTE/train.tsv", b""),
        ("cola", "glue/CoLA/train.tsv", b"gj04\t1\t\tok.\ngj04\t1\n"),
        ("cola", "glue/CoLA/train.tsv", b"gj04\t1\n"),
        ("stsb", "glue/STS-B/train.tsv", b"index\tsentence1\tsentence2\tscore\n0\ta\tb\t4.2\n1\ta\tb\tnan\n"),
    ],
    ids=["too_few", "too_many", "carriage_return", "label", "undecodable", "header", "empty", "cola_width", "cola_narrow", "nan_score"],
)  # fmt: skip
def test_a_malformed_glue_row_is_named_as_the_row_reader_names_it(
    tmp_path: Path, task: str, relative: str, data: bytes
) -> None:
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with pytest.raises(DataError, match=rf"task '{task}', {path}(, line \d+)?: ") as by_rows:
        get_task(task).load_official("train", "local", tmp_path)
    with pytest.raises(DataError) as by_table:
        get_task(task).load_splits(["train"], data_dir=str(tmp_path))
    assert str(by_table.value) == str(by_rows.value)


def test_a_glue_tsvs_rows_become_no_python_objects(tmp_path: Path) -> None:
    """The table is read and named without a copy through Python (``datasets`` hashes an unnamed table)."""
    path = tmp_path / "glue" / "SST-2" / "train.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("sentence\tlabel\n" + "".join(f"sentence {i} has enough words to weigh something \t{i % 2}\n" for i in range(20_000)))  # fmt: skip
    task = get_task("sst2")
    task.official_table("train", tmp_path)  # imports and first-use allocations
    gc.collect()
    tracemalloc.start()
    try:
        table = task.official_table("train", tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(table) == 20_000 and peak < table.data.nbytes / 2
