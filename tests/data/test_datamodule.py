from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pha_lightning.data.catalog import get_task
from pha_lightning.data.datamodule import PHADataModule, subsample_groups
from pha_lightning.data.examples import LABEL_PAD_ID

TASKS = ["synth_polarity", "synth_match", "synth_score"]
MINILM = "pypi:all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def encoder_dm() -> PHADataModule:
    dm = PHADataModule(TASKS, backbone=MINILM, batch_size=8, eval_batch_size=16, n_train=24, seed=3)
    dm.setup("fit")
    return dm


def test_encoder_train_batch_layout(encoder_dm: PHADataModule) -> None:
    assert encoder_dm.family == "encoder"
    batch = next(iter(encoder_dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "task_ids", "targets"}
    width = batch["input_ids"].shape[1]
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].shape == (8, width) and batch[key].dtype == torch.long
    assert batch["task_ids"].shape == (8,) and batch["task_ids"].dtype == torch.long
    assert batch["targets"].shape == (8,) and batch["targets"].dtype == torch.float32
    # Dynamic padding: the longest example fills the width, padding is masked out.
    assert batch["attention_mask"].sum(1).max() == width
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()


def test_train_batches_mix_tasks_and_carry_their_targets(encoder_dm: PHADataModule) -> None:
    tokenizer = encoder_dm.tokenizer
    task_ids = []
    for batch in encoder_dm.train_dataloader():
        task_ids += batch["task_ids"].tolist()
        for row, task_id in enumerate(batch["task_ids"].tolist()):
            task = encoder_dm.task_objects[task_id]
            text = tokenizer.decode(batch["input_ids"][row], skip_special_tokens=True)
            record = next(r for r in task.load_split("train") if " ".join(filter(None, task.encoder_text(r))) == text)
            assert batch["targets"][row] == task.target_value(record)
    assert set(task_ids) == {0, 1, 2}
    assert len(encoder_dm.train_dataloader()) == 9  # ceil(3 tasks * 24 / 8)


def test_sentence_pairs_get_segment_ids(encoder_dm: PHADataModule) -> None:
    match_batch = next(iter(encoder_dm.val_dataloader()[1]))
    polarity_batch = next(iter(encoder_dm.val_dataloader()[0]))
    assert match_batch["token_type_ids"].max() == 1
    assert polarity_batch["token_type_ids"].max() == 0


def test_n_train_draws_exactly_n_per_task_deterministically(encoder_dm: PHADataModule) -> None:
    assert [len(dataset) for dataset in encoder_dm.datasets["train"]] == [24, 24, 24]
    again = PHADataModule(TASKS, backbone=MINILM, n_train=24, seed=3)
    again.setup("fit")
    assert again.datasets["train"][0]["input_ids"] == encoder_dm.datasets["train"][0]["input_ids"]


def test_n_train_larger_than_a_task_keeps_all_with_a_warning() -> None:
    # The paper's n_train=4000 setting must still run on RTE (2 490 train examples).
    dm = PHADataModule(["synth_score"], backbone=MINILM, n_train=301)
    with pytest.warns(UserWarning, match="n_train=301 but task 'synth_score' has only 300 train examples"):
        dm.setup("fit")
    assert len(dm.datasets["train"][0]) == 300


def test_val_loaders_one_per_task_sorted_longest_first(encoder_dm: PHADataModule) -> None:
    loaders = encoder_dm.val_dataloader()
    assert len(loaders) == len(TASKS)
    for task_id, loader in enumerate(loaders):
        lengths, targets = [], []
        for batch in loader:
            assert (batch["task_ids"] == task_id).all()
            lengths += batch["attention_mask"].sum(1).tolist()
            targets += batch["targets"].tolist()
        assert lengths == sorted(lengths, reverse=True)
        assert len(lengths) == 100
        expected = [get_task(TASKS[task_id]).target_value(r) for r in get_task(TASKS[task_id]).load_split("validation")]
        assert sorted(targets) == sorted(expected)


