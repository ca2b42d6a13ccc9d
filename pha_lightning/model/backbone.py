"""Backbone loading and wiring: where PHA's adapters and retriever sit inside a frozen transformer.

Two families are supported (docs/method.md, "Where the parts sit"):

* ``seq2seq`` — T5 family (``T5ForConditionalGeneration``): shared adapters in every encoder
  feed-forward sublayer, the retriever on the final encoder output, generated adapters in every
  decoder feed-forward sublayer.
* ``encoder`` — BERT-like encoders loaded with ``AutoModel``: shared adapters in blocks ``[0, k)``,
  the retriever after block ``k-1``, generated adapters in blocks ``[k, N)``.

Adapters run in parallel with the feed-forward sublayer and read its (layer-normed) input; this
module swaps each feed-forward sublayer for a wrapper that adds the adapter branch, leaving the
frozen weights where they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from transformers import AutoModel

from pha_lightning.errors import ConfigError
from pha_lightning.hub import Family, backbone_family, from_hub, load_backbone_config


def backbone_class(name: str) -> type:
    """The transformers auto class a backbone loads with: ``AutoModelForSeq2SeqLM`` (T5), else ``AutoModel``."""
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if backbone_family(name) == "seq2seq" else AutoModel


def load_backbone(name: str, init: Literal["pretrained", "random"] = "pretrained", dtype: str = "float32") -> nn.Module:
    """Load a backbone's weights in ``dtype`` (or build it at random init from its config, for
    tests and cost studies); pretrained weights are read straight into ``dtype``."""
    if init not in ("pretrained", "random"):
        raise ConfigError(f"unknown backbone init {init!r}; valid: ['pretrained', 'random']")
    torch_dtype = getattr(torch, dtype)
    auto = backbone_class(name)
    model = (
        auto.from_config(load_backbone_config(name)).to(torch_dtype)
        if init == "random"
        else from_hub(name, "weights", lambda path: auto.from_pretrained(path, dtype=torch_dtype))
    )
    if getattr(model, "pooler", None) is not None:
        # task heads pool the final states themselves; an unused pooler would leave trainable
        # parameters out of the graph when the backbone is fine-tuned (DDP rejects that)
        model.pooler = None
    return model


#: the dtypes of a frozen backbone held in half precision (``backbone_dtype``)
HALF_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is half precision (a half-precision backbone's states, read by
    float32 parts: retriever, heads); any other dtype (float32, float64 in tests) as it is."""
    return x.float() if x.dtype in HALF_DTYPES else x


