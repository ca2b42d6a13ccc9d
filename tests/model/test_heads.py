"""The shared label-word output layer (the encoder analogue of T5's shared vocabulary)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import seed_everything
from torch.nn import functional as F

from pha_lightning.data.catalog import get_task
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.heads import LabelWordHead, TaskHeads
from pha_lightning.training.system import PHAModule

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


def test_task_heads_run_only_present_tasks_and_give_absent_heads_zero_gradients() -> None:
    tasks = [get_task(name) for name in ("cola", "stsb", "rte", "mnli")]
    heads = TaskHeads(8, tasks, dropout=0.0, regression_target="normalized")
    calls = []
    for index, head in enumerate(heads):
        head.register_forward_hook(lambda module, args, out, index=index: calls.append(index))
    pooled = torch.randn(5, 8)
    outputs, zero = heads.outputs(pooled, torch.tensor([3, 1, 3, 1, 3]))
    assert calls == [1, 3] and sorted(outputs) == [1, 3]
    torch.testing.assert_close(outputs[3][1], heads[3](pooled[[0, 2, 4]]))
    assert zero.item() == 0.0
    (sum(out.sum() for _, out in outputs.values()) + zero).backward()
    for index in (0, 2):  # absent: in the graph (DDP needs every parameter), with exactly zero gradients
        assert all(p.grad is not None and not p.grad.any() for p in heads[index].parameters())
    assert all(p.grad.abs().sum() > 0 for p in heads[1].parameters())


def test_vocabulary_is_the_union_of_label_words_and_tasks_score_their_own() -> None:
    tasks = [get_task(name) for name in ("cola", "stsb", "rte")]
    head = LabelWordHead(8, tasks, dropout=0.0)
    grid = tuple(f"{i / 5:.1f}" for i in range(26))  # STS-B: 0.0, 0.2, ... 5.0
    assert head.words == ("0", "1", *grid)  # cola and rte share "0" and "1"
    pooled = torch.randn(5, 8)
    outputs, zero = head.outputs(pooled, torch.tensor([0, 1, 2, 1, 0]))
    logits = head.layer(pooled)
    idx, scores = outputs[1]
    assert idx.tolist() == [1, 3]
    torch.testing.assert_close(scores, logits[[1, 3]][:, 2:])
    torch.testing.assert_close(outputs[2][1], logits[[2]][:, :2])
    assert float(zero) == 0.0
    # regression: trained on the nearest grid point, predicting the best point's value
    assert head.classes(1, torch.tensor([0.0, 3.77, 3.69, 5.0, 5.4])).tolist() == [0, 19, 18, 25, 25]
    best = torch.full((2, 26), -1.0)
    best[0, 19], best[1, 0] = 1.0, 1.0
    torch.testing.assert_close(head.values(1, best), torch.tensor([3.8, 0.0]))
    torch.testing.assert_close(head.values(0, torch.tensor([[0.1, 0.9]])), torch.tensor([1.0]))


@pytest.mark.slow
def test_module_trains_the_label_word_layer_with_label_smoothed_ce() -> None:
    data = PHADataModule(tasks=TASKS, batch_size=32, max_source_length=48, temperature=2.0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    seed_everything(0)
    model = PHAModule(PHAConfig(tasks=TASKS, output_layer="label_words")).eval()
    assert isinstance(model.model.heads, LabelWordHead)
    with torch.no_grad():
        out = model(batch)
        loss = model.task_loss(out, batch)
        logits = model.model.heads.layer(out["pooled"])
        preds = model.model.predict_values(batch)
    expected = torch.zeros(())
    for task in torch.unique(batch["task_ids"]).tolist():
        rows = batch["task_ids"] == task
        words = model.model.heads.task_words[task]
        target = model.model.heads.classes(task, batch["targets"][rows])
        scores = logits[rows][:, words]
        expected += F.cross_entropy(scores, target, label_smoothing=0.1) * int(rows.sum())
        torch.testing.assert_close(preds[rows], model.model.heads.values(task, scores))
    torch.testing.assert_close(loss, expected / len(batch["task_ids"]))
    with pytest.raises(
        ValueError, match=r"unknown model.arch.output_layer 'vocab'; valid: \['task_heads', 'label_words'\]"
    ):
        PHAModule(PHAConfig(tasks=TASKS, output_layer="vocab"))
