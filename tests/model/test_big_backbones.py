"""Big-backbone options: the frozen backbone in half precision, and activation checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from pha_lightning.errors import ConfigError
from pha_lightning.model.backbone import load_backbone
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.pha import PHAModel
from pha_lightning.training.system import PHAModule

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


def make_batch(model: PHAModel, batch_size: int = 8, length: int = 12) -> dict[str, torch.Tensor]:
    """Random tokens with some padding, every task present, valid targets (and T5 labels)."""
    gen = torch.Generator().manual_seed(0)
    vocab = model.backbone.config.vocab_size
    mask = torch.ones(batch_size, length, dtype=torch.long)
    mask[::2, length // 2 :] = 0
    task_ids = torch.arange(batch_size) % len(TASKS)
    targets = torch.tensor([float(i % model.task_objects[t].num_labels) for i, t in enumerate(task_ids.tolist())])
    batch = {"input_ids": torch.randint(5, vocab, (batch_size, length), generator=gen), "attention_mask": mask}
    batch |= {"task_ids": task_ids, "targets": targets}
    if model.family == "seq2seq":
        batch["labels"] = torch.randint(5, vocab, (batch_size, 3), generator=gen)
    return batch


def system(backbone: str, **arch: object) -> PHAModule:
    return PHAModule(PHAConfig(backbone=backbone, tasks=TASKS, **{"backbone_init": "random", **arch})).train()


def pretrained_copy(path: str, directory: Path) -> str:
    """The random-init backbone of ``path`` saved as a pretrained model (a bundle needs one)."""
    torch.manual_seed(0)
    load_backbone(path, "random").save_pretrained(directory)
    AutoTokenizer.from_pretrained(path).save_pretrained(directory)
    return str(directory)


def gradients(module: PHAModule, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)  # the same dropout masks in both runs
    loss = module.loss_terms(batch)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_t5"])
@pytest.mark.parametrize(
    "arch", [{"method": "pha"}, {"method": "pha", "adapter_kind": "lora"}, {"method": "hyperdecoder"}]
)
def test_activation_checkpointing_recomputes_blocks_with_generated_adapters_and_keeps_gradients(
    backbone: str, arch: dict, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(backbone)
    torch.manual_seed(0)
    plain = system(path, **arch)
    checkpointed = system(path, activation_checkpointing=True, **arch)
    checkpointed.model.load_state_dict(plain.model.state_dict())
    batch = make_batch(plain.model)
    calls = {"plain": 0, "checkpointed": 0}
    for name, module in (("plain", plain), ("checkpointed", checkpointed)):
        net = module.model.backbone
        for block in (
            [*net.encoder.block, *net.decoder.block] if module.model.family == "seq2seq" else net.encoder.layer
        ):
            inner = block.layer[0] if module.model.family == "seq2seq" else block.attention  # inside the checkpoint
            inner.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    loss, grads = gradients(plain, batch)
    loss_ckpt, grads_ckpt = gradients(checkpointed, batch)
    assert calls["checkpointed"] == 2 * calls["plain"] > 0  # every block ran again in the backward pass
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, msg=lambda m, name=name: f"{name}: {m}")
    assert any(g.abs().sum() > 0 for n, g in grads_ckpt.items() if n.startswith("model.hypernetwork"))


@pytest.mark.parametrize(
    ("backbone", "dtype"), [("tiny_bert", "bfloat16"), ("tiny_bert", "float16"), ("tiny_t5", "bfloat16")]
)
def test_a_half_precision_backbone_keeps_trainable_parts_in_float32_and_matches_float32(
    backbone: str, dtype: str, request: pytest.FixtureRequest, tmp_path
) -> None:
    path = pretrained_copy(request.getfixturevalue(backbone), tmp_path / "backbone")
    torch.manual_seed(0)
    full = system(path, backbone_init="pretrained")
    half = system(path, backbone_init="pretrained", backbone_dtype=dtype)
    half.model.load_state_dict(full.model.state_dict())  # the same adapters and heads
    frozen = [p for p in half.model.backbone.parameters()]
    assert {p.dtype for p in frozen} == {getattr(torch, dtype)} and not any(p.requires_grad for p in frozen)
    assert {p.dtype for p in half.parameters() if p.requires_grad} == {torch.float32}
    bytes_of = lambda m: sum(p.numel() * p.element_size() for p in m.model.backbone.parameters())  # noqa: E731
    assert bytes_of(half) * 2 == bytes_of(full)
    batch = make_batch(full.model)
    loss, grads = gradients(full, batch)
    loss_half, grads_half = gradients(half, batch)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads_half.values())
    torch.testing.assert_close(loss_half, loss, rtol=0.03, atol=0.03)
    half.eval()
    bundle = half.model.save_pretrained(tmp_path / "bundle")
    served = PHAModel.from_pretrained(bundle).eval()
    assert next(served.backbone.parameters()).dtype == getattr(torch, dtype)
    with torch.no_grad():
        torch.testing.assert_close(served(batch)["pooled"], half.model(batch)["pooled"])


def test_a_half_precision_backbone_cannot_be_fine_tuned(tiny_bert: str) -> None:
    with pytest.raises(ConfigError, match=r"backbone_dtype 'bfloat16' .* method 'finetune' trains the backbone"):
        PHAConfig(backbone=tiny_bert, tasks=TASKS, method="finetune", backbone_dtype="bfloat16")
    with pytest.raises(ConfigError, match=r"backbone_dtype.*'float64'.*float32"):
        PHAConfig(backbone=tiny_bert, tasks=TASKS, backbone_dtype="float64")
