"""What a run reports beyond its loss: the retriever's task identification on validation (checked
against a direct nearest-prototype computation) and the training throughput."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.nn import functional as F

from pha_lightning.callbacks import RetrieverTaskAccuracy, Throughput, batch_token_count
from pha_lightning.datamodule import PHADataModule
from pha_lightning.module import PHAModule
from production_fixtures import MAX_SOURCE_LENGTH, TASKS, trained_checkpoint


def test_retriever_task_accuracy_is_the_nearest_prototype_hit_rate(tmp_path_factory: pytest.TempPathFactory) -> None:
    model = PHAModule.load_from_checkpoint(trained_checkpoint(tmp_path_factory), map_location="cpu", weights_only=True)
    data = PHADataModule(tasks=TASKS, eval_batch_size=32, max_source_length=MAX_SOURCE_LENGTH)
    trainer = Trainer(
        accelerator="cpu", limit_val_batches=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RetrieverTaskAccuracy()],
    )
    trainer.validate(model, datamodule=data, verbose=False)
    logged = float(trainer.callback_metrics["retriever/val_task_accuracy"])
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for loader in data.val_dataloader():
            for index, batch in enumerate(loader):
                if index == 2:
                    break
                z = model.retrieval_forward(batch)
                nearest = (F.normalize(z, dim=-1) @ model.prototypes.normalized().T).argmax(-1)
                correct += int((nearest == batch["task_ids"]).sum())
                total += len(nearest)
    assert logged == pytest.approx(100 * correct / total, abs=1e-4)
    assert not model.retriever._forward_hooks  # the callback listens during validation only


def test_throughput_counts_examples_and_real_tokens(tmp_path: Path) -> None:
    data = PHADataModule(tasks=TASKS[:2], n_train=16, batch_size=8, max_source_length=MAX_SOURCE_LENGTH)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch_token_count(batch) == int(batch["attention_mask"].sum()) < batch["input_ids"].numel()
    model = PHAModule(tasks=TASKS[:2], warmup_steps=0)
    trainer = Trainer(
        accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, use_distributed_sampler=False, callbacks=[Throughput(window=2)],
    )
    trainer.fit(model, datamodule=data)
    examples, tokens = (float(trainer.callback_metrics[f"throughput/{k}_per_s"]) for k in ("examples", "tokens"))
    assert 0 < examples < 10_000 and tokens > examples  # several real tokens per example
