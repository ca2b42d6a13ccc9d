"""Parallel bottleneck adapters, shared or hypernetwork-generated (docs/method.md, "The parts").

An adapter is ``ReLU(x·W_down + b_down)·W_up + b_up`` added in parallel to a feed-forward
sublayer. Shared adapters own their weights. Generated adapters read the weights the
hypernetwork produced for the current batch from a :class:`AdapterContext` shared by all layers;
the batch is split into groups (one per distinct task) and each group is transformed with its
own weights, so no per-example copy of the weights is ever built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class SharedAdapter(nn.Module):
    """One bottleneck adapter with its own weights (same for every task)."""

    def __init__(self, d_model: int, bottleneck: int, init_gain: float = 1e-4) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)
        self.up = nn.Linear(bottleneck, d_model)
        for linear in (self.down, self.up):
            nn.init.xavier_uniform_(linear.weight, gain=init_gain)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(F.relu(self.down(x)))

    def matrices(self) -> tuple[Tensor, ...]:
        """The weight matrices (health reports: their norms and one-step changes)."""
        return (self.down.weight, self.up.weight)


@dataclass
class GeneratedWeights:
    """Adapter weights for ``G`` groups and ``L`` generated layers, and which group each example uses.

    ``group_of`` maps every example of the batch to a group. Shapes: ``down_w (G, L, d, r)``,
    ``down_b (G, L, r)``, ``up_w (G, L, r, d)``, ``up_b (G, L, d)``, ``group_of (B,)``.
    """

    down_w: Tensor
    down_b: Tensor
    up_w: Tensor
    up_b: Tensor
    group_of: Tensor
    #: one group per example, in batch order (HyperDecoder: weights generated from each example)
    per_example: bool = False

    @property
    def num_groups(self) -> int:
        return self.down_w.shape[0]

    def parts(self) -> dict[str, Tensor]:
        """Every weight tensor by name, each with the group axis first (caches, bundles, chunks)."""
        return {"down_w": self.down_w, "down_b": self.down_b, "up_w": self.up_w, "up_b": self.up_b}

    def with_parts(self, parts: dict[str, Tensor], group_of: Tensor, per_example: bool = False) -> GeneratedWeights:
        """Weights of the same kind made of ``parts`` (as :meth:`parts` names them)."""
        return GeneratedWeights(**parts, group_of=group_of, per_example=per_example)

    def matrix_sets(self) -> list[tuple[Tensor, ...]]:
        """The weight matrices, in sets sharing a site axis: ``(G, sites, ...)`` (health reports)."""
        return [(self.down_w, self.up_w)]


class WeightSet(Protocol):
    """Generated weights of any adapter kind: named parts with the group axis first."""

    group_of: Tensor
    per_example: bool

    def parts(self) -> dict[str, Tensor]: ...

    def with_parts(self, parts: dict[str, Tensor], group_of: Tensor, per_example: bool = False) -> WeightSet: ...

    def matrix_sets(self) -> list[tuple[Tensor, ...]]: ...


W = TypeVar("W", bound=WeightSet)


def site_vectors(weights: WeightSet) -> list[Tensor]:
    """Each matrix set's matrices as one flat vector per group and site, ``(G, sites, n)``: what the
    health report's norms and spread, and the between-task loss, compare."""
    return [torch.cat([m.flatten(2) for m in matrices], dim=2) for matrices in weights.matrix_sets()]


def stack_groups(weights: list[W], group_of: Tensor) -> W:
    """One weights object holding the groups of ``weights`` in order (e.g. one cached weight set per task)."""
    names = weights[0].parts()
    return weights[0].with_parts({name: torch.cat([w.parts()[name] for w in weights]) for name in names}, group_of)


def apply_bottleneck(x: Tensor, down_w: Tensor, down_b: Tensor, up_w: Tensor, up_b: Tensor) -> Tensor:
    """``ReLU(x·W_down + b_down)·W_up + b_up`` for one weight set; ``x`` is ``(..., d)``."""
    return F.relu(x @ down_w + down_b) @ up_w + up_b


#: the most rows whose generated weights are gathered per row instead of grouped (run_grouped)
GATHER_MAX_ROWS = 32


