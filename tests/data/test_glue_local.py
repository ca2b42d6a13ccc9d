"""The genuine GLUE/SuperGLUE files in ``../shared/data`` (seen from the repository root): documented
row counts, known rows, the split protocol and the low-data draw. Skipped where the files are absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from glue_fixtures import protocol_records

from pha_lightning.data.benchmark import LARGE_TASK_VALIDATION_SIZE
from pha_lightning.data.catalog import benchmark_tasks, get_task
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.errors import ConfigError, DataError

GLUE_TASKS, SUPERGLUE_TASKS = benchmark_tasks("glue"), benchmark_tasks("superglue")

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = [
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no local benchmark data at {SHARED_DATA}"),
    pytest.mark.slow,  # reads the whole local GLUE files
]

#: The row counts of the official GLUE/SuperGLUE files (the counts the benchmarks publish): (task, official split) → rows.
DOCUMENTED_ROWS = {
    ("cola", "train"): 8551, ("cola", "dev"): 1043,
    ("sst2", "train"): 67349, ("sst2", "dev"): 872,
    ("mrpc", "train"): 3668, ("mrpc", "dev"): 408,
    ("stsb", "train"): 5749, ("stsb", "dev"): 1500,
    ("qnli", "dev"): 5463,
    ("mnli", "dev"): 9815,
    ("rte", "train"): 2490, ("rte", "dev"): 277,
    ("wnli", "train"): 635, ("wnli", "dev"): 71,
    ("boolq", "dev"): 3270,
    ("cb", "train"): 250, ("cb", "dev"): 56,
    ("copa", "train"): 400, ("copa", "dev"): 100,
    ("multirc", "train"): 27243, ("multirc", "dev"): 4848,
    ("superglue_rte", "train"): 2490, ("superglue_rte", "dev"): 277,
}  # fmt: skip
#: Tasks whose every protocol split can be built from the local files.
COMPLETE = ["cola", "sst2", "mrpc", "stsb", "rte", "wnli", "cb", "copa", "multirc", "superglue_rte"]
LOCAL_GLUE_TRAIN = ["cola", "sst2", "mrpc", "stsb", "rte"]


@pytest.fixture(scope="module")
def official() -> dict[tuple[str, str], list[dict]]:
    loaded = {}
    for name in (*GLUE_TASKS, *SUPERGLUE_TASKS):
        task = get_task(name)
        for split in task.official_names:
            if task.has_local(split, SHARED_DATA):
                loaded[(name, split)] = task.load_official(split, "local", SHARED_DATA)
    return loaded


def test_every_local_file_loads_with_the_documented_row_count(official: dict) -> None:
    assert {key: len(records) for key, records in official.items()} == DOCUMENTED_ROWS


def test_known_rows(official: dict) -> None:
    assert official[("cola", "train")][0] == {
        "sentence": "Our friends won't buy this analysis, let alone the next one we propose.",
        "label": 1,
        "idx": 0,
    }
    assert official[("sst2", "train")][0]["sentence"] == "hide new secretions from the parental units "
    mrpc = official[("mrpc", "train")][0]
    assert mrpc["label"] == 1 and mrpc["sentence1"].startswith(
        'Amrozi accused his brother , whom he called " the witness "'
    )
    assert official[("stsb", "train")][1]["label"] == pytest.approx(3.8)
    assert official[("rte", "train")][0]["label"] == 1  # not_entailment
    assert official[("rte", "dev")][1]["label"] == 0  # entailment
    assert official[("mnli", "dev")][0] == {
        "premise": "The new rights are nice enough",
        "hypothesis": "Everyone really likes the newest benefits ",
        "label": 1,
        "idx": 0,
    }
    assert official[("boolq", "dev")][0]["label"] == 0 and official[("cb", "dev")][0]["label"] == 1  # contradiction
    first = official[("multirc", "train")][0]
    assert (first["answer"], first["label"], first["group"]) == ("Children, Gerd, or Dorian Popa", 0, 0)
    assert len({r["group"] for r in official[("multirc", "train")]}) == 5131
    assert len({r["group"] for r in official[("multirc", "dev")]}) == 953
    # GLUE RTE and SuperGLUE RTE hold the same examples under their own column names and label
    # ids; their texts differ only where SuperGLUE dropped quote characters (70 of 2 490 rows)
    glue_rte, super_rte = official[("rte", "train")], official[("superglue_rte", "train")]
    assert [r["label"] for r in glue_rte] == [r["label"] for r in super_rte]
    differ = [i for i, (a, b) in enumerate(zip(glue_rte, super_rte)) if a["sentence1"] != b["premise"]]
    assert len(differ) <= 70
    assert all(
        glue_rte[i]["sentence1"].replace('"', "") == super_rte[i]["premise"].replace('"', "") for i in differ[:5]
    )
    # quote characters are text (QUOTE_NONE): no row swallowed a neighbour
    assert all("\t" not in r["sentence"] and "\n" not in r["sentence"] for r in official[("sst2", "train")])


def test_files_missing_here_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"task 'qqp': the train file is missing: looked for .*glue/QQP/train.tsv"):
        get_task("qqp").load_split("train", source="local", data_dir=str(SHARED_DATA))
    with pytest.raises(
        DataError, match=r"task 'mnli': the dev_mismatched file is missing: looked for .*dev_mismatched.tsv"
    ):
        get_task("mnli").load_split("validation", source="local", data_dir=str(SHARED_DATA))
    with pytest.raises(DataError, match=r"task 'qnli': the train file is missing"):
        get_task("qnli").load_split("validation", source="local", data_dir=str(SHARED_DATA))
    assert len(get_task("mnli").load_split("test", source="local", data_dir=str(SHARED_DATA))) == 9815


def _keys(records: list[dict]) -> set[str]:
    return {json.dumps(record["idx"], sort_keys=True) for record in records}


@pytest.mark.parametrize("name", COMPLETE)
def test_protocol_splits_are_disjoint_complete_and_seeded(name: str, official: dict) -> None:
    task = get_task(name)
    options = {"source": "local", "data_dir": str(SHARED_DATA)}
    splits = protocol_records(task, ["train", "validation", "test"], data_seed=42, **options)
    train, dev = official[(name, "train")], official[(name, "dev")]
    if task.protocol == "large":
        assert len(splits["validation"]) == LARGE_TASK_VALIDATION_SIZE
        assert _keys(splits["train"]).isdisjoint(_keys(splits["validation"]))
        assert _keys(splits["train"]) | _keys(splits["validation"]) == _keys(train)
        assert splits["test"] == dev
    else:
        assert splits["train"] == train
        assert _keys(splits["validation"]).isdisjoint(_keys(splits["test"]))
        assert _keys(splits["validation"]) | _keys(splits["test"]) == _keys(dev)
        units = len({r.get("group", i) for i, r in enumerate(dev)})
        assert len({r.get("group", i) for i, r in enumerate(splits["validation"])}) == units // 2 or name == "multirc"
        if name != "multirc":
            assert len(splits["validation"]) == len(dev) // 2
    again = protocol_records(task, ["test", "validation", "train"], data_seed=42, **options)
    assert again == splits
    other = task.load_splits(["validation"], data_seed=43, **options)
    assert _keys(other["validation"]) != _keys(splits["validation"])


def test_n_train_100_yields_exactly_100_per_task_and_same_seed_same_draw() -> None:
    def draw(data_seed: int) -> PHADataModule:
        dm = PHADataModule(
            LOCAL_GLUE_TRAIN,
            data_dir=str(SHARED_DATA),
            n_train=100,
            data_seed=data_seed,
            batch_size=8,
            val_max_examples=None,
        )
        dm.setup("fit")
        return dm

    dm = draw(42)
    assert [len(d) for d in dm.datasets["train"]] == [100] * len(LOCAL_GLUE_TRAIN)
    assert [len(d) for d in dm.datasets["validation"]] == [521, 1000, 204, 750, 138]
    again, other = draw(42), draw(7)
    for a, b, c in zip(dm.datasets["train"], again.datasets["train"], other.datasets["train"]):
        assert a["input_ids"] == b["input_ids"] and a["input_ids"] != c["input_ids"]


def test_percent_train_draws_a_share_of_every_task() -> None:
    dm = PHADataModule(["rte", "cb"], data_dir=str(SHARED_DATA), percent_train=10, eval_batch_size=256)
    dm.setup("fit")
    assert [len(d) for d in dm.datasets["train"]] == [249, 25]


def test_train_from_validation_draws_boolq_support_from_its_validation_half_only() -> None:
    """BoolQ has no local train file: few-shot runs draw its k examples from the validation half,
    never from the test half."""
    with pytest.raises(DataError, match="boolq.*train file is missing"):
        PHADataModule(["boolq"], data_dir=str(SHARED_DATA), n_train=16).setup("fit")
    dm = PHADataModule(
        ["boolq", "cb"],
        data_dir=str(SHARED_DATA),
        n_train=16,
        train_from_validation=["boolq"],
        eval_batch_size=512,
        val_max_examples=None,
    )
    with pytest.warns(UserWarning, match="'boolq': train examples are drawn from its validation split"):
        dm.setup(None)
    boolq_train, boolq_val, boolq_test = (
        dm.datasets[split][0]["input_ids"] for split in ("train", "validation", "test")
    )
    assert len(boolq_train) == 16 and len(boolq_val) == 3270 // 2
    assert all(ids in boolq_val for ids in boolq_train)
    assert not any(ids in boolq_test for ids in boolq_train)
    cb_train = get_task("cb").load_official("train", "local", SHARED_DATA)
    assert len(dm.datasets["train"][1]) == 16 < len(cb_train)  # other tasks keep their train split


def test_train_from_validation_must_name_a_task_of_the_run() -> None:
    with pytest.raises(
        ConfigError, match=r"train_from_validation names \['copa'\], which are not among the tasks \['cb'\]"
    ):
        PHADataModule(["cb"], train_from_validation=["copa"])