def test_validation_keeps_a_fixed_subset_and_test_the_whole_split() -> None:
    dm = PHADataModule(["synth_polarity", "synth_score"], backbone=MINILM, val_max_examples=30)
    dm.setup("validate")
    dm.setup("test")
    assert [len(d) for d in dm.datasets["validation"]] == [30, 30]
    assert [len(d) for d in dm.datasets["test"]] == [100, 100]
    again = PHADataModule(["synth_polarity", "synth_score"], backbone=MINILM, val_max_examples=30, seed=7, data_seed=42)
    again.setup("validate")
    assert list(again.datasets["validation"][1]["input_ids"]) == list(dm.datasets["validation"][1]["input_ids"])
    whole = PHADataModule(["synth_polarity"], backbone=MINILM, val_max_examples=None)
    whole.setup("validate")
    assert len(whole.datasets["validation"][0]) == 100


def test_grouped_validation_keeps_whole_groups_within_the_cap() -> None:
    groups = [g for g in range(40) for _ in range(1 + g % 4)]  # 40 questions of 1-4 answers
    records = [{"group": g, "row": i} for i, g in enumerate(groups)]
    kept = subsample_groups(records, 30, 0, "multirc/validation", groups)
    kept_groups = {r["group"] for r in kept}
    assert 26 <= len(kept) <= 30  # the largest group holds 4: at most 3 short of the cap
    assert sum(groups.count(g) for g in kept_groups) == len(kept)  # every kept group is whole
    assert [r["row"] for r in kept] == sorted(r["row"] for r in kept)
    assert kept == subsample_groups(records, 30, 0, "multirc/validation", groups)
    assert kept != subsample_groups(records, 30, 1, "multirc/validation", groups)
    assert len(subsample_groups(records[1:3], 1, 0, "t", groups[1:3])) == 2  # one whole group even above the cap


def test_test_and_predict_loaders_use_the_test_split() -> None:
    dm = PHADataModule(["synth_polarity"], backbone=MINILM, eval_batch_size=50)
    dm.setup("test")
    assert "train" not in dm.datasets
    (test_loader,) = dm.test_dataloader()
    (predict_loader,) = dm.predict_dataloader()
    test_batches, predict_batches = list(test_loader), list(predict_loader)
    assert len(test_batches) == 2
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(test_batches, predict_batches))


def test_train_sampler_shards_by_trainer_rank(encoder_dm: PHADataModule) -> None:
    indices = []
    for rank in range(2):
        encoder_dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        try:
            sampler = encoder_dm.train_dataloader().batch_sampler
        finally:
            encoder_dm.trainer = None
        assert (sampler.num_replicas, sampler.rank) == (2, rank)
        indices.append({index for batch in sampler for index in batch})
    assert indices[0].isdisjoint(indices[1])


def test_seq2seq_batch_layout(tiny_t5: str) -> None:
    dm = PHADataModule(["synth_polarity", "synth_score"], backbone=tiny_t5, batch_size=6, n_train=12)
    assert dm.family == "seq2seq"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "task_ids", "targets"}
    assert batch["labels"].dtype == torch.long and batch["labels"].shape[0] == 6
    tokenizer = dm.tokenizer
    for row, task_id in enumerate(batch["task_ids"].tolist()):
        task = dm.task_objects[task_id]
        source = tokenizer.decode(batch["input_ids"][row], skip_special_tokens=True)
        assert "".join(source.split()).startswith(f"{task.name}sentence:")  # WordPiece decodes with spaces
        label_ids = batch["labels"][row]
        target = tokenizer.decode(label_ids[label_ids != LABEL_PAD_ID], skip_special_tokens=True)
        assert task.parse_generation(target.replace(" ", "")) == pytest.approx(float(batch["targets"][row]))
    if (batch["labels"] == LABEL_PAD_ID).any():
        assert (batch["labels"][batch["labels"] != LABEL_PAD_ID] != 0).all()
    lengths = (batch["labels"] != LABEL_PAD_ID).sum(1)
    assert lengths.max() == batch["labels"].shape[1]