def run_grouped(
    x: Tensor,
    group_of: Tensor,
    num_groups: int,
    per_example: bool,
    one_group: Callable[[Tensor, int], Tensor],
    each_row: Callable[[Tensor, Tensor | None], Tensor],
) -> Tensor:
    """Transform each example of ``x (B, ..., d)`` with the weights of its group (of ``num_groups``).

    ``one_group(rows, g)`` applies group ``g``'s weights to some rows; ``each_row(flat, index)``
    applies weight set ``index[b]`` to ``flat[b]`` (``(B, N, d)``; ``index`` None: set ``b``, the
    per-example weights). Up to ``GATHER_MAX_ROWS`` rows (a length chunk), each row's weights are
    gathered and applied by batched products, 1.2–1.7× faster on CPU than per-group products
    (docs/method.md); larger batches are sorted into groups, so no weight copy grows with them.
    """
    examples = group_of.shape[0]
    if x.shape[0] != examples:
        # generate() may expand the batch (e.g. beams); each example's copies are contiguous
        if x.shape[0] % examples:
            raise ValueError(f"batch of {x.shape[0]} rows does not expand the {examples} examples")
        if not per_example:
            group_of = group_of.repeat_interleave(x.shape[0] // examples)
    if not per_example and num_groups == 1:
        return one_group(x, 0)
    if per_example or x.shape[0] <= GATHER_MAX_ROWS:
        out = each_row(x.reshape(group_of.shape[0], -1, x.shape[-1]), None if per_example else group_of)
        return out.reshape(*x.shape[:-1], out.shape[-1])
    order = torch.argsort(group_of, stable=True)
    counts = torch.bincount(group_of, minlength=num_groups).tolist()
    chunks = torch.split(x.index_select(0, order), counts)
    outputs = [one_group(chunk, g) for g, chunk in enumerate(chunks) if counts[g]]
    result = torch.empty((x.shape[0], *outputs[0].shape[1:]), dtype=outputs[0].dtype, device=x.device)
    return result.index_copy(0, order, torch.cat(outputs))


def rows_of(weights: Tensor, index: Tensor | None) -> Tensor:
    """``weights[index]`` along the group axis (``index`` None: all of them, in order)."""
    return weights if index is None else weights.index_select(0, index)


def apply_grouped(x: Tensor, weights: GeneratedWeights, layer: int) -> Tensor:
    """Apply each group's adapter of ``layer`` to that group's examples of ``x`` (``(B, ..., d)``)."""
    w = weights

    def one_group(rows: Tensor, g: int) -> Tensor:
        return apply_bottleneck(rows, w.down_w[g, layer], w.down_b[g, layer], w.up_w[g, layer], w.up_b[g, layer])

    def each_row(flat: Tensor, index: Tensor | None) -> Tensor:
        down_b, up_b = rows_of(w.down_b[:, layer], index), rows_of(w.up_b[:, layer], index)
        hidden = F.relu(torch.baddbmm(down_b[:, None], flat, rows_of(w.down_w[:, layer], index)))
        return torch.baddbmm(up_b[:, None], hidden, rows_of(w.up_w[:, layer], index))

    return run_grouped(x, w.group_of, w.num_groups, w.per_example, one_group, each_row)


class TaskAdapterBank(nn.Module):
    """One adapter per task and layer, stored as stacked parameters (the ``task_adapter`` baseline).

    It yields :class:`GeneratedWeights` for the tasks of a batch, so task adapters reuse the
    grouped application of generated adapters.
    """

    def __init__(self, num_tasks: int, num_layers: int, d_model: int, bottleneck: int, init_gain: float = 1e-4) -> None:
        super().__init__()
        self.down_w = nn.Parameter(torch.empty(num_tasks, num_layers, d_model, bottleneck))
        self.down_b = nn.Parameter(torch.zeros(num_tasks, num_layers, bottleneck))
        self.up_w = nn.Parameter(torch.empty(num_tasks, num_layers, bottleneck, d_model))
        self.up_b = nn.Parameter(torch.zeros(num_tasks, num_layers, d_model))
        for bank in (self.down_w, self.up_w):
            for matrix in bank.view(-1, *bank.shape[2:]):
                nn.init.xavier_uniform_(matrix, gain=init_gain)  # as SharedAdapter (the bound is symmetric)

    def forward(self, task_ids: Tensor) -> GeneratedWeights:
        tasks, group_of = torch.unique(task_ids, return_inverse=True)
        return GeneratedWeights(
            self.down_w[tasks], self.down_b[tasks], self.up_w[tasks], self.up_b[tasks], group_of=group_of
        )


class AdapterContext:
    """Holds the generated weights of the batch being processed, shared by every generated layer.

    The module sets it before a forward pass (``with context.use(weights): ...``) so that the
    frozen backbone's own forward signature stays untouched.
    """

    def __init__(self) -> None:
        self.weights: WeightSet | None = None

    def current(self, site: str) -> WeightSet:
        """The weights set for this forward pass; ``site`` names the layer asking (for the error)."""
        if self.weights is None:
            raise RuntimeError(
                f"{site} ran without generated weights; run the backbone inside `AdapterContext.use(...)`"
            )
        return self.weights

    def use(self, weights: WeightSet | None) -> "_ContextUse":
        """Set ``weights`` for the duration of a ``with`` block (``None``: a hook sets them mid-forward)."""
        return _ContextUse(self, weights)


class _ContextUse:
    def __init__(self, context: AdapterContext, weights: WeightSet | None) -> None:
        self.context = context
        self.weights = weights

    def __enter__(self) -> WeightSet | None:
        self.context.weights = self.weights
        return self.weights

    def __exit__(self, *exc: object) -> None:
        self.context.weights = None


class GeneratedAdapter(nn.Module):
    """The adapter of one generated layer: its weights come from the context, not from parameters."""

    def __init__(self, context: AdapterContext, layer: int) -> None:
        super().__init__()
        self.context = context
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return apply_grouped(x, self.context.current(f"generated adapter of layer {self.layer}"), self.layer)
