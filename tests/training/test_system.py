"""PHAModule behaviour on the offline suite: what trains, what stays frozen, what the retriever learns."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.nn import functional as F

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.settings import LossConfig, OptimConfig
from pha_lightning.training.system import PHAModule

pytestmark = pytest.mark.slow  # trains PHA on MiniLM

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]
TRAINABLE_PREFIXES = ("shared_adapters.", "hypernetwork.", "retriever.", "prototypes.", "heads.")


def _trainer(max_steps: int, **kwargs) -> Trainer:
    return quiet_trainer(max_steps=max_steps, enable_checkpointing=False, limit_val_batches=0, **kwargs)


@pytest.fixture(scope="module")
def data() -> PHADataModule:
    dm = PHADataModule(tasks=TASKS, batch_size=32, max_source_length=48, temperature=2.0)
    dm.setup("fit")
    return dm


def test_only_pha_parameters_train_and_backbone_stays_bit_identical(data: PHADataModule) -> None:
    seed_everything(0)
    model = PHAModule(PHAConfig(tasks=TASKS), optim=OptimConfig(learning_rate=1e-3, warmup_steps=0))
    trainable = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(TRAINABLE_PREFIXES) for n in trainable)
    assert not any(p.requires_grad for p in model.model.backbone.parameters())

    batch = next(iter(data.train_dataloader()))
    model.loss_terms(batch)["loss"].backward()
    with_grad = {n for n, p in model.model.named_parameters() if p.grad is not None}
    assert with_grad == trainable  # every PHA part receives a gradient, nothing else does
    model.zero_grad(set_to_none=True)

    frozen_before = {k: v.clone() for k, v in model.model.backbone.state_dict().items()}
    trainable_before = {n: p.detach().clone() for n, p in model.model.named_parameters() if p.requires_grad}
    _trainer(max_steps=3).fit(model, datamodule=data)
    for key, value in model.model.backbone.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    moved = [
        n for n, p in model.model.named_parameters() if p.requires_grad and not torch.equal(p, trainable_before[n])
    ]
    assert {n.split(".")[0] for n in moved} == {p.rstrip(".") for p in TRAINABLE_PREFIXES}


def test_eval_generates_each_task_once_until_parameters_change(data: PHADataModule) -> None:
    model = PHAModule(PHAConfig(tasks=TASKS)).eval()
    calls = []
    model.model.hypernetwork.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    loaders = data.val_dataloader()
    with torch.no_grad():
        for loader in loaders:
            for batch in loader:
                model.model.predict_values(batch)
        assert calls == [1] * len(TASKS)  # one generation per task, reused over its batches
        model.model.predict_values(next(iter(loaders[0])))
        assert len(calls) == len(TASKS)
        model.model.prototypes.weight.add_(0.5)  # an in-place update, as an optimizer step makes
        model.model.predict_values(next(iter(loaders[0])))
    assert len(calls) == len(TASKS) + 1


def test_eval_cache_matches_fresh_generation(data: PHADataModule) -> None:
    model = PHAModule(PHAConfig(tasks=TASKS, hypernet_init_scale=1.0)).eval()
    batch = next(iter(data.train_dataloader()))  # mixed tasks
    with torch.no_grad():
        cached = model.model.generated_weights(batch["task_ids"])
    fresh = model.model.generated_weights(batch["task_ids"])  # grad enabled: no cache
    for name in ("down_w", "down_b", "up_w", "up_b", "group_of"):
        torch.testing.assert_close(getattr(cached, name), getattr(fresh, name).detach())


class _SamplerEpochs(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.first_batches: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.epochs.append(trainer.train_dataloader.batch_sampler.epoch)
            self.first_batches.append(batch["input_ids"][:, 1].tolist())


def test_training_advances_the_sampler_epoch() -> None:
    dm = PHADataModule(tasks=TASKS[:2], batch_size=8, n_train=16, num_batches_per_epoch=2)
    model = PHAModule(PHAConfig(tasks=TASKS[:2]), optim=OptimConfig(warmup_steps=0))
    recorder = _SamplerEpochs()
    _trainer(max_steps=6, callbacks=[recorder]).fit(model, datamodule=dm)
    assert recorder.epochs == [0, 1, 2]
    assert recorder.first_batches[0] != recorder.first_batches[1]


def test_bf16_mixed_precision_gives_finite_losses() -> None:
    dm = PHADataModule(tasks=TASKS, batch_size=16, max_source_length=48)
    model = PHAModule(PHAConfig(tasks=TASKS), optim=OptimConfig(warmup_steps=0))
    losses = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    _trainer(max_steps=3, precision="bf16-mixed", callbacks=[Record()]).fit(model, datamodule=dm)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)


def test_retriever_identifies_tasks_after_short_training(data: PHADataModule) -> None:
    """A nearest-prototype classifier on retrieval vectors names each validation example's task."""
    seed_everything(0)
    model = PHAModule(PHAConfig(tasks=TASKS), optim=OptimConfig(learning_rate=1e-3, warmup_steps=5))
    _trainer(max_steps=40).fit(model, datamodule=data)
    model.eval()
    correct = total = 0
    prototypes = model.model.prototypes.normalized()
    with torch.no_grad():
        for loader in data.val_dataloader():
            for batch in loader:
                z = model(batch)["z"]
                nearest = (F.normalize(z, dim=-1) @ prototypes.T).argmax(-1)
                correct += int((nearest == batch["task_ids"]).sum())
                total += len(nearest)
    assert correct / total >= 0.9, f"nearest-prototype task accuracy {correct / total:.3f}"


