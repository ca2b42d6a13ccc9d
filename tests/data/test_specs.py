"""Tasks declared in configuration: every file format and key, label mapping, carving, and every
bad spec as one error naming the task, the key and what is valid."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from pha_lightning import PHAConfig, PHAModel
from pha_lightning.data.catalog import parse_specs, resolve_tasks
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.data.schema import parse_spec
from pha_lightning.data.spec_task import SpecTask
from pha_lightning.data.tables import text_columns
from pha_lightning.errors import ConfigError, DataError

MINILM = "pypi:all-MiniLM-L6-v2"
SPLITS = ("train", "validation", "test")
#: 40 rows: a text and a string label
ROWS = [(f"text number {i} , with a comma", "pos" if i % 3 else "neg") for i in range(40)]


def spec(**overrides: object) -> dict:
    return {"name": "mine", "files": {"all": "mine.csv"}, "inputs": ["text"], "labels": ["neg", "pos"], **overrides}


def load(raw: dict, data_dir: Path, seed: int = 42) -> dict[str, list[dict]]:
    splits = SpecTask(parse_spec(raw)).load_splits(SPLITS, data_dir=str(data_dir), data_seed=seed)
    return {split: rows.to_list() for split, rows in splits.items()}


def write_csv(path: Path, rows: list[tuple[str, str]] = ROWS) -> None:
    path.write_text("text,label\n" + "".join(f'"{text}",{label}\n' for text, label in rows), encoding="utf-8")


# ------------------------------------------------------------------ formats
def test_csv_with_quoted_fields_and_string_labels(tmp_path: Path) -> None:
    write_csv(tmp_path / "mine.csv")
    splits = load(spec(), tmp_path)
    records = sorted((r for part in splits.values() for r in part), key=lambda r: r["idx"])
    assert [(r["text"], spec()["labels"][int(r["label"])]) for r in records] == ROWS


def test_tsv_reads_quotes_as_text_and_keeps_every_row(tmp_path: Path) -> None:
    lines = [f'"quoted" start {i}\tpos' if i % 2 else f'a "quote inside {i}\tneg' for i in range(30)]
    (tmp_path / "mine.tsv").write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    splits = load(spec(files={"all": "mine.tsv"}, inputs=["sentence"]), tmp_path)
    texts = sorted(r["sentence"] for part in splits.values() for r in part)
    assert texts == sorted(line.split("\t")[0] for line in lines)


def test_latin1_tsv_needs_its_encoding(tmp_path: Path) -> None:
    (tmp_path / "q.tsv").write_bytes(
        "question\tcoarse\nwho is there ?\tHUM\nqu'est-ce que le café ?\tDESC\n".encode("latin-1") * 1
    )
    raw = spec(
        files={"train": "q.tsv", "validation": "q.tsv", "test": "q.tsv"},
        inputs=["question"],
        label="coarse",
        labels=["DESC", "HUM"],
    )
    with pytest.raises(DataError, match=r"task 'mine', .*q\.tsv, line 3: .*encoding: latin-1"):
        load(raw, tmp_path)
    records = load({**raw, "encoding": "latin-1"}, tmp_path)["train"]
    assert [(r["question"], r["label"]) for r in records] == [("who is there ?", 1.0), ("qu'est-ce que le café ?", 0.0)]


def test_jsonl_with_boolean_and_integer_labels(tmp_path: Path) -> None:
    rows = [{"q": f"is {i} even ?", "answer": i % 2 == 0, "n": i % 3} for i in range(30)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    booleans = load(spec(files={"all": "d.jsonl"}, inputs=["q"], label="answer", labels=["False", "True"]), tmp_path)
    indexed = load(spec(files={"all": "d.jsonl"}, inputs=["q"], label="n", labels=["zero", "one", "two"]), tmp_path)
    for part in SPLITS:
        assert all(r["label"] == float(int(r["q"].split()[1]) % 2 == 0) for r in booleans[part])
        assert all(r["label"] == float(int(r["q"].split()[1]) % 3) for r in indexed[part])


def test_parquet_integers_index_the_labels(tmp_path: Path) -> None:
    names = ["very negative", "negative", "neutral", "positive", "very positive"]
    for split in SPLITS:
        datasets.Dataset.from_dict(
            {"sentence": [f"{split} {i}" for i in range(10)], "label": [i % 5 for i in range(10)]}
        ).to_parquet(tmp_path / f"{split}.parquet")
    raw = spec(files={s: f"{s}.parquet" for s in SPLITS}, inputs=["sentence"], labels=names)
    splits = load(raw, tmp_path)
    assert [r["label"] for r in splits["test"]] == [float(i % 5) for i in range(10)]
    assert [r["sentence"] for r in splits["validation"]] == [f"validation {i}" for i in range(10)]
    assert SpecTask(parse_spec(raw)).class_names == tuple(names)


def test_a_value_equal_to_a_label_is_that_label_before_an_index(tmp_path: Path) -> None:
    write_csv(tmp_path / "mine.csv", [(f"t {i}", str(i % 2)) for i in range(20)])
    splits = load(spec(labels=["1", "0"]), tmp_path)  # "1" is the class "1" (index 0), not index 1
    assert all(r["label"] == float(1 - int(r["text"].split()[1]) % 2) for part in splits.values() for r in part)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_numeric_labels_are_never_read_as_positions(tmp_path: Path, fmt: str) -> None:
    """With labels [1, 2, 3, 4, 5] a value is a label or an error: ``0`` is not the class at index 0 (``1``)."""
    values = [1, 2, 3, 4, 5] * 4
    path = tmp_path / f"stars.{fmt}"
    raw = spec(files={"all": path.name}, labels=[1, 2, 3, 4, 5])
    if fmt == "csv":
        write_csv(path, [(f"t {i}", str(v)) for i, v in enumerate(values)])
    else:
        path.write_text("".join(json.dumps({"text": f"t {i}", "label": v}) + "\n" for i, v in enumerate(values)))
    loaded = [r for part in load(raw, tmp_path).values() for r in part]
    assert sorted((r["idx"], r["label"]) for r in loaded) == [(i, float(v - 1)) for i, v in enumerate(values)]
    if fmt == "csv":
        write_csv(path, [(f"t {i}", str(v)) for i, v in enumerate([*values[:5], 0, *values[5:]])])
    else:
        path.write_text("".join(json.dumps({"text": f"t {i}", "label": v}) + "\n" for i, v in enumerate([0, *values])))
    value, line = ("'0'", 7) if fmt == "csv" else ("0", 1)
    with pytest.raises(
        DataError,
        match=rf"stars\.{fmt}, line {line}: label {value} is none of the labels \['1', '2', '3', '4', '5'\] "
        r"\(these labels are numbers: a number names a label, never its position\)",
    ):
        load(raw, tmp_path)


@pytest.mark.parametrize(
    ("labels", "value", "index"),
    [
        (["neg", "pos"], 1, 1),  # no label is a number: an integer indexes them
        (["neg", "pos"], "1", 1),
        (["neg", "pos"], "pos", 1),
        (["1", "2", "3"], 1, 0),  # numeric labels: a number names its label
        (["1", "2", "3"], 3.0, 2),
        (["1", "2", "3"], 0, None),
        (["1", "2", "3"], "0", None),
        (["-1", "1"], 0, None),  # negative and decimal labels are numbers too
        (["0.5", "1.5"], 1, None),
        (["1", "0"], 1, 0),  # equality before position
        (["neg", "pos"], True, None),
        (["neg", "pos"], 2, None),
    ],
)
def test_class_index_rule(labels: list[str], value: object, index: int | None) -> None:
    assert SpecTask(parse_spec(spec(labels=labels))).class_index(value) == index


def test_prediction_inputs_read_numeric_labels_by_the_same_rule() -> None:
    """A prediction input's gold label follows the rule of the training files: ``1`` is the label
    ``1`` (not the class at index 1, ``2``), and ``0`` is an error naming line, value and labels."""
    from pha_lightning.data.examples import encode_examples
    from pha_lightning.hub import load_tokenizer

    task = SpecTask(parse_spec(spec(labels=[1, 2, 3, 4, 5])))
    rows = [(1, {"task": "mine", "text": "five stars", "label": 1}), (2, {"task": "mine", "text": "x", "label": "5"})]
    tokenizer = load_tokenizer(MINILM)
    assert [e["meta"]["target"] for e in encode_examples(rows, [task], "encoder", tokenizer, 16)] == ["1", "5"]
    with pytest.raises(DataError, match=r"input:3: label 0 is outside the label space of task 'mine': \['1', "):
        encode_examples([(3, {"task": "mine", "text": "x", "label": 0})], [task], "encoder", tokenizer, 16)


def test_label_words_name_their_class(tmp_path: Path) -> None:
    """A target word names its class in a file as in a prediction input (and blocks indices when numeric)."""
    task = SpecTask(parse_spec(spec(labels=["a", "b"], label_words=["0", "1"])))
    assert (task.class_index("b"), task.class_index("0"), task.class_index(1)) == (1, 0, 1)
    assert not task.indexes_classes


def test_a_bad_label_names_task_file_line_and_value(tmp_path: Path) -> None:
    write_csv(tmp_path / "mine.csv", [*ROWS[:5], ("odd one", "maybe"), *ROWS[5:]])
    with pytest.raises(
        DataError,
        match=r"task 'mine', .*mine\.csv, line 7: label 'maybe' is none of the labels \['neg', 'pos'\] \(or their indices 0\.\.1\)",
    ):
        load(spec(), tmp_path)


def test_an_index_out_of_range_is_a_bad_label(tmp_path: Path) -> None:
    write_csv(tmp_path / "mine.csv", [(f"t {i}", str(i % 3)) for i in range(20)])
    with pytest.raises(DataError, match=r"line 4: label '2' is none of the labels"):
        load(spec(labels=["a", "b"]), tmp_path)


def test_a_missing_field_lists_the_fields_the_file_has(tmp_path: Path) -> None:
    write_csv(tmp_path / "mine.csv")
    with pytest.raises(DataError, match=r"the file has no field\(s\) \['review'\]; its fields are \['text', 'label'\]"):
        load(spec(inputs=["review"]), tmp_path)
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "pos"}\n')
    with pytest.raises(DataError, match=r"no field\(s\) \['sentiment'\]; its fields are \['text', 'label'\]"):
        load(spec(files={"all": "d.jsonl"}, label="sentiment"), tmp_path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"task 'mine': the file '.*nothere\.csv' does not exist"):
        load(spec(files={"all": "nothere.csv"}), tmp_path)


def test_a_regression_spec_reads_scores_in_its_range(tmp_path: Path) -> None:
    write_csv(tmp_path / "mine.csv", [(f"t {i}", f"{i / 10:.1f}") for i in range(40)])
    raw = spec(labels=None, regression=[0, 5])
    raw.pop("labels")
    task = SpecTask(parse_spec(raw))
    assert task.is_regression and task.metric_names == ("pearson", "spearman") and task.target_range == (0.0, 5.0)
    scores = sorted(r["label"] for part in load(raw, tmp_path).values() for r in part)
    assert scores == pytest.approx([i / 10 for i in range(40)])
    write_csv(tmp_path / "mine.csv", [("t", "7.5"), *[(f"t {i}", "1") for i in range(20)]])
    with pytest.raises(DataError, match=r"line 2: score '7.5' is not a number in \[0, 5\]"):
        load(raw, tmp_path)


# ------------------------------------------------------------------ carving
def test_carving_is_deterministic_disjoint_and_complete(tmp_path: Path) -> None:
    write_csv(tmp_path / "mine.csv")
    first, again = load(spec(), tmp_path), load(spec(), tmp_path)
    assert first == again
    ids = {split: [r["idx"] for r in first[split]] for split in SPLITS}
    assert sorted(ids["train"] + ids["validation"] + ids["test"]) == list(range(len(ROWS)))
    assert [len(ids[split]) for split in SPLITS] == [32, 4, 4]  # 10 % each by default
    assert all(ids[split] == sorted(ids[split]) for split in SPLITS)  # the file's order is kept
    assert load(spec(), tmp_path, seed=43)["test"] != first["test"]
    pinned = spec(split={"validation": 5, "test": 0.25, "seed": 7})
    counts = {split: len(rows) for split, rows in load(pinned, tmp_path, seed=1).items()}
    assert counts == {"train": 25, "validation": 5, "test": 10}
    assert load(pinned, tmp_path, seed=1) == load(pinned, tmp_path, seed=2)  # split.seed wins over data_seed


def test_a_missing_validation_split_is_carved_from_train(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv")
    write_csv(tmp_path / "test.csv", ROWS[:6])
    splits = load(spec(files={"train": "train.csv", "test": "test.csv"}, split={"validation": 10}), tmp_path)
    assert [len(splits[s]) for s in SPLITS] == [30, 10, 6]
    assert not {r["idx"] for r in splits["train"]} & {r["idx"] for r in splits["validation"]}


def test_an_empty_split_after_carving_is_an_error(tmp_path: Path) -> None:
    write_csv(tmp_path / "mine.csv", ROWS[:4])
    with pytest.raises(
        DataError,
        match=r"task 'mine': its validation split is empty after carving \['validation', 'test'\] from all \(4 rows\)",
    ):
        load(spec(), tmp_path)


def test_the_data_module_carves_the_same_on_every_rank(tmp_path: Path) -> None:
    """Ranks build their own data modules: the same seed gives the same splits, without any communication."""
    write_csv(tmp_path / "mine.csv")
    modules = [PHADataModule(["mine"], task_specs=[spec()], data_dir=str(tmp_path), backbone=MINILM) for _ in range(2)]
    for module in modules:
        module.setup()
    for split in SPLITS:
        first, second = (module.datasets[split][0] for module in modules)
        assert (
            first["input_ids"] == second["input_ids"] and len(first) == {"train": 32, "validation": 4, "test": 4}[split]
        )


# ------------------------------------------------------------------ hub
def test_a_hub_spec_loads_its_splits_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def stand_in(path: str, name: str | None, split: str, revision: str | None = None) -> datasets.Dataset:
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_dict(
            {"tweet": [f"{split} {i}" for i in range(12)], "label": [i % 3 for i in range(12)]}
        )

    monkeypatch.setattr(datasets, "load_dataset", stand_in)
    hub = {
        "path": "cardiffnlp/tweet_eval",
        "name": "sentiment",
        "revision": "abc123",
        "splits": {"train": "train", "test": "test"},
    }
    raw = {
        "name": "tweets",
        "hub": hub,
        "inputs": ["tweet"],
        "labels": ["negative", "neutral", "positive"],
        "split": {"validation": 2},
    }
    splits = SpecTask(parse_spec(raw)).load_splits(SPLITS)
    assert calls == [
        ("cardiffnlp/tweet_eval", "sentiment", "train", "abc123"),
        ("cardiffnlp/tweet_eval", "sentiment", "test", "abc123"),
    ]
    assert [len(splits[s]) for s in SPLITS] == [10, 2, 12]
    assert [r["label"] for r in splits["test"]] == [float(i % 3) for i in range(12)]


# ------------------------------------------------------------------ templates and label words
def test_template_and_label_words_on_the_text_to_text_path(tmp_path: Path, tiny_t5: str) -> None:
    write_csv(tmp_path / "mine.csv")
    raw = spec(template="review of a film: {text}", label_words=["bad", "good"])
    data = PHADataModule(["mine"], task_specs=[raw], data_dir=str(tmp_path), backbone=tiny_t5)
    task = data.task_objects[0]
    records = task.load_split("test", data_dir=str(tmp_path), data_seed=42)
    columns = text_columns(task, records, seq2seq=True)
    assert columns["source"] == [f"review of a film: {r['text']}" for r in records]
    assert columns["target"] == [("bad", "good")[int(r["label"])] for r in records]
    assert task.parse_generation("good") == 1.0 and task.parse_generation("pos") is None
    default = SpecTask(parse_spec(spec()))
    assert default.seq2seq_source({"text": "x"}) == "mine text: x"  # as the built-in tasks


def test_label_words_are_the_encoder_label_word_layer_vocabulary(tiny_bert: str) -> None:
    raw = spec(label_words=["bad", "good"])
    model = PHAModel(
        PHAConfig(
            backbone=tiny_bert,
            backbone_init="random",
            tasks=["mine", "sst2"],
            task_specs=[raw],
            output_layer="label_words",
        )
    )
    assert model.heads.words[:2] == ("bad", "good")
    assert model.task_objects[0].class_names == ("neg", "pos")
    assert model.config.task_specs == [
        {"name": "mine", "inputs": ["text"], "label": "label", "labels": ["neg", "pos"], "label_words": ["bad", "good"]}
    ]


# ------------------------------------------------------------------ the specs themselves
def test_specs_from_a_yaml_file_equal_inline_specs(tmp_path: Path) -> None:
    (tmp_path / "specs.yaml").write_text(
        "- name: mine\n  files: {all: mine.csv}\n  inputs: [text]\n  labels: [neg, pos]\n"
    )
    assert parse_specs(str(tmp_path / "specs.yaml")) == parse_specs([spec()])
    assert parse_spec(parse_specs([spec()])[0].to_dict()) == parse_spec(spec())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (spec(lables=["a"]), r"task spec 'mine': unknown spec keys \['lables'\]; valid: \['name', 'inputs', 'label'"),
        ({"files": {"all": "x.csv"}}, r"a task spec needs a name"),
        ({"name": "mine", "labels": ["a", "b"]}, r"task spec 'mine': inputs \(one or two field names\) is missing"),
        (spec(inputs=["a", "b", "c"]), r"inputs must hold 1 to 2 entries, got 3"),
        (spec(regression=[0, 1]), r"give labels \(the classes\) or regression: \[low, high\] \(a score\), not both"),
        (spec(labels=["only"]), r"labels must hold at least 2 entries"),
        (spec(labels=["a", "a"]), r"labels holds duplicates: \['a', 'a'\]"),
        (spec(label="text"), r"the label field 'text' is also an input"),
        (spec(label_words=["good"]), r"label_words must hold 2 entries, got 1"),
        (
            spec(files={"all": "a.csv", "train": "b.csv"}),
            r"'all' is one file to carve every split from; it excludes \['train'\]",
        ),
        (spec(files={"validation": "a.csv"}), r"files needs a train file \(or all\)"),
        (
            spec(files={"dev": "a.csv"}),
            r"unknown files keys \['dev'\]; valid: \['train', 'validation', 'test', 'all'\]",
        ),
        (
            spec(files={"all": "a.xlsx"}),
            r"cannot infer the format of 'a.xlsx' from its suffix; give format \(one of \['csv', 'tsv'",
        ),
        (spec(format="excel"), r"unknown format 'excel'; valid: \['csv', 'tsv', 'jsonl', 'json', 'parquet'\]"),
        (spec(encoding="klingon"), r"unknown encoding 'klingon'"),
        (spec(quoting="all"), r"unknown quoting 'all'; valid: \['minimal', 'none'\]"),
        (spec(template="{title}: {text}"), r"template '\{title\}: \{text\}' must use input fields \['text'\]"),
        (spec(split={"validation": 1.5}), r"split.validation must be a share in \(0, 1\) or a count >= 1, got 1.5"),
        (spec(split={"tests": 3}), r"unknown split keys \['tests'\]; valid: \['validation', 'test', 'seed'\]"),
        (spec(files={s: f"{s}.csv" for s in SPLITS}, split={"test": 3}), r"train, validation and test are all given"),
        (spec(hub="a/b"), r"give files or hub, not both"),
        (spec(files=None, hub={"path": "a/b", "splits": {"test": "test"}}), r"hub.splits needs train"),
        (spec(regression=[5, 0], labels=None), r"regression must be \[low, high\] with low < high"),
        (
            spec(metrics=["accuracy", "bleu"]),
            r"unknown metrics \['bleu'\] for classes; valid: \['accuracy', 'f1', 'macro_f1'",
        ),
        (spec(metrics=["accuracy"], regression=[0, 1], labels=None), r"unknown metrics \['accuracy'\] for a score"),
    ],
)
def test_a_bad_spec_is_one_error_naming_the_key(raw: dict, message: str) -> None:
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        parse_specs([raw])


def test_names_must_be_new_and_unique() -> None:
    with pytest.raises(ConfigError, match=r"task specs \['sst2'\] have the names of built-in tasks"):
        parse_specs([spec(name="sst2")])
    with pytest.raises(ConfigError, match=r"declares the tasks \['mine'\] more than once"):
        parse_specs([spec(), spec()])
    with pytest.raises(
        ConfigError, match=r"unknown tasks \['other'\]; available tasks: \[.*\], and from data.task_specs: \['mine'\]"
    ):
        resolve_tasks(["other"], [spec()])


def test_a_spec_without_files_serves_a_model_but_cannot_be_trained_on(tmp_path: Path) -> None:
    portable = parse_spec(spec()).portable()
    assert "files" not in portable and portable["labels"] == ["neg", "pos"]
    with pytest.raises(DataError, match=r"task 'mine' has no data source: .* give data.task_specs with its files"):
        SpecTask(parse_spec(portable)).load_splits(["train"])


def test_each_spec_is_parsed_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The catalogue parses a spec once however many places ask (data module, config link, model)."""
    from pha_lightning.data import catalog

    parsed_names = []
    real = catalog.parse_spec
    monkeypatch.setattr(catalog, "parse_spec", lambda raw: parsed_names.append(raw["name"]) or real(raw))
    raw = spec(name="parsed_once")
    write_csv(tmp_path / "mine.csv")
    for _ in range(3):
        parse_specs([raw], str(tmp_path))
    resolve_tasks(["parsed_once"], [raw])
    PHAConfig(tasks=["parsed_once"], task_specs=[raw])
    assert parsed_names.count("parsed_once") == 1  # (the built-in specs are parsed on the first lookup)
