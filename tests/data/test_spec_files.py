"""What users' own files need (issue 54 item 6): header-less csv/tsv named by ``columns``, rows put in
splits by a field of the file (``split_column``), integer labels mapped to names (``labels`` as a
mapping), and spec files in every shape (a list, ``task_specs:``, a configuration)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pha_lightning.data.catalog import parse_specs
from pha_lightning.data.schema import parse_spec
from pha_lightning.data.spec_task import SpecTask
from pha_lightning.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")
#: 30 rows: a 1-based label, a text, a fold
ROWS = [(1 + i % 2, f"review {i} , was {'good' if i % 2 else 'bad'}", i % 5) for i in range(30)]


def load(raw: dict, data_dir: Path) -> dict[str, list[dict]]:
    splits = SpecTask(parse_spec(raw)).load_splits(SPLITS, data_dir=str(data_dir), data_seed=7)
    return {split: rows.to_list() for split, rows in splits.items()}


def spec(**overrides: object) -> dict:
    base = {"name": "mine", "files": {"all": "r.csv"}, "inputs": ["text"], "labels": {1: "negative", 2: "positive"}}
    return {**base, "columns": ["label", "text", "fold"], **overrides}


def write(path: Path, rows: list[tuple] = ROWS, sep: str = ",") -> None:
    quote = sep == ","  # tsv fields are read unquoted (the default quoting: none)
    path.write_text(
        "".join(sep.join(f'"{v}"' if quote and "," in str(v) else str(v) for v in row) + "\n" for row in rows)
    )


def every(splits: dict[str, list[dict]]) -> list[dict]:
    return sorted((r for part in splits.values() for r in part), key=lambda r: r["idx"])


# ------------------------------------------------------------------ a. columns of a header-less file
@pytest.mark.parametrize(("name", "sep"), [("r.csv", ","), ("r.tsv", "\t")])
def test_a_header_less_file_is_read_with_the_columns_of_its_spec(tmp_path: Path, name: str, sep: str) -> None:
    write(tmp_path / name, sep=sep)
    records = every(load(spec(files={"all": name}), tmp_path))
    assert [(r["text"], r["label"]) for r in records] == [(text, float(label - 1)) for label, text, _ in ROWS]


def test_columns_of_another_length_than_the_file_are_an_error(tmp_path: Path) -> None:
    write(tmp_path / "r.csv")
    with pytest.raises(DataError, match=r"columns names 2 fields \['label', 'text'\] but .* first line has 3"):
        load(spec(columns=["label", "text"]), tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"columns": ["label", "body"]}, r"the fields \['text'\] are not among columns \['label', 'body'\]"),
        ({"files": {"all": "r.jsonl"}}, r"columns name the fields of header-less csv/tsv files"),
        ({"split_column": "fold", "files": {"train": "r.csv"}}, r"split_column splits one file"),
        ({"split_column": {"name": "fold", "validation": 1}}, r"split_column needs the values of train"),
        ({"split_column": {"name": "fold", "train": [0, 1], "test": 1}}, r"values \['1'\] in more than one split"),
        ({"split_column": {"name": "fold", "dev": 1}}, r"unknown split_column keys \['dev'\]"),
        ({"labels": {1: "negative", 2: "negative"}}, r"labels must hold at least 2 entries"),
        ({"labels": {"0": "1", "1": "0"}}, r"file values \['0', '1'\] to other classes"),
        ({"labels": {True: "a", 2: "b"}}, r"bad values \[True\]"),
    ],
)
def test_a_bad_file_layout_is_one_error_naming_the_value(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(spec(**overrides))


# ------------------------------------------------------------------ b. splits from a field of the file
def test_a_split_column_puts_each_row_in_its_split(tmp_path: Path) -> None:
    write(tmp_path / "r.csv")
    column = {"name": "fold", "train": [0, 1, 2], "validation": 3, "test": 4}
    parsed = parse_spec(spec(split_column=column))
    assert parse_spec(parsed.to_dict()) == parsed  # a checkpoint's record of the spec reads back
    splits = load(spec(split_column=column), tmp_path)
    for split, folds in (("train", {0, 1, 2}), ("validation", {3}), ("test", {4})):
        assert [r["text"] for r in splits[split]] == [text for _, text, fold in ROWS if fold in folds]


def test_split_names_in_the_column_need_no_mapping_and_missing_splits_are_carved(tmp_path: Path) -> None:
    rows = [(label, text, "train" if i < 24 else "test") for i, (label, text, _) in enumerate(ROWS)]
    write(tmp_path / "r.csv", rows)
    with pytest.raises(DataError, match=r"task 'mine': its validation split is empty"):
        load(spec(split_column="fold"), tmp_path)  # the values train, validation, test: validation has no row
    column = {"name": "fold", "train": "train", "test": "test"}
    splits = load(spec(split_column=column, split={"validation": 4}), tmp_path)
    assert [r["text"] for r in splits["test"]] == [text for _, text, fold in rows if fold == "test"]
    assert len(splits["validation"]) == 4 and len(splits["train"]) == 20
    assert {r["text"] for r in splits["train"] + splits["validation"]} == {t for _, t, f in rows if f == "train"}


def test_a_split_value_that_names_no_split_is_an_error_with_its_line(tmp_path: Path) -> None:
    write(tmp_path / "r.csv")
    with pytest.raises(DataError, match=r"r\.csv, line 5: split_column 'fold' holds '4', which names no split"):
        load(spec(split_column={"name": "fold", "train": [0, 1, 2], "test": 3}), tmp_path)


# ------------------------------------------------------------------ c. integer labels mapped to names
def test_one_based_labels_map_to_their_names_and_zero_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "r.csv", [(0, "no class", 0), *ROWS])
    with pytest.raises(DataError, match=r"r\.csv, line 1: label '0' is none of the labels the values \['1', '2'\]"):
        load(spec(), tmp_path)
    task = SpecTask(parse_spec(spec()))
    assert task.class_names == ("negative", "positive")
    assert [task.class_index(v) for v in (1, "2", 2.0, "negative", "positive", 0, 3)] == [0, 1, 1, 0, 1, None, None]


def test_a_label_mapping_survives_the_portable_round_trip() -> None:
    portable = parse_spec(spec(label_words=["bad", "good"])).portable()
    assert portable["labels"] == {"1": "negative", "2": "positive"} and "columns" not in portable
    assert SpecTask(parse_spec(portable)).class_index(2) == 1


# ------------------------------------------------------------------ e. one shape of spec file everywhere
@pytest.mark.parametrize("shape", ["list", "task_specs", "config"])
def test_a_spec_file_in_any_shape_gives_the_same_specs(tmp_path: Path, shape: str) -> None:
    specs = [spec(), spec(name="other")]
    body = {
        "list": specs,
        "task_specs": {"task_specs": specs},
        "config": {"data": {"tasks": ["mine"], "task_specs": specs}},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(body[shape]))
    assert parse_specs(str(tmp_path / "s.yaml")) == parse_specs(specs)


def test_a_file_without_specs_says_which_shapes_are_read(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"model": {"backbone": "x"}}))
    with pytest.raises(ConfigError, match=r"s\.yaml' holds no task specs; give a list .* data: \{task_specs"):
        parse_specs(str(tmp_path / "s.yaml"))


# ------------------------------------------------------------------ d. labels read from the training rows
def test_labels_a_spec_leaves_out_are_those_of_the_training_file_sorted(tmp_path: Path) -> None:
    rows = [(label, f"text {i}", 0) for i, label in enumerate([10, 2, 1, 2, 10, 1] * 3)]
    write(tmp_path / "train.csv", rows)
    write(tmp_path / "test.csv", rows[:4])
    raw = spec(files={"train": "train.csv", "test": "test.csv"}, labels=None)
    (parsed,) = parse_specs([{k: v for k, v in raw.items() if v is not None}], str(tmp_path))
    assert parsed.labels == ("1", "2", "10")  # integers sorted as numbers, every run alike
    assert parsed.portable()["labels"] == ["1", "2", "10"]
    splits = SpecTask(parsed).load_splits(SPLITS, data_dir=str(tmp_path), data_seed=7)
    assert [r["label"] for r in splits["test"]] == [2.0, 1.0, 0.0, 1.0]  # 10, 2, 1, 2: a number names its label


def test_a_label_only_the_test_file_holds_is_an_error_naming_it(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", [(label, f"t {i}", 0) for i, label in enumerate(["neg", "pos"] * 5)])
    write(tmp_path / "test.csv", [("pos", "a", 0), ("neutral", "b", 0)])
    raw = {"name": "mine", "files": {"train": "train.csv", "test": "test.csv"}, "inputs": ["text"]}
    (parsed,) = parse_specs([{**raw, "columns": ["label", "text", "fold"]}], str(tmp_path))
    assert parsed.labels == ("neg", "pos")
    with pytest.raises(DataError, match=r"test\.csv, line 2: label 'neutral' is none of the labels \['neg', 'pos'\]"):
        SpecTask(parsed).load_splits(SPLITS, data_dir=str(tmp_path), data_seed=7)


def test_labels_of_a_split_column_file_come_from_its_train_rows(tmp_path: Path) -> None:
    rows = [("a" if i % 2 else "b", f"t {i}", "train") for i in range(8)] + [("c", "x", "test")]
    write(tmp_path / "r.csv", rows)
    raw = {"name": "mine", "files": {"all": "r.csv"}, "inputs": ["text"], "columns": ["label", "text", "fold"]}
    (parsed,) = parse_specs(
        [{**raw, "split_column": {"name": "fold", "train": "train", "test": "test"}}], str(tmp_path)
    )
    assert parsed.labels == ("a", "b")


def test_without_files_a_spec_needs_its_labels() -> None:
    with pytest.raises(ConfigError, match=r"give labels .* or regression: \[low, high\]; without files none are read"):
        parse_spec({"name": "mine", "inputs": ["text"]})