def test_unknown_task_and_bad_constants_are_named() -> None:
    with pytest.raises(ValueError, match="synth_nope"):
        PHAModule(PHAConfig(tasks=["synth_nope"]))
    with pytest.raises(ValueError, match="'both'.*exclude_positive"):
        PHAModule(PHAConfig(tasks=TASKS), loss=LossConfig(pro_denominator="both"))
    with pytest.raises(ValueError, match="model.loss.contrastive_temperature must be > 0, got 0"):
        PHAModule(PHAConfig(tasks=TASKS), loss=LossConfig(contrastive_temperature=0))


@pytest.mark.parametrize("regression_target", ["normalized", "raw"])
def test_regression_loss_weight_scales_only_the_regression_heads_mse(
    data: PHADataModule, regression_target: str
) -> None:
    """L_task = (Σ classification CE·n_t + w·MSE_score·n_score) / n: a batch mixing a classification
    task and the regression task, against that formula with the model's own head outputs. The
    regression head is trained on the target mapped from its range to [-1, 1] (``normalized``)
    or on the raw value (``raw``, the old behaviour)."""
    batch = next(iter(data.train_dataloader()))
    assert {0, 3} <= set(batch["task_ids"].tolist())  # synth_polarity (classes) and synth_score (regression)
    seed_everything(0)
    model = PHAModule(
        PHAConfig(tasks=TASKS, regression_target=regression_target), loss=LossConfig(regression_loss_weight=0.25)
    ).eval()
    with torch.no_grad():
        out = model(batch)
        loss = model.task_loss(out, batch)
        outputs, _ = model.model.heads.outputs(out["pooled"], batch["task_ids"])
        preds = model.model.predict_values(batch)
    expected = torch.zeros(())
    for task, (idx, head_out) in outputs.items():
        target = batch["targets"][idx]
        task_object = model.model.task_objects[task]
        if task_object.is_regression:
            low, high = task_object.target_range
            center, half = ((low + high) / 2, (high - low) / 2) if regression_target == "normalized" else (0.0, 1.0)
            expected += 0.25 * F.mse_loss(head_out.squeeze(-1), (target.float() - center) / half) * len(idx)
            # predictions are on the task's own scale
            torch.testing.assert_close(preds[idx], head_out.squeeze(-1) * half + center)
        else:
            expected += F.cross_entropy(head_out, target.long(), label_smoothing=0.1) * len(idx)
    torch.testing.assert_close(loss, expected / len(batch["task_ids"]))
    with pytest.raises(ValueError, match="model.loss.regression_loss_weight must be >= 0, got -1"):
        PHAModule(PHAConfig(tasks=TASKS), loss=LossConfig(regression_loss_weight=-1))
    with pytest.raises(
        ValueError, match=r"unknown model.arch.regression_target 'zscore'; valid: \['normalized', 'raw'\]"
    ):
        PHAModule(PHAConfig(tasks=TASKS, regression_target="zscore"))


def _trained_after_three_steps(data: PHADataModule, kernel: str) -> dict[str, torch.Tensor]:
    seed_everything(0)  # same initial weights, batches and dropout masks for every kernel
    model = PHAModule(
        PHAConfig(tasks=TASKS), optim=OptimConfig(learning_rate=1e-3, warmup_steps=0, adamw_kernel=kernel)
    )
    trainer = _trainer(max_steps=3)
    trainer.fit(model, datamodule=data)
    defaults = trainer.optimizers[0].defaults
    switches = {"default": (None, None), "foreach": (True, None), "fused": (None, True)}[kernel]
    assert (defaults["foreach"], defaults["fused"]) == switches
    return {n: p.detach().clone() for n, p in model.model.named_parameters() if p.requires_grad}


def test_adamw_kernels_foreach_is_bit_identical_and_fused_rounds_alike(data: PHADataModule) -> None:
    reference = _trained_after_three_steps(data, "default")
    foreach, fused = _trained_after_three_steps(data, "foreach"), _trained_after_three_steps(data, "fused")
    assert all(torch.equal(foreach[n], p) for n, p in reference.items())
    worst = max(float((fused[n] - p).abs().max()) for n, p in reference.items())
    assert worst < 1e-5, worst  # the same update up to rounding
    with pytest.raises(ValueError, match=r"model.optim.adamw_kernel.*'apex'.*foreach"):
        OptimConfig(adamw_kernel="apex")
