from __future__ import annotations

import random

import pytest

from pha_lightning.data.catalog import available_tasks, get_task
from pha_lightning.data.synthetic import (
    ANIMALS,
    DEFAULT_SIZES,
    FOODS,
    NEGATIVE,
    NUMBERS,
    POSITIVE,
    VEHICLES,
    SyntheticTask,
    build_synthetic_suite,
)
from pha_lightning.data.tasks import SPLITS, format_regression_target

NAMES = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


def _texts(task_name: str, split: str) -> list[tuple[str, str | None]]:
    task = get_task(task_name)
    return [task.encoder_text(record) for record in task.load_split(split)]


def test_suite_is_registered_with_its_interface() -> None:
    assert set(NAMES) <= set(available_tasks())
    polarity, category, match, score = (get_task(name) for name in NAMES)
    assert (polarity.label_names, polarity.metric_names, polarity.num_labels) == (("0", "1"), ("accuracy",), 2)
    assert (category.label_names, category.num_labels) == (("0", "1", "2"), 3)
    assert match.metric_names == ("f1", "accuracy")
    assert score.is_regression and score.num_labels == 1 and score.metric_names == ("pearson", "spearman")
    assert score.target_range == (0.0, 5.0)
    assert not polarity.is_regression


def test_unknown_task_error_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'synth_nope'; available tasks: \[.*'synth_polarity'"):
        get_task("synth_nope")


@pytest.mark.parametrize("name", NAMES)
def test_split_sizes_match_defaults(name: str) -> None:
    task = get_task(name)
    assert {split: len(task.load_split(split)) for split in SPLITS} == DEFAULT_SIZES[name]


def test_train_sizes_differ_between_tasks() -> None:
    assert len({DEFAULT_SIZES[name]["train"] for name in NAMES}) == len(NAMES)


def test_same_seed_gives_identical_records_and_other_seed_differs() -> None:
    first, again, other = (build_synthetic_suite(seed=seed)[0] for seed in (7, 7, 8))
    assert first.load_split("train") == again.load_split("train")
    assert first.load_split("train") != other.load_split("train")


def test_custom_sizes_keep_evaluation_splits_unchanged() -> None:
    small = build_synthetic_suite(sizes={"synth_match": {"train": 10, "validation": 100, "test": 100}})[2]
    assert len(small.load_split("train")) == 10
    assert small.load_split("validation") == get_task("synth_match").load_split("validation")


def test_sizes_for_unknown_task_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown synthetic tasks \['synth_typo'\]"):
        build_synthetic_suite(sizes={"synth_typo": {"train": 1, "validation": 1, "test": 1}})


def test_oversized_request_fails_instead_of_looping() -> None:
    def draw_letter(rng: random.Random) -> tuple[dict[str, str], float]:
        return {"sentence": rng.choice("abcdefghijklmnopqrstuvwxyz")}, 0.0

    sizes = {"train": 100, "validation": 1, "test": 1}
    tiny = SyntheticTask("tiny", draw_letter, ("sentence",), ("0",), ("accuracy",), sizes)
    with pytest.raises(ValueError, match=r"'tiny': could only draw \d+ distinct train records of the 100 requested"):
        tiny.load_split("train")


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_disjoint_and_free_of_duplicates(name: str) -> None:
    texts = {split: _texts(name, split) for split in SPLITS}
    for split in SPLITS:
        assert len(set(texts[split])) == len(texts[split])
    assert not set(texts["train"]) & set(texts["validation"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["validation"]) & set(texts["test"])


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown split 'dev'; valid splits: \['train', 'validation', 'test'\]"):
        get_task("synth_polarity").load_split("dev")


@pytest.mark.parametrize("name", NAMES)
def test_targets_lie_in_label_space_and_every_label_occurs(name: str) -> None:
    task = get_task(name)
    values = {task.target_value(record) for record in task.load_split("train")}
    if task.is_regression:
        assert values == {float(v) for v in range(len(NUMBERS))}
    else:
        assert values == {float(i) for i in range(task.num_labels)}


@pytest.mark.parametrize("name", NAMES)
def test_seq2seq_targets_parse_back_to_the_target(name: str) -> None:
    task = get_task(name)
    for record in task.load_split("validation"):
        assert task.parse_generation(task.seq2seq_target(record)) == pytest.approx(task.target_value(record))


def test_parse_generation_rejects_invalid_strings() -> None:
    polarity, score = get_task("synth_polarity"), get_task("synth_score")
    assert polarity.parse_generation(" 1 ") == 1.0
    assert [polarity.parse_generation(text) for text in ("2", "positive", "", "1.0")] == [None] * 4
    assert score.parse_generation("3.4") == pytest.approx(3.4)
    assert [score.parse_generation(text) for text in ("three", "nan", "inf", "")] == [None] * 4


def test_regression_targets_round_to_a_fifth_with_one_decimal() -> None:
    assert [format_regression_target(v) for v in (3.0, 3.37, 3.5, 0.09, 5.0)] == ["3.0", "3.4", "3.6", "0.0", "5.0"]


def test_seq2seq_source_names_the_task_and_fields() -> None:
    match = get_task("synth_match")
    record = match.load_split("test")[0]
    assert match.seq2seq_source(record) == (
        f"synth_match sentence1: {record['sentence1']} sentence2: {record['sentence2']}"
    )
    assert match.encoder_text(record) == (record["sentence1"], record["sentence2"])
    assert get_task("synth_polarity").encoder_text(get_task("synth_polarity").load_split("test")[0])[1] is None


def test_tasks_differ_in_template() -> None:
    # The opening word identifies the task, so a retriever can tell tasks apart from text alone.
    openings = {name: {text.split()[0] for text, _ in _texts(name, "train")} for name in NAMES}
    assert all(len(opening) == 1 for opening in openings.values())
    assert len(set.union(*openings.values())) == len(NAMES)


def test_labels_follow_the_lexical_rules() -> None:
    category = {noun: index for index, nouns in enumerate((ANIMALS, FOODS, VEHICLES)) for noun in nouns}
    for record in get_task("synth_polarity").load_split("train"):
        adjective = record["sentence"].split()[-1]
        assert adjective in POSITIVE + NEGATIVE and record["label"] == float(adjective in POSITIVE)
    for record in get_task("synth_category").load_split("train"):
        assert record["label"] == category[record["sentence"].split()[-1]]
    for record in get_task("synth_match").load_split("train"):
        nouns = (record["sentence1"].split()[4], record["sentence2"].split()[-1])
        assert record["label"] == float(category[nouns[0]] == category[nouns[1]])
    for record in get_task("synth_score").load_split("train"):
        assert record["label"] == NUMBERS.index(record["sentence"].split()[-2])


@pytest.mark.parametrize("name", ["synth_polarity", "synth_match"])
def test_binary_tasks_are_roughly_balanced(name: str) -> None:
    labels = [record["label"] for record in get_task(name).load_split("train")]
    assert 0.4 < sum(labels) / len(labels) < 0.6
