"""One rank of the 2-process sharding test (tests/training/test_sharding.py), run by ``torchrun``.

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/sharded_worker.py BACKBONE OUT``
(BACKBONE: a pretrained directory, so that ``pha test`` and ``pha export`` rebuild the same backbone)

1. Equivalence: a float64 PHA model sharded per block (FSDP2, gloo) against an unsharded copy with
   the same weights: each rank runs half of a batch; the mean of the ranks' losses and the
   (FSDP-averaged) gradients must equal the unsharded model's on the two halves. Also records how
   much of the frozen weights this rank holds.
2. A Lightning run with ``pha_fsdp``: two steps with validation (T5 generation, the health probe,
   retriever accuracy), the checkpoint it writes, then a resume of that checkpoint for one step more.
Each rank writes ``OUT/rank<r>.json``; rank 0 also ``OUT/weights.pt`` (the trained weights).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch import seed_everything
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.sharding import full_tensor, shard_model
from pha_lightning.training.callbacks import RetrieverTaskAccuracy, TrainingHealth
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.sharding import PHAShardedStrategy
from pha_lightning.training.system import PHAModule

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


def make_batch(vocab: int, seq2seq: bool) -> dict[str, torch.Tensor]:
    """8 examples (two of each task), some padding, valid targets; T5 labels when ``seq2seq``."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(8, 12, dtype=torch.long)
    mask[::3, 7:] = 0
    task_ids = torch.arange(8) % len(TASKS)
    targets = torch.tensor([0.0, 1.0, 1.0, 0.5, 1.0, 2.0, 0.0, -0.5])
    batch = {"input_ids": torch.randint(5, vocab, (8, 12), generator=gen), "attention_mask": mask}
    batch |= {"task_ids": task_ids, "targets": targets}
    if seq2seq:
        batch["labels"] = torch.randint(5, vocab, (8, 3), generator=gen)
    return batch


def half(batch: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    return {k: v[rank::2] for k, v in batch.items()}


def equivalence(backbone: str, rank: int) -> dict:
    arch = PHAConfig(backbone=backbone, tasks=TASKS)
    systems = []
    for _ in range(2):
        torch.manual_seed(0)
        systems.append(PHAModule(arch).double().eval())  # eval: no dropout; float64: only summation order differs
    reference, sharded = systems
    model = sharded.model
    batch = make_batch(model.backbone.config.vocab_size, model.family == "seq2seq")
    ref_losses = [reference.loss_terms(half(batch, r))["loss"] for r in (0, 1)]
    (sum(ref_losses) / 2).backward()
    shard_model(model, init_device_mesh("cpu", (2,)))
    loss = sharded.loss_terms(half(batch, rank))["loss"]
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    grad_errors = {
        n: float((full_tensor(p.grad) - ref_grads[n]).abs().max() / ref_grads[n].abs().max().clamp_min(1e-300))
        for n, p in sharded.named_parameters()
        if p.requires_grad
    }
    frozen = [p for p in sharded.parameters() if not p.requires_grad]
    return {
        "loss": float(mean_loss / 2),
        "reference_loss": float(sum(ref_losses) / 2),
        "grad_relative_errors": grad_errors,
        "trainable": sorted(ref_grads),
        "frozen_with_grad": sum(p.grad is not None for p in frozen),
        "frozen_all_sharded": all(isinstance(p, DTensor) for p in frozen),
        "frozen_local_numel": sum(p.to_local().numel() for p in frozen),
        "frozen_numel": sum(p.numel() for p in frozen),
    }


def lightning_run(backbone: str, out: Path, rank: int) -> dict:
    seed_everything(0)
    system = PHAModule(PHAConfig(backbone=backbone, tasks=TASKS))
    data = PHADataModule(
        tasks=TASKS, backbone=backbone, n_train=8, batch_size=4, eval_batch_size=8, max_source_length=32
    )
    settings = {"max_steps": 2, "val_check_interval": 2, "limit_val_batches": 1, "check_val_every_n_epoch": None}
    trainer = quiet_trainer(
        strategy=PHAShardedStrategy(),
        devices=2,
        default_root_dir=str(out),
        enable_checkpointing=True,
        callbacks=[TrainingHealth(probe_examples=4), RetrieverTaskAccuracy()],
        **settings,
    )
    trainer.fit(system, datamodule=data)
    ckpt = out / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    weights = {
        name: full_tensor(p.detach()).cpu().clone()
        for name, p in system.named_parameters()
        if name.removeprefix("model.") in system.model.saved_state_keys()
    }
    if rank == 0:
        torch.save(weights, out / "weights.pt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # resume from the full checkpoint under the same strategy: weights and optimiser state load sharded
    seed_everything(0)
    resumed = PHAModule(PHAConfig(backbone=backbone, tasks=TASKS))
    settings["max_steps"] = 3
    trainer = quiet_trainer(strategy=PHAShardedStrategy(), devices=2, enable_checkpointing=False, **settings)
    trainer.fit(resumed, datamodule=data, ckpt_path=str(ckpt))
    return {"metrics": metrics, "resumed_step": trainer.global_step}


def main() -> None:
    backbone, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    report = {"equivalence": equivalence(backbone, rank)}
    report.update(lightning_run(backbone, out, rank))
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
