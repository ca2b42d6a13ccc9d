"""What a run reports beyond its loss: the retriever's task identification on validation (checked
against a direct nearest-prototype computation), the TensorBoard retrieval projector and the
training throughput."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from production_fixtures import MAX_SOURCE_LENGTH, TASKS, trained_checkpoint
from torch.nn import functional as F

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.callbacks import RetrievalProjector, RetrieverTaskAccuracy, Throughput, batch_token_count
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.settings import OptimConfig
from pha_lightning.training.system import PHAModule

pytestmark = pytest.mark.slow  # trains with the callbacks


class CountingAccuracy(RetrieverTaskAccuracy):
    """Also counts the examples whose ``z`` the listener saw."""

    seen = 0

    def on_retrieval(self, pl_module, z, task_ids) -> None:  # noqa: ANN001
        super().on_retrieval(pl_module, z, task_ids)
        CountingAccuracy.seen += len(task_ids)


@pytest.mark.parametrize("chunk_cost_tokens", [None, 0])
def test_retriever_task_accuracy_is_the_nearest_prototype_hit_rate(
    tmp_path_factory: pytest.TempPathFactory, chunk_cost_tokens: int | None
) -> None:
    """Over every validation example, also when the forward runs each batch in length-sorted chunks
    (the retriever is then called once per chunk)."""
    model = PHAModule.load_from_checkpoint(
        trained_checkpoint(tmp_path_factory), map_location="cpu", weights_only=True, chunk_cost_tokens=chunk_cost_tokens
    )
    data = PHADataModule(tasks=TASKS, eval_batch_size=32, max_source_length=MAX_SOURCE_LENGTH)
    CountingAccuracy.seen = 0
    trainer = quiet_trainer(limit_val_batches=2, callbacks=[CountingAccuracy()])
    trainer.validate(model, datamodule=data, verbose=False)
    logged = float(trainer.callback_metrics["retriever/val_task_accuracy"])
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for loader in data.val_dataloader():
            for index, batch in enumerate(loader):
                if index == 2:
                    break
                z = model.model.retrieval_forward(batch)
                nearest = (F.normalize(z, dim=-1) @ model.model.prototypes.normalized().T).argmax(-1)
                correct += int((nearest == batch["task_ids"]).sum())
                total += len(nearest)
    assert CountingAccuracy.seen == total
    assert logged == pytest.approx(100 * correct / total, abs=1e-4)
    assert not model.model.retriever._forward_hooks and not model.model._forward_hooks  # only during validation


def test_retrieval_projector_writes_each_tasks_vectors_and_the_prototypes(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = PHAModule.load_from_checkpoint(trained_checkpoint(tmp_path_factory), map_location="cpu", weights_only=True)
    data = PHADataModule(tasks=TASKS, eval_batch_size=4, max_source_length=MAX_SOURCE_LENGTH)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = quiet_trainer(limit_val_batches=2, logger=logger, callbacks=[RetrievalProjector(points_per_task=5)])
    trainer.validate(model, datamodule=data, verbose=False)
    logger.experiment.flush()
    (projector,) = Path(logger.log_dir).glob("*/retrieval")
    vectors = torch.tensor(
        [[float(x) for x in line.split("\t")] for line in (projector / "tensors.tsv").read_text().splitlines()]
    )
    header, *rows = [line.split("\t") for line in (projector / "metadata.tsv").read_text().splitlines()]
    assert header == ["kind", "task"]
    # 5 of each task's 8 validation examples (2 batches of 4), then one prototype per task
    assert rows == [["example", t] for t in TASKS for _ in range(5)] + [["prototype", t] for t in TASKS]
    expected = []
    model.eval()
    with torch.no_grad():
        for loader in data.val_dataloader():
            batches = iter(loader)
            z = torch.cat([model.model.retrieval_forward(next(batches)) for _ in range(2)])[:5]
            expected.append(F.normalize(z, dim=-1))
    expected.append(model.model.prototypes.normalized())
    torch.testing.assert_close(vectors, torch.cat(expected), atol=1e-5, rtol=0)  # tsv keeps ~6 digits
    assert "retrieval" in (Path(logger.log_dir) / "projector_config.pbtxt").read_text()


def test_retrieval_projector_rejects_a_nonpositive_cap() -> None:
    with pytest.raises(ValueError, match="points_per_task must be >= 1, got 0"):
        RetrievalProjector(points_per_task=0)


def test_throughput_counts_examples_and_real_tokens(tmp_path: Path) -> None:
    data = PHADataModule(tasks=TASKS[:2], n_train=16, batch_size=8, max_source_length=MAX_SOURCE_LENGTH)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch_token_count(batch) == int(batch["attention_mask"].sum()) < batch["input_ids"].numel()
    model = PHAModule(PHAConfig(tasks=TASKS[:2]), optim=OptimConfig(warmup_steps=0))
    trainer = quiet_trainer(
        max_steps=3, enable_checkpointing=False, limit_val_batches=0, callbacks=[Throughput(window=2)]
    )
    trainer.fit(model, datamodule=data)
    examples, tokens = (float(trainer.callback_metrics[f"throughput/{k}_per_s"]) for k in ("examples", "tokens"))
    assert 0 < examples < 10_000 and tokens > examples  # several real tokens per example
