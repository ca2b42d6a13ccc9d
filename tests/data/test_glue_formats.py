"""GLUE/SuperGLUE loading from fixture files in each official format, from hub-shaped datasets, and
their errors; templates and encoder inputs; the split protocol on synthetic files."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from glue_fixtures import EXPECTED, FILES, hub_dataset, protocol_records, write_files

from pha_lightning.data.benchmark import LARGE_TASK_VALIDATION_SIZE
from pha_lightning.data.catalog import available_tasks, benchmark_tasks, get_task
from pha_lightning.data.kinds import mark_wsc_spans
from pha_lightning.data.readers import resolve_source
from pha_lightning.errors import ConfigError, DataError

GLUE_TASKS, SUPERGLUE_TASKS = benchmark_tasks("glue"), benchmark_tasks("superglue")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_files(tmp_path_factory.mktemp("glue_data"))


def test_registry_has_every_task_with_its_metrics_and_labels() -> None:
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert set(SUPERGLUE_TASKS) == {"boolq", "cb", "copa", "multirc", "superglue_rte", "wic", "wsc"}
    assert set(GLUE_TASKS) | set(SUPERGLUE_TASKS) <= set(available_tasks())
    metrics = {name: get_task(name).metric_names for name in (*GLUE_TASKS, *SUPERGLUE_TASKS)}
    assert metrics == {
        "cola": ("matthews",),
        "sst2": ("accuracy",),
        "mrpc": ("f1", "accuracy"),
        "qqp": ("f1", "accuracy"),
        "stsb": ("pearson", "spearman"),
        "mnli": ("accuracy",),
        "qnli": ("accuracy",),
        "rte": ("accuracy",),
        "wnli": ("accuracy",),
        "boolq": ("accuracy",),
        "cb": ("accuracy", "macro_f1"),
        "copa": ("accuracy",),
        "multirc": ("f1a", "em"),
        "superglue_rte": ("accuracy",),
        "wic": ("accuracy",),
        "wsc": ("accuracy",),
    }
    assert get_task("mnli").label_names == ("0", "1", "2") and get_task("cb").num_labels == 3
    stsb = get_task("stsb")
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.target_range == (0.0, 5.0)
    assert stsb.rank_candidates()[:3] == ("0.0", "0.2", "0.4") and len(stsb.rank_candidates()) == 26
    assert get_task("rte").rank_candidates() == ("0", "1")
    assert {get_task(name).protocol for name in ("sst2", "qqp", "qnli")} == {"large"}
    assert get_task("mnli").protocol == "mnli"
    assert {get_task(name).protocol for name in ("cola", "mrpc", "rte", "stsb", "wnli", *SUPERGLUE_TASKS)} == {"small"}


@pytest.mark.parametrize(("task", "official"), sorted(EXPECTED))
def test_official_files_load_into_the_expected_records(data_dir: Path, task: str, official: str) -> None:
    assert get_task(task).load_official(official, "local", data_dir) == EXPECTED[(task, official)]


def test_every_fixture_file_loads(data_dir: Path) -> None:
    counts = {}
    for name in (*GLUE_TASKS, *SUPERGLUE_TASKS):
        task = get_task(name)
        for official in task.official_names:
            counts[(name, official)] = len(task.load_official(official, "local", data_dir))
    assert counts[("cola", "dev")] == 2  # no final newline: the last row still counts
    assert counts[("multirc", "dev")] == 2 and counts[("wsc", "dev")] == 1
    assert all(count > 0 for count in counts.values())


@pytest.mark.parametrize(("task", "official"), sorted(EXPECTED))
def test_hub_rows_give_the_same_records_as_local_files(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, task: str, official: str
) -> None:
    expected = EXPECTED[(task, official)]
    spec = get_task(task).spec
    calls = []

    def fake_load_dataset(path: str, name: str, split: str) -> datasets.Dataset:
        calls.append((path, name, split))
        return hub_dataset(task, expected)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from_hub = get_task(task).load_official(official, "hub")
    assert from_hub == get_task(task).load_official(official, "local", data_dir) == expected
    hub_path = "nyu-mll/glue" if spec.benchmark == "glue" else "aps/super_glue"
    assert calls == [(hub_path, spec.hub.name, spec.hub.splits[official])]


def test_hub_split_names_and_configs() -> None:
    assert get_task("mnli").spec.hub.splits["dev"] == "validation_matched"
    assert get_task("mnli").spec.hub.splits["dev_mismatched"] == "validation_mismatched"
    assert get_task("wsc").hub_config == "wsc.fixed"
    assert get_task("superglue_rte").hub_config == "rte" and get_task("superglue_rte").hub_path == "aps/super_glue"
    assert get_task("sst2").hub_path == "nyu-mll/glue"


def test_unreachable_hub_is_a_clear_data_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # HF_HUB_OFFLINE=1 (conftest): datasets fails at once; an empty cache makes sure nothing is found.
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: real(*a, cache_dir=str(tmp_path), **k))
    with pytest.raises(DataError) as caught:
        get_task("rte").load_official("dev", "hub")
    message = str(caught.value)
    assert "task 'rte'" in message and "could not be reached" in message
    assert "nyu-mll/glue (config 'rte', split 'validation')" in message
    assert "--data.data_dir" in message and "PHA_DATA_DIR" in message and "HF_HUB_OFFLINE" in message


def test_hub_test_split_labels_are_rejected_with_an_explanation(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden = hub_dataset("rte", [{"sentence1": "a", "sentence2": "b", "label": 0, "idx": 0}]).cast_column(
        "label", datasets.Value("int32")
    )
    hidden = hidden.map(lambda row: {"label": -1})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: hidden)
    with pytest.raises(
        DataError, match=r"task 'rte', hub nyu-mll/glue \(config rte, split validation\), row 0: label -1"
    ):
        get_task("rte").load_official("dev", "hub")


# ----------------------------------------------------------------------------- errors
def _with(data_dir: Path, relative: str, text: str) -> Path:
    path = data_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("task", "relative", "text", "line", "problem"),
    [
        (
            "rte",
            "glue/RTE/train.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta b\tentailment\n",
            3,
            "expected 4 tab-separated fields",
        ),
        (
            "rte",
            "glue/RTE/train.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n",
            2,
            r"label 'maybe' is not one of \['entailment', 'not_entailment'\]",
        ),
        ("cola", "glue/CoLA/train.tsv", "gj04\t1\t\tok.\ngj04\tx\t\tbad.\n", 2, "label 'x' is not a class index"),
        (
            "cola",
            "glue/CoLA/train.tsv",
            "gj04\t1\t\tok.\ngj04\t1\n",
            2,
            r"expected 4 tab-separated fields \(as in line 1\)",
        ),
        (
            "stsb",
            "glue/STS-B/train.tsv",
            (
                "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                "0\tg\tf\ty\to\ts\ts\ta\tb\tfive\n"
            ),
            2,
            "score 'five' is not a number",
        ),
        (
            "stsb",
            "glue/STS-B/train.tsv",
            (
                "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                "0\tg\tf\ty\to\ts\ts\ta\tb\t7.5\n"
            ),
            2,
            r"score 7.5 lies outside \[0.0, 5.0\]",
        ),
        (
            "mrpc",
            "glue/MRPC/train.tsv",
            "\ufeffQuality\t#1 ID\t#1 String\n1\t2\ta\n",
            1,
            r"header \['Quality', '#1 ID', '#1 String'\] lacks the columns \['#2 String'\]",
        ),
        (
            "cb",
            "superglue/CB/train.jsonl",
            '{"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0}\n{"premise": "a",\n',
            2,
            "invalid JSON",
        ),
        (
            "cb",
            "superglue/CB/train.jsonl",
            '{"premise": "a", "label": "neutral", "idx": 0}\n',
            1,
            r"missing keys \['hypothesis'\]",
        ),
        (
            "boolq",
            "superglue/BoolQ/train.jsonl",
            '{"question": "q", "passage": "p", "label": "yes", "idx": 0}\n',
            1,
            "label 'yes' is not a boolean",
        ),
        (
            "copa",
            "superglue/COPA/train.jsonl",
            '{"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0, "idx": 0}\n',
            1,
            "question 'why' is neither 'cause' nor 'effect'",
        ),
        (
            "multirc",
            "superglue/MultiRC/train.jsonl",
            '{"idx": 0, "passage": {"text": "t"}}\n',
            1,
            "expected {idx, passage: {text, questions",
        ),
        (
            "wsc",
            "superglue/WSC/train.jsonl",
            '{"text": "He ran.", "target": {"span1_index": 5, "span1_text": "Mark", "span2_index": 0, "span2_text": "He"}, "idx": 0, "label": true}\n',
            1,
            "span 'Mark' at word 5 lies outside the text",
        ),
    ],
)
def test_malformed_rows_name_task_file_and_line(
    tmp_path: Path, task: str, relative: str, text: str, line: int, problem: str
) -> None:
    path = _with(tmp_path, relative, text)
    with pytest.raises(DataError, match=rf"task '{task}', {path}, line {line}: {problem}"):
        get_task(task).load_official("train", "local", tmp_path)


def test_missing_file_names_the_task_and_every_path_looked_at(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        get_task("mnli").load_official("dev_mismatched", "local", tmp_path)
    message = str(caught.value)
    assert message.startswith("task 'mnli': the dev_mismatched file is missing")
    assert str(tmp_path / "glue/MNLI/dev_mismatched.tsv") in message
    assert str(tmp_path / "glue/MNLI/dev_mismatched.jsonl") in message
    with pytest.raises(
        DataError, match=r"task 'boolq': the train file is missing: looked for .*superglue/BoolQ/train.jsonl"
    ):
        get_task("boolq").load_split("train", source="local", data_dir=str(tmp_path))


def test_missing_data_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="the data directory .*nowhere' does not exist"):
        get_task("rte").load_official("train", "local", tmp_path / "nowhere")


def test_resolve_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHA_DATA_DIR", raising=False)
    assert resolve_source("auto", None) == ("hub", None)
    assert resolve_source("auto", str(tmp_path)) == ("local", str(tmp_path))
    monkeypatch.setenv("PHA_DATA_DIR", str(tmp_path))
    assert resolve_source("auto", None) == ("local", str(tmp_path))
    assert resolve_source("local", None) == ("local", str(tmp_path))
    assert resolve_source("hub", None) == ("hub", None)  # an explicit hub ignores $PHA_DATA_DIR
    with pytest.raises(ConfigError, match="data.source=hub but data.data_dir=.* is set too"):
        resolve_source("hub", str(tmp_path))
    with pytest.raises(ConfigError, match=r"data.data_dir '.*nowhere' is not a directory \(from \$PHA_DATA_DIR\)"):
        monkeypatch.setenv("PHA_DATA_DIR", str(tmp_path / "nowhere"))
        resolve_source("auto", None)
    monkeypatch.delenv("PHA_DATA_DIR")
    with pytest.raises(ConfigError, match="data.source=local needs data.data_dir"):
        resolve_source("local", None)
    with pytest.raises(ConfigError, match=r"unknown data source 'ftp'"):
        resolve_source("ftp", None)


# ----------------------------------------------------------------------------- templates and inputs
def test_text_to_text_sources_and_targets(data_dir: Path) -> None:
    def first(task: str, official: str = "train") -> tuple[str, str]:
        record = get_task(task).load_official(official, "local", data_dir)[0]
        return get_task(task).seq2seq_source(record), get_task(task).seq2seq_target(record)

    assert first("cola") == (
        "cola sentence: Our friends won't buy this analysis, let alone the next one we propose.",
        "1",
    )
    assert first("rte") == (
        "rte sentence1: No Weapons of Mass Destruction Found in Iraq Yet. sentence2: Weapons of Mass Destruction Found in Iraq.",
        "1",
    )
    assert first("stsb")[1] == "5.0"
    stsb = get_task("stsb")
    # data.md: scores are rounded to the nearest 0.2 (not 0.1 as in earlier codebases).
    assert [stsb.seq2seq_target({"label": value}) for value in (3.8, 3.75, 2.3, 0.1, 4.9)] == [
        "3.8",
        "3.8",
        "2.4",
        "0.2",
        "5.0",
    ]
    assert first("mnli") == (
        (
            "mnli premise: Conceptually cream skimming has two dimensions. "
            "hypothesis: Product and geography are what make cream skimming work. "
        ),
        "1",
    )
    assert first("qqp")[0].startswith('qqp question1: How is the life of a "math" student? question2: Which')
    assert first("copa", "dev") == (
        (
            "copa premise: The man turned on the faucet. choice1: The toilet filled with water. "
            "choice2: Water flowed from the spout. question: effect"
        ),
        "1",
    )
    assert first("multirc") == (
        "multirc question: Where does Gerd live? answer: Bonn paragraph: Sent 1: Gerd lives in Bonn.",
        "1",
    )
    assert first("wic")[0] == (
        "wic sentence1: Do you want to come over to my place later? "
        "sentence2: A political system with no place for the less prominent groups. word: place"
    )
    assert first("wsc") == (
        (
            "wsc text: * Mark * told Pete many lies about himself, which Pete included in his book. "
            "# He # should have been more skeptical."
        ),
        "0",
    )
    assert first("boolq") == ("boolq question: is the sky blue passage: Sky -- The sky is blue.", "1")
    assert first("superglue_rte")[0] == "superglue_rte premise: No weapons found. hypothesis: Weapons found."


def test_encoder_inputs(data_dir: Path) -> None:
    def first(task: str, official: str = "train") -> tuple[str, str | None]:
        return get_task(task).encoder_text(get_task(task).load_official(official, "local", data_dir)[0])

    assert first("sst2") == ("hide new secretions from the parental units ", None)
    assert first("mrpc")[1].startswith("Referring to him")
    assert first("copa", "dev") == (
        "The man turned on the faucet. What happened as a result?",
        "choice1: The toilet filled with water. choice2: Water flowed from the spout.",
    )
    assert first("copa")[0] == "My body cast a shadow over the grass. What was the cause?"
    assert first("multirc") == ("Where does Gerd live? Bonn", "Sent 1: Gerd lives in Bonn.")
    assert first("wic") == (
        "place: Do you want to come over to my place later?",
        "A political system with no place for the less prominent groups.",
    )
    assert first("wsc")[1] is None and first("wsc")[0].startswith("* Mark * told Pete")
    assert first("boolq") == ("is the sky blue", "Sky -- The sky is blue.")


@pytest.mark.parametrize(
    ("args", "marked"),
    [
        # multi-word noun; punctuation glued to a span stays outside the marks
        (
            ("The trophy doesn't fit into the brown suitcase because it is too large.", 0, "The trophy", 9, "it"),
            "* The trophy * doesn't fit into the brown suitcase because # it # is too large.",
        ),
        (("Jane told Susan that she was late.", 2, "Susan", 4, "she"), "Jane told * Susan * that # she # was late."),
        (("Bob paid him.", 0, "Bob", 2, "him"), "* Bob * paid # him #."),
        # pronoun before the noun
        (("When he arrived, Tom sat down.", 3, "Tom", 1, "he"), "When # he # arrived, * Tom * sat down."),
        # an off-by-one index (the official files have a few; wsc.fixed corrects them) finds the nearest match
        (("I saw Anna and she saw me.", 3, "Anna", 4, "she"), "I saw * Anna * and # she # saw me."),
        # case differs between the span text and the text
        (("the dog chased it.", 0, "The dog", 3, "it"), "* the dog * chased # it #."),
    ],
)
def test_wsc_marking(args: tuple, marked: str) -> None:
    assert mark_wsc_spans(*args) == marked


@pytest.mark.parametrize(
    ("args", "marked"),
    [
        # as in the official validation file: the noun phrase contains the pronoun, both start at one word
        (("Sam saw his mother at the shop.", 2, "his mother", 2, "his"), "Sam saw * # his # mother * at the shop."),
        (("Sam saw his mother.", 2, "his mother", 3, "mother"), "Sam saw * his # mother # *."),  # ends together
        (("He ran home.", 0, "He", 0, "He"), "* # He # * ran home."),  # the same word
        (("a b c d", 0, "a b c", 1, "b c d"), "* a # b c * d #"),  # crossing spans
    ],
)
def test_wsc_overlapping_spans_nest_their_marks(args: tuple, marked: str) -> None:
    assert mark_wsc_spans(*args) == marked


def test_official_wsc_example_with_overlapping_spans_loads_on_both_paths(tmp_path: Path) -> None:
    """An example shaped like the official WSC validation file's overlapping ones loads, and both
    the encoder text and the T5 source show the nested marks."""
    example = {
        "text": "Bob's uncle fed his dog because his dog was hungry.",
        "target": {"span1_index": 6, "span1_text": "his dog", "span2_index": 6, "span2_text": "his"},
        "idx": 7,
        "label": False,
    }
    root = write_files(tmp_path, {"superglue/WSC/val.jsonl": json.dumps(example) + "\n"})
    task = get_task("wsc")
    [record] = task.load_official("dev", "local", root)
    marked = "Bob's uncle fed his dog because * # his # dog * was hungry."
    assert task.encoder_text(record) == (marked, None)
    assert task.seq2seq_source(record) == f"wsc text: {marked}"
    assert task.seq2seq_target(record) == "0"


# ----------------------------------------------------------------------------- split protocol
def _big_sst2(root: Path, train: int, dev: int) -> Path:
    rows = "".join(f"sentence number {i} \t{i % 2}\n" for i in range(train))
    _with(root, "glue/SST-2/train.tsv", "sentence\tlabel\n" + rows)
    _with(root, "glue/SST-2/dev.tsv", "sentence\tlabel\n" + "".join(f"dev {i} \t{i % 2}\n" for i in range(dev)))
    return root


def _ids(records: list[dict]) -> list:
    return [json.dumps(record["idx"], sort_keys=True) for record in records]


def test_large_task_validation_is_drawn_from_train_and_removed(tmp_path: Path) -> None:
    root = _big_sst2(tmp_path, 1200, 30)
    task = get_task("sst2")
    splits = protocol_records(task, ["train", "validation", "test"], source="local", data_dir=root, data_seed=7)
    assert len(splits["validation"]) == LARGE_TASK_VALIDATION_SIZE and len(splits["train"]) == 200
    assert set(_ids(splits["train"])).isdisjoint(_ids(splits["validation"]))
    assert sorted(_ids(splits["train"]) + _ids(splits["validation"])) == sorted(
        _ids(task.load_official("train", "local", root))
    )
    assert splits["test"] == task.load_official("dev", "local", root)
    again = protocol_records(task, ["validation", "train"], source="local", data_dir=root, data_seed=7)
    assert again["validation"] == splits["validation"] and again["train"] == splits["train"]
    other = protocol_records(task, ["validation"], source="local", data_dir=root, data_seed=8)
    assert other["validation"] != splits["validation"]
    # without the protocol: validation = test = dev
    plain = protocol_records(
        task, ["train", "validation", "test"], source="local", data_dir=root, split_validation_test=False
    )
    assert len(plain["train"]) == 1200 and plain["validation"] == plain["test"] == splits["test"]


def test_large_task_with_too_little_train_data_is_an_error(tmp_path: Path) -> None:
    root = _big_sst2(tmp_path, 1000, 3)
    with pytest.raises(DataError, match="task 'sst2': its train split has 1000 examples, too few to carve out 1000"):
        get_task("sst2").load_split("validation", source="local", data_dir=str(root))


def test_small_task_dev_is_halved_into_validation_and_test(tmp_path: Path) -> None:
    rows = "".join(f"{i}\tpremise {i}\thypothesis {i}\tentailment\n" for i in range(11))
    _with(tmp_path, "glue/RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n" + rows)
    _with(tmp_path, "glue/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    task = get_task("rte")
    splits = protocol_records(task, ["train", "validation", "test"], source="local", data_dir=tmp_path)
    assert (len(splits["validation"]), len(splits["test"])) == (5, 6)
    assert set(_ids(splits["validation"])).isdisjoint(_ids(splits["test"]))
    assert sorted(_ids(splits["validation"]) + _ids(splits["test"])) == sorted(
        _ids(task.load_official("dev", "local", tmp_path))
    )
    assert _ids(splits["validation"]) == sorted(_ids(splits["validation"]), key=int)  # original order kept
    assert splits["train"] == task.load_official("train", "local", tmp_path)


def test_multirc_dev_is_halved_by_question(tmp_path: Path) -> None:
    questions = [
        {
            "question": f"q{q}",
            "idx": q,
            "answers": [{"text": f"a{q}-{a}", "idx": 10 * q + a, "label": a % 2} for a in range(1 + q % 3)],
        }
        for q in range(9)
    ]
    line = json.dumps({"idx": 0, "passage": {"text": "p", "questions": questions}})
    _with(tmp_path, "superglue/MultiRC/val.jsonl", line + "\n")
    task = get_task("multirc")
    splits = protocol_records(task, ["validation", "test"], source="local", data_dir=tmp_path)
    groups = [{record["group"] for record in splits[split]} for split in ("validation", "test")]
    assert len(groups[0]) == 4 and len(groups[1]) == 5 and groups[0].isdisjoint(groups[1])
    by_group = {}
    for record in task.load_official("dev", "local", tmp_path):
        by_group.setdefault(record["group"], []).append(record)
    for split in ("validation", "test"):
        assert sorted(_ids(splits[split])) == sorted(
            _ids([r for group in {r["group"] for r in splits[split]} for r in by_group[group]])
        )


def test_mnli_validation_is_mismatched_and_test_is_matched(data_dir: Path) -> None:
    task = get_task("mnli")
    for protocol in (True, False):
        splits = protocol_records(
            task, ["validation", "test"], source="local", data_dir=data_dir, split_validation_test=protocol
        )
        assert splits["validation"] == EXPECTED[("mnli", "dev_mismatched")]
        assert splits["test"] == EXPECTED[("mnli", "dev")]


def test_fixture_files_cover_every_task() -> None:
    directories = {relative.split("/")[0] + "/" + relative.split("/")[1] for relative in FILES}
    named = {str(Path(path).parent) for name in (*GLUE_TASKS, *SUPERGLUE_TASKS) for path in get_task(name).spec.paths}
    assert named <= directories