def in_float32(part: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``part(x)`` for a trainable part (float32 weights) reading a half-precision frozen stream:
    computed in float32 and returned in the stream's dtype. Any other stream, or autocast (which
    picks the dtype of every product itself), leaves the call as it is."""
    if x.dtype not in HALF_DTYPES or torch.is_autocast_enabled(x.device.type):
        return part(x)
    return part(x.float()).to(x.dtype)


class T5FeedForwardWithAdapter(nn.Module):
    """A T5 feed-forward sublayer with an adapter in parallel.

    ``h + Dropout(FFN(LN(h))) + Adapter(LN(h))``: the adapter reads the same layer-normed input as
    the FFN and bypasses its dropout.
    """

    def __init__(self, ff: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.ff = ff
        self._adapter = (adapter,)  # owned (and registered) by the PHA module, not by the backbone

    @property
    def adapter(self) -> nn.Module:
        return self._adapter[0]

    @staticmethod
    def residual_of(hidden_states: torch.Tensor) -> torch.Tensor:
        """The residual stream entering the sublayer (what the adapter's output is added to)."""
        return hidden_states

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.ff.layer_norm(hidden_states)
        return hidden_states + self.ff.dropout(self.ff.DenseReluDense(x)) + in_float32(self._adapter[0], x)


class EncoderOutputWithAdapter(nn.Module):
    """A post-LN encoder block's feed-forward output (BERT/RoBERTa/MPNet/DeBERTa) with a parallel adapter.

    The sublayer input ``x`` (the attention block's layer-normed output) is what the FFN reads, so
    the block becomes ``LN(x + Dropout(FFN(x)) + Adapter(x))``.
    """

    def __init__(self, output: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.output = output
        self._adapter = (adapter,)

    @property
    def adapter(self) -> nn.Module:
        return self._adapter[0]

    @staticmethod
    def residual_of(hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """The residual stream entering the sublayer (what the adapter's output is added to)."""
        return input_tensor

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        out = self.output
        adapted = in_float32(self._adapter[0], input_tensor)
        return out.LayerNorm(out.dropout(out.dense(hidden_states)) + input_tensor + adapted)


def _ffn_output(block: nn.Module) -> nn.Module | None:
    """A block's feed-forward output module, also once :func:`attach_adapters` has wrapped it."""
    output = getattr(block, "output", None)
    return output.output if isinstance(output, EncoderOutputWithAdapter) else output


def _encoder_blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(blocks, nn.ModuleList) or not all(
        all(hasattr(_ffn_output(block), attr) for attr in ("dense", "LayerNorm", "dropout")) for block in blocks
    ):
        raise ConfigError(
            f"{type(model).__name__} does not have the BERT-style layout PHA wires into "
            "(encoder.layer[i].output with dense, LayerNorm and dropout)"
        )
    return blocks


def num_blocks(model: nn.Module, family: Family) -> tuple[int, int]:
    """(blocks before the retrieval point, blocks after it) of the full backbone.

    For T5 these are the encoder and decoder depths; for encoder-only models the caller splits
    the single stack itself.
    """
    if family == "seq2seq":
        return len(model.encoder.block), len(model.decoder.block)
    return len(_encoder_blocks(model)), 0


def backbone_blocks(model: nn.Module, family: Family) -> list[nn.Module]:
    """Every transformer block in the order adapters number them (T5: encoder blocks, then decoder blocks)."""
    if family == "seq2seq":
        return [*model.encoder.block, *model.decoder.block]
    return list(_encoder_blocks(model))


def attach_adapters(model: nn.Module, family: Family, adapters: list[nn.Module]) -> None:
    """Put ``adapters[i]`` in parallel with the feed-forward sublayer of block ``i``.

    Blocks are numbered through the whole model: T5 encoder blocks first, then decoder blocks.
    """
    if family == "seq2seq":
        ff_blocks = list(model.encoder.block) + list(model.decoder.block)
        if len(adapters) != len(ff_blocks):
            raise ConfigError(f"{len(adapters)} adapters for {len(ff_blocks)} T5 blocks")
        for block, adapter in zip(ff_blocks, adapters):
            block.layer[-1] = T5FeedForwardWithAdapter(block.layer[-1], adapter)
        return
    blocks = _encoder_blocks(model)
    if len(adapters) != len(blocks):
        raise ConfigError(f"{len(adapters)} adapters for {len(blocks)} encoder blocks")
    for block, adapter in zip(blocks, adapters):
        block.output = EncoderOutputWithAdapter(block.output, adapter)


def adapter_sites(model: nn.Module, family: Family) -> list[T5FeedForwardWithAdapter | EncoderOutputWithAdapter]:
    """The adapted sublayers in block order (as :func:`attach_adapters` numbers them); empty when
    the model has no adapters."""
    if family == "seq2seq":
        layers = [block.layer[-1] for block in [*model.encoder.block, *model.decoder.block]]
        return [layer for layer in layers if isinstance(layer, T5FeedForwardWithAdapter)]
    return [block.output for block in model.encoder.layer if isinstance(block.output, EncoderOutputWithAdapter)]


def retrieval_site(model: nn.Module, family: Family, split_layer: int) -> nn.Module:
    """The module whose output holds the hidden states the retriever pools.

    T5: the whole encoder (its output is after the final layer norm). Encoder-only: block
    ``split_layer - 1``.
    """
    if family == "seq2seq":
        return model.encoder
    return model.encoder.layer[split_layer - 1]


def site_hidden_states(output: object) -> torch.Tensor:
    """Hidden states from a block's or an encoder's output, whichever container it returns."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.last_hidden_state


def hidden_size(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "d_model", None) or config.hidden_size
