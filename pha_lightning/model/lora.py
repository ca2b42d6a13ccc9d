"""LoRA on the frozen backbone, shared or generated per task (docs/method.md, "Generated LoRA").

A LoRA site adds ``scaling·B·A·dropout(x)`` to the output of one frozen linear layer, with
``scaling = alpha / r``, the semantics of peft's ``LoraModel`` (tests/test_lora.py checks the
equality). Shared sites own ``A (r×d_in)`` and ``B (d_out×r)``; generated sites read the factors
the LoRA generator produced for the batch from the :class:`AdapterContext` and apply them grouped
per task, like generated adapters. ``B`` starts at zero either way: a fresh model computes
exactly what the backbone computes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pha_lightning.errors import ConfigError
from pha_lightning.hub import Family
from pha_lightning.model.adapters import AdapterContext, rows_of, run_grouped
from pha_lightning.model.backbone import backbone_blocks, in_float32
from pha_lightning.model.hypernetwork import Calibration, Generator, Head, head_multiplier

LORA_TARGETS: tuple[str, ...] = ("query", "key", "value", "output", "ffn_in", "ffn_out")
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("query", "value")

#: each target's linear layers inside one block, as regular expressions over the block's module
#: names; T5's ``query`` matches the decoder's cross-attention too, as peft's ``["q", "v"]`` does
TARGET_PATTERNS: dict[Family, dict[str, str]] = {
    "encoder": {
        "query": r"attention\.self\.query",
        "key": r"attention\.self\.key",
        "value": r"attention\.self\.value",
        "output": r"attention\.output\.dense",
        "ffn_in": r"intermediate\.dense",
        "ffn_out": r"output\.dense",
    },
    "seq2seq": {
        "query": r"layer\.\d+\.(SelfAttention|EncDecAttention)\.q",
        "key": r"layer\.\d+\.(SelfAttention|EncDecAttention)\.k",
        "value": r"layer\.\d+\.(SelfAttention|EncDecAttention)\.v",
        "output": r"layer\.\d+\.(SelfAttention|EncDecAttention)\.o",
        "ffn_in": r"layer\.\d+\.DenseReluDense\.wi(_0|_1)?",
        "ffn_out": r"layer\.\d+\.DenseReluDense\.wo",
    },
}

Shape = tuple[int, int]


def reads_encoder_states(name: str) -> bool:
    """Whether the linear layer ``name`` (inside a T5 decoder block) reads the encoder's output:
    cross-attention's keys and values do, everything else reads the decoder's own tokens."""
    return re.search(r"EncDecAttention\.[kv]$", name) is not None


def check_lora_targets(targets: Sequence[str]) -> None:
    """One :class:`ConfigError` naming bad LoRA targets and the valid names (the numeric LoRA
    settings are range-checked with the model's other numbers)."""
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if not targets or unknown or len(set(targets)) != len(targets):
        raise ConfigError(f"lora_targets must be distinct names from {list(LORA_TARGETS)}, got {list(targets)!r}")


class SharedLoRA(nn.Module):
    """``B·A·x`` with its own factors, the same for every task. ``A`` as peft draws it, ``B = 0``."""

    def __init__(self, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.a = nn.Linear(d_in, rank, bias=False)
        self.b = nn.Linear(rank, d_out, bias=False)
        nn.init.kaiming_uniform_(self.a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.b.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x))

    def matrices(self) -> tuple[Tensor, ...]:
        """The factors (health reports: their norms and one-step changes)."""
        return (self.a.weight, self.b.weight)


class LoRALinear(nn.Module):
    """A frozen linear layer with a LoRA update: ``base(x) + scaling·update(dropout(x))``.

    The update is owned (and registered) by the PHA module, not by the backbone, like adapters.
    """

    def __init__(self, base: nn.Linear, update: nn.Module, scaling: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self._update = (update,)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.scaling = scaling

    @property
    def update(self) -> nn.Module:
        return self._update[0]

    @property
    def weight(self) -> Tensor:
        """The frozen weight: backbone code reads it (T5's FFN checks ``wo.weight.dtype``)."""
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + in_float32(lambda rows: self._update[0](self.dropout(rows)) * self.scaling, x)


@dataclass
class GeneratedLoRA:
    """LoRA factors for ``G`` groups, in one set per distinct site shape ``(d_in, d_out)``.

    Set ``k`` holds ``a[k] (G, S_k, r, d_in)`` and ``b[k] (G, S_k, d_out, r)`` for its ``S_k``
    sites; ``group_of (B,)`` maps every example to a group, as in
    :class:`~pha_lightning.model.adapters.GeneratedWeights`.
    """

    a: tuple[Tensor, ...]
    b: tuple[Tensor, ...]
    group_of: Tensor
    per_example: bool = False

    @property
    def num_groups(self) -> int:
        return self.a[0].shape[0]

    def parts(self) -> dict[str, Tensor]:
        return {**{f"lora_a{k}": a for k, a in enumerate(self.a)}, **{f"lora_b{k}": b for k, b in enumerate(self.b)}}

    def with_parts(self, parts: dict[str, Tensor], group_of: Tensor, per_example: bool = False) -> GeneratedLoRA:
        sets = range(len(parts) // 2)
        return GeneratedLoRA(
            tuple(parts[f"lora_a{k}"] for k in sets), tuple(parts[f"lora_b{k}"] for k in sets), group_of, per_example
        )

    def matrix_sets(self) -> list[tuple[Tensor, ...]]:
        return list(zip(self.a, self.b))

    def apply(self, x: Tensor, shape_set: int, index: int) -> Tensor:
        """``B·A·x`` with each example's group's factors of site ``index`` of set ``shape_set``."""
        return apply_lora_grouped(x, self, shape_set, index)


def apply_lora_grouped(x: Tensor, weights: GeneratedLoRA, shape_set: int, index: int) -> Tensor:
    """``B·A·x`` with each example's group's factors of site ``index`` of set ``shape_set``."""
    a, b = weights.a[shape_set][:, index], weights.b[shape_set][:, index]  # (G, r, d_in), (G, d_out, r)
    return run_grouped(
        x,
        weights.group_of,
        weights.num_groups,
        weights.per_example,
        lambda rows, g: F.linear(F.linear(rows, a[g]), b[g]),
        lambda flat, rows: torch.bmm(
            torch.bmm(flat, rows_of(a, rows).transpose(1, 2)), rows_of(b, rows).transpose(1, 2)
        ),
    )


class GeneratedLoRAUpdate(nn.Module):
    """The update of one generated site: its factors come from the context, not from parameters."""

    def __init__(self, context: AdapterContext, shape_set: int, index: int) -> None:
        super().__init__()
        self.context, self.shape_set, self.index = context, shape_set, index

    def forward(self, x: Tensor) -> Tensor:
        weights = self.context.current(f"generated LoRA site {self.index} of shape set {self.shape_set}")
        return weights.apply(x, self.shape_set, self.index)  # GeneratedLoRA, or Arrow's routed library


def shape_sets(site_shapes: Sequence[Shape]) -> tuple[list[Shape], list[tuple[int, int]]]:
    """The distinct shapes in order of appearance, and each site's ``(set, index in the set)``."""
    shapes: list[Shape] = []
    counts: list[int] = []
    slots = []
    for shape in site_shapes:
        if shape not in shapes:
            shapes.append(shape)
            counts.append(0)
        k = shapes.index(shape)
        slots.append((k, counts[k]))
        counts[k] += 1
    return shapes, slots


class LoRAHyperNetwork(Generator):
    """Generate every generated site's LoRA factors from a condition vector (a task's prototype).

    One embedding row per site (its layer and target), one trunk, and one pair of calibrated
    heads per distinct site shape. ``A`` starts distributed as a shared site's (variance
    ``1/(3·d_in)``, given LayerNorm-ed ``g``), ``B``'s head starts at zero.

    Args:
        site_shapes: ``(d_in, d_out)`` of every generated site, in the order the sites are numbered.
        rank: LoRA rank ``r``. The other arguments are :class:`HyperNetwork`'s.
    """

    def __init__(
        self,
        site_shapes: Sequence[Shape],
        rank: int,
        cond_dim: int = 64,
        layer_emb_dim: int = 64,
        hidden_dim: int = 128,
        out_dim: int = 64,
        layer_norm_eps: float = 1e-6,
        calibration: Calibration = "width",
    ) -> None:
        super().__init__(len(site_shapes), cond_dim, layer_emb_dim, hidden_dim, out_dim, layer_norm_eps)
        self.rank = rank
        self.shapes, slots = shape_sets(site_shapes)
        self.sites_of = [[s for s, (k, _) in enumerate(slots) if k == set_] for set_ in range(len(self.shapes))]
        scale = head_multiplier(calibration, out_dim)
        self.a_heads = nn.ModuleList(Head(out_dim, rank * d_in, scale) for d_in, _ in self.shapes)
        self.b_heads = nn.ModuleList(Head(out_dim, d_out * rank, scale) for _, d_out in self.shapes)
        for head, (d_in, _) in zip(self.a_heads, self.shapes):
            head.init_uniform(1.0 / math.sqrt(out_dim * d_in))
        for head in self.b_heads:
            head.init_uniform(0.0)

    def heads(self) -> tuple[Head, ...]:
        return (*self.a_heads, *self.b_heads)

    def forward(self, cond: Tensor, group_of: Tensor | None = None) -> GeneratedLoRA:
        """Factors for ``G`` condition vectors ``cond (G, cond_dim)`` and every site at once;
        ``group_of`` as in :meth:`HyperNetwork.forward` (``None``: one row per example)."""
        groups, r = cond.shape[0], self.rank
        g = self.features(cond)  # (G, S, out_dim)
        a, b = [], []
        for (d_in, d_out), sites, a_head, b_head in zip(self.shapes, self.sites_of, self.a_heads, self.b_heads):
            g_set = g if len(self.shapes) == 1 else g[:, sites]
            a.append(a_head(g_set).view(groups, len(sites), r, d_in))
            b.append(b_head(g_set).view(groups, len(sites), d_out, r))
        return GeneratedLoRA(
            tuple(a),
            tuple(b),
            group_of=torch.arange(groups, device=cond.device) if group_of is None else group_of,
            per_example=group_of is None,
        )


def target_linears(block: nn.Module, family: Family, targets: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    """The linear layers of ``block`` that ``targets`` name, in module order."""
    patterns = {target: TARGET_PATTERNS[family][target] for target in targets}
    found, matched = [], set()
    for name, module in block.named_modules():
        hits = [t for t, pattern in patterns.items() if re.fullmatch(pattern, name)]
        if hits and isinstance(module, nn.Linear):
            found.append((name, module))
            matched.update(hits)
    missing = [t for t in targets if t not in matched]
    if missing:
        raise ConfigError(
            f"lora_targets {missing} match no linear layer in a {type(block).__name__} block; "
            f"{family} backbones need {[TARGET_PATTERNS[family][t] for t in missing]}"
        )
    return found


def attach_lora(
    model: nn.Module,
    family: Family,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float,
    shared_blocks: int,
    context: AdapterContext,
) -> tuple[nn.ModuleList, list[Shape]]:
    """Wrap the ``targets`` of every block in :class:`LoRALinear`: shared sites in blocks
    ``[0, shared_blocks)``, generated ones after. Returns the shared updates (for the module to
    own) and the ``(d_in, d_out)`` of each generated site, in site order."""
    sites = [
        (i < shared_blocks, block, name, linear)
        for i, block in enumerate(backbone_blocks(model, family))
        for name, linear in target_linears(block, family, targets)
    ]
    generated_shapes = [(linear.in_features, linear.out_features) for shared, _, _, linear in sites if not shared]
    slots = iter(shape_sets(generated_shapes)[1])
    shared_updates = nn.ModuleList()
    for shared, block, name, linear in sites:
        if shared:
            update: nn.Module = SharedLoRA(linear.in_features, linear.out_features, rank)
            shared_updates.append(update)
        else:
            update = GeneratedLoRAUpdate(context, *next(slots))
        parent_name, _, attr = name.rpartition(".")
        setattr(block.get_submodule(parent_name), attr, LoRALinear(linear, update, alpha / rank, dropout))
    return shared_updates, generated_shapes
