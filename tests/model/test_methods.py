"""PHA's baselines and ablations: each trains its own parameters, and only those, through one module."""

from __future__ import annotations

import pytest
import torch

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.seq2seq import generate_texts
from pha_lightning.training.settings import LossConfig
from pha_lightning.training.system import PHAModule

pytestmark = pytest.mark.slow  # trains every method

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]

EXPECTED_PARTS = {
    ("pha", 0.1): {"shared_adapters", "hypernetwork", "retriever", "prototypes", "heads"},
    ("pha", 0.0): {"shared_adapters", "hypernetwork", "prototypes", "heads"},  # both λ = 0: no retriever
    ("adapter", 0.1): {"shared_adapters", "heads"},
    ("task_adapter", 0.1): {"task_adapters", "heads"},
    ("hyperformer", 0.1): {"hypernetwork", "prototypes", "heads"},
    ("hyperdecoder", 0.1): {"shared_adapters", "hypernetwork", "retriever", "heads"},
    ("finetune", 0.1): {"backbone", "heads"},
    ("lora", 0.1): {"shared_adapters", "heads"},  # shared LoRA factors
    ("pha_lora", 0.1): {"shared_adapters", "hypernetwork", "retriever", "prototypes", "heads"},
    ("hyperformer_lora", 0.1): {"hypernetwork", "prototypes", "heads"},
    ("hyperdecoder_lora", 0.1): {"shared_adapters", "hypernetwork", "retriever", "heads"},
}


def build(method: str, loss: LossConfig = LossConfig()) -> PHAModule:
    """``<method>_lora``: the method with ``adapter_kind: lora``."""
    name, kind = (method.removesuffix("_lora"), "lora") if method.endswith("_lora") else (method, "bottleneck")
    return PHAModule(PHAConfig(tasks=TASKS, method=name, adapter_kind=kind), loss=loss)


@pytest.fixture(scope="module")
def batches() -> dict[str, dict[str, torch.Tensor]]:
    mixed = PHADataModule(tasks=TASKS, batch_size=16, max_source_length=48, seed=1)
    single = PHADataModule(tasks=TASKS, batch_size=8, max_source_length=48, sampling="task", seed=1)
    mixed.setup("fit"), single.setup("fit")
    return {"mixed": next(iter(mixed.train_dataloader())), "single": next(iter(single.train_dataloader()))}


@pytest.mark.parametrize(("method", "lam"), list(EXPECTED_PARTS))
def test_each_method_trains_exactly_its_parameters(method: str, lam: float, batches) -> None:
    model = build(method, LossConfig(lambda_ir=lam, lambda_pro=lam))
    trainable = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} == EXPECTED_PARTS[(method, lam)]
    for kind in ("mixed", "single"):  # a one-task batch too: DDP needs every parameter in every step
        model.zero_grad(set_to_none=True)
        terms = model.loss_terms(batches[kind])
        assert torch.isfinite(terms["loss"])
        terms["loss"].backward()
        without_grad = [n for n, p in model.model.named_parameters() if p.requires_grad and p.grad is None]
        assert not without_grad, f"{method} on a {kind} batch left {without_grad[:3]} out of the graph"
        assert not any(p.grad is not None for n, p in model.model.named_parameters() if n not in trainable)
    assert set(terms) == ({"ce", "l_ir", "l_pro", "loss"} if method in ("pha", "pha_lora") and lam else {"ce", "loss"})


def test_ablation_keeps_one_contrastive_term(batches) -> None:
    terms = PHAModule(PHAConfig(tasks=TASKS), loss=LossConfig(lambda_ir=0.0)).loss_terms(batches["mixed"])
    assert set(terms) == {"ce", "l_pro", "loss"}
    assert terms["loss"].item() == pytest.approx((terms["ce"] + 0.1 * terms["l_pro"]).item(), rel=1e-6)


def test_hyperdecoder_needs_no_task_id_at_inference(tiny_t5: str) -> None:
    """T5 HyperDecoder: generated adapters come from the example itself, so task ids change nothing."""
    torch.manual_seed(0)
    model = PHAModule(
        PHAConfig(
            backbone=tiny_t5,
            tasks=TASKS,
            method="hyperdecoder",
            backbone_init="random",
            hypernet_init_scale=1.0,
            generation_max_length=4,
        )
    ).eval()
    dm = PHADataModule(tasks=TASKS, backbone=tiny_t5, batch_size=6, max_source_length=32)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        logits = model(batch)["lm_logits"]
        texts = generate_texts(model.model, batch)
        scrambled = {**batch, "task_ids": torch.zeros_like(batch["task_ids"])}
        torch.testing.assert_close(model(scrambled)["lm_logits"], logits, rtol=0, atol=0)
        assert generate_texts(model.model, scrambled) == texts
        # and the adapters really act: a model with other hypernetwork weights decodes differently
        model.model.hypernetwork.up_b.weight.mul_(100.0)
        assert not torch.allclose(model(batch)["lm_logits"], logits)


def test_unknown_method_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown model.arch.method 'prefix'.*'lora'.*hyperdecoder"):
        PHAModule(PHAConfig(tasks=TASKS, method="prefix"))
