"""PHA and its baselines as layouts of the same parts (docs/method.md, "Baselines in the same framework").

Every method runs through the same module, data path and evaluation; they differ only in which
blocks get which kind of adapter and where generated weights come from:

=============== ========================= ============================== ========================
method          blocks before the split   blocks after the split         generated from
=============== ========================= ============================== ========================
``pha``         shared adapters           generated adapters             task prototype
``adapter``     shared adapters           shared adapters                —
``lora``        shared LoRA               shared LoRA                    —
``task_adapter`` one adapter set per task  one adapter set per task       —
``hyperformer`` generated adapters        generated adapters             learned task embedding
``hyperdecoder`` shared adapters          generated adapters             the example's own z
``finetune``    no adapters, backbone trained                            —
``task_lora``   one LoRA per task         one LoRA per task              —
``poly``        each task's LoRA a learned mixture of a skill inventory   learned task logits
``mhr``         Poly with each LoRA cut in ``poly_splits`` heads mixed apart      learned task logits
``mtl_lora``    shared A, per-task Λ, a per-task mix of shared up-projections    learned task weights
``arrow``       ``task_lora``'s LoRAs, mixed per token (no task label)         their top singular vectors
=============== ========================= ============================== ========================

The multi-task LoRA methods (``task_lora`` to ``arrow``) have LoRA at every block and no split;
their settings are the ``lora_*``, ``poly_*`` and ``arrow_*`` ones (docs/method.md, "Multi-task LoRA baselines").
"The split" is the retrieval point: T5's encoder/decoder boundary, or block ``k`` of an encoder.
PHA's ablations are PHA with ``lambda_ir = 0`` and/or ``lambda_pro = 0``.

``adapter_kind: lora`` puts LoRA on the attention projections in place of bottleneck adapters
(``pha``, ``hyperformer``, ``hyperdecoder``: shared and generated LoRA where the table says shared
and generated adapters); ``lora`` is ``adapter`` with that kind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

from pha_lightning.errors import ConfigError

Method = Literal[
    "pha", "adapter", "lora", "task_adapter", "hyperformer", "hyperdecoder", "finetune",
    "task_lora", "poly", "mhr", "mtl_lora", "arrow",
]  # fmt: skip
METHODS: tuple[str, ...] = get_args(Method)
AdapterKind = Literal["bottleneck", "lora"]
ADAPTER_KINDS: tuple[str, ...] = get_args(AdapterKind)
#: methods that can use ``adapter_kind: lora`` (``lora`` always does)
LORA_METHODS: tuple[str, ...] = (
    "pha", "adapter", "lora", "hyperformer", "hyperdecoder", "task_lora", "poly", "mhr", "mtl_lora", "arrow",
)  # fmt: skip
#: the multi-task LoRA methods: LoRA at every block, each task's factors from a bank of
#: :mod:`pha_lightning.model.multi_lora` (the layout's ``source`` names it)
LORA_BANK_SOURCES: dict[str, str] = {
    "task_lora": "task_lora", "poly": "skills", "mhr": "skills", "mtl_lora": "mtl_lora", "arrow": "task_lora",
}  # fmt: skip


#: methods that run another method's weights differently: ``arrow`` routes over a ``task_lora`` library
SAME_WEIGHTS: dict[str, str] = {"arrow": "task_lora"}


def weights_of(method: str) -> str:
    """The method whose weights ``method`` has (a checkpoint of either serves the other)."""
    return SAME_WEIGHTS.get(method, method)


@dataclass(frozen=True)
class Layout:
    """Where each kind of adapter goes, for a backbone with ``before + after`` blocks."""

    shared: int  # blocks [0, shared) get shared adapters
    generated: int  # the following blocks get generated (or per-task) adapters
    source: Literal["none", "prototype", "task_bank", "instance", "task_lora", "skills", "mtl_lora"]
    uses_retriever: bool
    trains_backbone: bool = False
    kind: AdapterKind = "bottleneck"


def method_layout(method: str, before: int, after: int, contrastive: bool, adapter_kind: str = "bottleneck") -> Layout:
    """The layout of ``method``; ``contrastive`` says whether PHA has a non-zero L_IR or L_Pro weight."""
    if adapter_kind not in ADAPTER_KINDS:
        raise ConfigError(f"unknown adapter_kind {adapter_kind!r}; valid: {list(ADAPTER_KINDS)}")
    if adapter_kind == "lora" and method not in LORA_METHODS:
        raise ConfigError(
            f"adapter_kind 'lora' is not available for method {method!r}; valid methods: {list(LORA_METHODS)}"
        )
    total = before + after
    layouts = {
        "pha": Layout(before, after, "prototype", uses_retriever=contrastive),
        "adapter": Layout(total, 0, "none", uses_retriever=False),
        "lora": Layout(total, 0, "none", uses_retriever=False, kind="lora"),
        "task_adapter": Layout(0, total, "task_bank", uses_retriever=False),
        "hyperformer": Layout(0, total, "prototype", uses_retriever=False),
        "hyperdecoder": Layout(before, after, "instance", uses_retriever=True),
        "finetune": Layout(0, 0, "none", uses_retriever=False, trains_backbone=True),
        **{m: Layout(0, total, source, uses_retriever=False, kind="lora") for m, source in LORA_BANK_SOURCES.items()},  # type: ignore[arg-type]
    }
    if method not in layouts:
        raise ConfigError(f"unknown method {method!r}; valid: {list(METHODS)}")
    return dataclasses.replace(layouts[method], kind="lora") if adapter_kind == "lora" else layouts[method]


def trains_backbone(method: str) -> bool:
    """Whether ``method`` trains the backbone's own weights (they must then stay float32)."""
    return method_layout(method, 0, 0, contrastive=False).trains_backbone


def generates_bottleneck_adapters(method: str, adapter_kind: str) -> bool:
    """Whether ``method`` with ``adapter_kind`` has a hypernetwork generating bottleneck adapters
    (what ``generated_output_scale`` scales)."""
    layout = method_layout(method, 0, 0, contrastive=False, adapter_kind=adapter_kind)
    return layout.kind == "bottleneck" and layout.source in ("prototype", "instance")
