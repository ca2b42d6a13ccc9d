"""The zero-started output scale of generated adapters (``generated_output_scale``): transparent at
init, the released adapters when the scale is 1, and gradients reaching the hypernetwork after one step."""

from __future__ import annotations

import pytest
import torch

from pha_lightning.errors import ConfigError
from pha_lightning.model.backbone import load_backbone
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.hypernetwork import HyperNetwork
from pha_lightning.model.pha import PHAModel
from pha_lightning.model.retriever import masked_mean

D_MODEL, R, LAYERS = 24, 8, 3
TASKS = ["synth_polarity", "synth_category", "synth_match"]
SCALES = ["layer", "task_layer"]


def set_scale_to_one(hyper: HyperNetwork) -> None:
    """Make the output scale exactly 1 everywhere (a zero weight and a unit bias for the generated one)."""
    with torch.no_grad():
        for name, param in hyper.output_scale.named_parameters():
            param.copy_(torch.zeros_like(param) if name.endswith("weight") else torch.ones_like(param))


@pytest.mark.parametrize("mode", SCALES)
def test_scale_starts_at_zero_and_at_one_is_the_released_generator(mode: str) -> None:
    torch.manual_seed(0)
    released = HyperNetwork(D_MODEL, R, LAYERS, init_scale=1.0).double()
    assert released.output_scale is None  # the default: the released generator, no scale parameter
    after_released = torch.rand(())
    torch.manual_seed(0)
    scaled = HyperNetwork(D_MODEL, R, LAYERS, init_scale=1.0, output_scale=mode).double()
    assert torch.equal(torch.rand(()), after_released)  # the scale draws no random number
    for name, param in released.state_dict().items():  # every shared parameter initialised alike
        assert torch.equal(scaled.state_dict()[name], param), name

    cond, group_of = torch.randn(2, 64, dtype=torch.float64), torch.tensor([1, 0, 1])
    start = scaled(cond, group_of)
    assert not start.up_w.any() and not start.up_b.any()  # the adapter's output is exactly 0
    set_scale_to_one(scaled)
    for name, part in scaled(cond, group_of).parts().items():
        assert torch.equal(part, released(cond, group_of).parts()[name]), name


def tiny_batch(size: int = 6, length: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[::2, length - 3 :] = 0
    return {
        "input_ids": torch.randint(1000, 2000, (size, length), generator=generator),
        "attention_mask": mask,
        "task_ids": torch.arange(size) % len(TASKS),
    }


def test_fresh_hyperformer_with_a_scale_is_the_frozen_backbone(tiny_bert: str) -> None:
    """HyperFormer generates every block's adapter: with the scale at 0 its pooled output is the
    frozen backbone's, exactly (what the task heads read)."""
    torch.manual_seed(0)
    model = PHAModel(
        PHAConfig(backbone=tiny_bert, backbone_init="random", tasks=TASKS, method="hyperformer",
                  generated_output_scale="layer", hypernet_init_scale=10.0)
    ).eval()  # fmt: skip
    torch.manual_seed(0)
    backbone = load_backbone(tiny_bert, "random").eval()  # the model's backbone is the first thing it draws
    batch = tiny_batch()
    with torch.no_grad():
        pooled = model(batch)["pooled"]
        frozen = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(pooled, masked_mean(frozen, batch["attention_mask"]), rtol=0, atol=0)


@pytest.mark.parametrize("mode", SCALES)
def test_only_the_scale_learns_at_step_zero_then_the_hypernetwork_does(tiny_bert: str, mode: str) -> None:
    """LoRA's B = 0 situation: at init the hypernetwork's gradient is exactly 0 and the scale's is
    not; after one optimiser step (scale ≠ 0) the hypernetwork and the prototypes get gradients."""
    torch.manual_seed(0)
    model = PHAModel(PHAConfig(backbone=tiny_bert, backbone_init="random", tasks=TASKS, generated_output_scale=mode))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scale = dict(model.hypernetwork.output_scale.named_parameters())
    others = {
        n: p for n, p in [*model.hypernetwork.named_parameters(), *model.prototypes.named_parameters()]
        if not n.startswith("output_scale.")
    }  # fmt: skip

    def backward() -> None:
        optimizer.zero_grad(set_to_none=False)
        model(tiny_batch())["pooled"].square().sum().backward()

    backward()
    assert all(p.grad.abs().sum() > 0 for n, p in scale.items() if n.endswith(("scale", "weight"))), scale
    assert all(not p.grad.any() for p in others.values())
    optimizer.step()
    backward()
    assert [n for n, p in others.items() if not p.grad.any()] == []


def test_scale_is_refused_where_no_bottleneck_adapter_is_generated() -> None:
    with pytest.raises(ConfigError, match="generated_output_scale 'layer'.*method 'pha' with adapter_kind 'lora'"):
        PHAConfig(tasks=TASKS, adapter_kind="lora", generated_output_scale="layer")
    with pytest.raises(ConfigError, match="generated_output_scale 'task_layer'.*method 'adapter'"):
        PHAConfig(tasks=TASKS, method="adapter", generated_output_scale="task_layer")
    with pytest.raises(ConfigError, match=r"unknown model.arch.generated_output_scale 'task'; valid: \['none'"):
        PHAConfig(tasks=TASKS, generated_output_scale="task")


@pytest.mark.parametrize("mode", SCALES)
def test_bundle_keeps_the_scale_and_its_precomputed_adapters_include_it(
    pretrained_tiny: dict[str, str], tmp_path, mode: str
) -> None:
    """A bundle records the setting and the scale's weights; precomputed adapters hold the scaled
    adapters, so served and generated outputs agree."""
    torch.manual_seed(0)
    model = PHAModel(
        PHAConfig(backbone=pretrained_tiny["bert"], tasks=TASKS, generated_output_scale=mode, hypernet_init_scale=10.0)
    ).eval()
    with torch.no_grad():
        for param in model.hypernetwork.output_scale.parameters():
            param.normal_(0.0, 1.0)  # a trained, non-zero scale
        expected = model(tiny_batch())["pooled"]
    assert not torch.allclose(expected, PHAModel(model.config).eval()(tiny_batch())["pooled"])  # the scale matters
    path = model.save_pretrained(tmp_path / "bundle", precompute=True)
    for precomputed in (True, False):
        again = PHAModel.from_pretrained(path, use_precomputed_adapters=precomputed).eval()
        assert again.config.generated_output_scale == mode
        with torch.no_grad():
            torch.testing.assert_close(again(tiny_batch())["pooled"], expected)