def test_seq2seq_labels_are_padded_with_minus_100(tiny_t5: str) -> None:
    dm = PHADataModule(["synth_polarity", "synth_score"], backbone=tiny_t5, eval_batch_size=200)
    dm.setup("validate")
    polarity, score = (next(iter(loader)) for loader in dm.val_dataloader())
    # "0"/"1" tokenise shorter than "3.0", so a batch mixing them would pad; within a task the
    # label width is constant, and the regression labels are longer than the class labels.
    assert score["labels"].shape[1] > polarity["labels"].shape[1]
    collated = dm.collator()([dm.datasets["validation"][0][0], dm.datasets["validation"][1][0]])
    assert (collated["labels"][0] == LABEL_PAD_ID).sum() == score["labels"].shape[1] - polarity["labels"].shape[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"tasks": ["synth_polarity", "glue_nope"]},
            r"unknown tasks \['glue_nope'\]; available tasks: \[.*'synth_score'",
        ),
        ({"tasks": []}, "tasks must be a non-empty list"),
        ({"tasks": "synth_polarity"}, "tasks must be a non-empty list"),
        ({"tasks": ["synth_match", "synth_match"]}, r"tasks \['synth_match'\] are listed more than once"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"sampling": "round_robin"}, r"unknown data.sampling 'round_robin'; valid: \['mixed', 'task'\]"),
        ({"n_train": 0}, "n_train must be >= 1 or None, got 0"),
        ({"percent_train": 0.0}, r"percent_train must be in \(0, 100\] or None, got 0.0"),
        ({"percent_train": 101}, r"percent_train must be in \(0, 100\] or None, got 101"),
        ({"n_train": 10, "percent_train": 5.0}, "give n_train or percent_train, not both"),
        ({"source": "ftp"}, r"unknown data.source 'ftp'; valid: \['auto', 'local', 'hub'\]"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict, message: str) -> None:
    arguments = {"tasks": ["synth_polarity"], **kwargs}
    with pytest.raises(ValueError, match=message):
        PHADataModule(**arguments)


# ----------------------------------------------------------------------------- GLUE/SuperGLUE data
@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory):
    from glue_fixtures import write_files

    return write_files(tmp_path_factory.mktemp("glue_files"))


def test_multirc_eval_batches_carry_question_groups_and_train_batches_do_not(fixture_dir, tmp_path) -> None:
    dm = PHADataModule(
        ["multirc", "rte"],
        backbone=MINILM,
        data_dir=str(fixture_dir),
        cache_dir=str(tmp_path),
        batch_size=4,
        split_validation_test=False,
    )
    dm.setup("fit")
    multirc_val, rte_val = (next(iter(loader)) for loader in dm.val_dataloader())
    assert multirc_val["groups"].tolist() == [0, 0] and multirc_val["groups"].dtype == torch.long
    assert "groups" not in rte_val
    assert "groups" not in next(iter(dm.train_dataloader()))
    # the collator fills -1 for an example without a group if a batch ever mixes them
    mixed = dm.collator()([dm.datasets["validation"][0][0], dm.datasets["validation"][1][0]])
    assert mixed["groups"].tolist() == [0, -1]


