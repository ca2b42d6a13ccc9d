"""T5 path evaluation: rank classification against a per-example reference, and MultiRC's groups."""

from __future__ import annotations

import pytest
import torch

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.system import PHAModule

pytestmark = pytest.mark.slow  # trains and decodes T5 models

TASKS = ["synth_polarity", "synth_category", "synth_score"]


@pytest.fixture(scope="module")
def t5_model_and_batch(tiny_t5: str):
    torch.manual_seed(0)
    model = PHAModule(
        PHAConfig(backbone=tiny_t5, tasks=TASKS, backbone_init="random", hypernet_init_scale=1.0, seq2seq_eval="rank")
    ).eval()
    data = PHADataModule(tasks=TASKS, backbone=tiny_t5, batch_size=9, max_source_length=32, seed=2)
    data.setup("fit")
    return model, next(iter(data.train_dataloader()))


def _reference_choice(model: PHAModule, batch: dict, row: int) -> float:
    """Score each candidate of one example with a plain teacher-forced forward and pick the best."""
    task = model.model.task_objects[int(batch["task_ids"][row])]
    best, best_score = None, -float("inf")
    for candidate in task.rank_candidates():
        labels = torch.tensor([model.model.tokenizer(text_target=candidate)["input_ids"]])
        single = {
            "input_ids": batch["input_ids"][row : row + 1],
            "attention_mask": batch["attention_mask"][row : row + 1],
            "task_ids": batch["task_ids"][row : row + 1],
            "labels": labels,
        }
        with torch.no_grad():
            logits = model(single)["lm_logits"]
        score = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).sum().item()
        if score > best_score:
            best, best_score = candidate, score
    return task.parse_generation(best)


def test_rank_classification_matches_a_per_example_reference(t5_model_and_batch) -> None:
    model, batch = t5_model_and_batch
    assert len(set(batch["task_ids"].tolist())) > 1  # mixed tasks: candidates differ per row
    values = model.model.predict_values(batch)
    assert not torch.isnan(values).any()  # ranking never yields an invalid prediction
    expected = [_reference_choice(model, batch, row) for row in range(len(values))]
    assert values.tolist() == pytest.approx(expected)


def test_unknown_seq2seq_eval_is_named(tiny_t5: str) -> None:
    with pytest.raises(ValueError, match="unknown model.arch.seq2seq_eval 'beam'"):
        PHAModule(PHAConfig(backbone=tiny_t5, tasks=TASKS, backbone_init="random", seq2seq_eval="beam"))


def test_eval_step_passes_question_groups_to_grouped_metrics() -> None:
    model = PHAModule(PHAConfig(tasks=["multirc"]))
    seen = {}
    metrics = model.val_metrics["multirc"]
    original = metrics.update
    metrics.update = lambda preds, target, **kw: seen.update(kw) or original(preds, target, **kw)
    batch = {
        "input_ids": torch.tensor([[101, 2000, 102], [101, 2001, 102]]),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "token_type_ids": torch.zeros(2, 3, dtype=torch.long),
        "task_ids": torch.tensor([0, 0]),
        "targets": torch.tensor([1.0, 0.0]),
        "groups": torch.tensor([7, 7]),
    }
    model.eval()
    model.validation_step(batch, 0)
    assert seen["groups"].tolist() == [7, 7]
    assert set(metrics.compute()) == {"f1a", "em"}