def test_tokenised_splits_are_cached_on_disk_and_reused(fixture_dir, tmp_path, monkeypatch) -> None:
    def build(**kwargs) -> PHADataModule:
        dm = PHADataModule(
            ["rte", "cola", "multirc"],
            backbone=MINILM,
            data_dir=str(fixture_dir),
            cache_dir=str(tmp_path),
            split_validation_test=False,
            **kwargs,
        )
        dm.setup("fit")
        return dm

    first = build()
    files = sorted(p.name for p in (tmp_path / "tokenized").iterdir())
    arrows = [name for name in files if name.endswith(".arrow")]
    assert len(arrows) == 6 and files == sorted([*arrows, *(f"{name}.sha256.json" for name in arrows)])

    from pha_lightning.data import token_cache

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again although the cache holds this split")

    monkeypatch.setattr(token_cache, "tokenize_columns", no_tokenising)
    second = build()
    for split in ("train", "validation"):
        for a, b in zip(first.datasets[split], second.datasets[split]):
            assert a.to_dict() == b.to_dict()
    # any change of what is tokenised, or how, needs new files
    monkeypatch.undo()
    build(max_source_length=16)
    assert len(list((tmp_path / "tokenized").glob("*.arrow"))) == 12


def test_cache_can_be_turned_off(fixture_dir, tmp_path) -> None:
    dm = PHADataModule(
        ["rte"],
        backbone=MINILM,
        data_dir=str(fixture_dir),
        cache_dir=str(tmp_path),
        cache_tokenized=False,
        split_validation_test=False,
    )
    dm.setup("validate")
    assert not (tmp_path / "tokenized").exists()
    assert len(dm.datasets["validation"][0]) == 1


def test_a_split_left_empty_by_the_protocol_is_an_error(fixture_dir) -> None:
    dm = PHADataModule(["rte"], backbone=MINILM, data_dir=str(fixture_dir))  # one dev row: validation gets 0
    with pytest.raises(ValueError, match="task 'rte' has no validation examples"):
        dm.setup("validate")


def test_synthetic_tasks_need_no_data_source(monkeypatch) -> None:
    monkeypatch.setenv("PHA_DATA_DIR", "/nonexistent/pha")
    dm = PHADataModule(["synth_polarity"], backbone=MINILM, source="local")
    dm.setup("validate")
    assert len(dm.datasets["validation"][0]) == 100


def test_source_errors_surface_at_setup(monkeypatch, tmp_path) -> None:
    from pha_lightning.errors import ConfigError, DataError

    monkeypatch.delenv("PHA_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="data.source=local needs data.data_dir"):
        PHADataModule(["rte"], backbone=MINILM, source="local").setup("fit")
    import datasets

    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: real(*a, cache_dir=str(tmp_path), **k))
    with pytest.raises(DataError, match="task 'rte': the Hugging Face hub could not be reached"):
        PHADataModule(["rte"], backbone=MINILM).setup("fit")  # auto without a data_dir: the hub


@pytest.mark.parametrize("stage", ["fit", "predict"])
def test_source_length_past_the_encoders_positions_fails_at_setup(stage: str, monkeypatch) -> None:
    """Checked against the data module's own tokenizer, which setup loads once (and keeps) for it."""
    import pha_lightning.data.datamodule as datamodule
    from pha_lightning.errors import ConfigError

    loads = []
    real = datamodule.load_tokenizer
    monkeypatch.setattr(datamodule, "load_tokenizer", lambda name: loads.append(name) or real(name))
    dm = PHADataModule(["synth_polarity"], backbone=MINILM, max_source_length=513)
    with pytest.raises(ConfigError, match=r"data.max_source_length must be <= 512 .*got 513"):
        dm.setup(stage)
    assert loads == [MINILM]
    dm.max_source_length = 512
    dm.setup(stage)
    assert loads == [MINILM] and dm.tokenizer.model_max_length == 512


def test_data_seed_defaults_to_seed_and_can_be_pinned() -> None:
    assert PHADataModule(["synth_polarity"], seed=5).data_seed == 5
    assert PHADataModule(["synth_polarity"], seed=5, data_seed=42).data_seed == 42
    pinned = [PHADataModule(["synth_polarity"], backbone=MINILM, n_train=10, seed=s, data_seed=42) for s in (1, 2)]
    for dm in pinned:
        dm.setup("fit")
    assert pinned[0].datasets["train"][0]["input_ids"] == pinned[1].datasets["train"][0]["input_ids"]
