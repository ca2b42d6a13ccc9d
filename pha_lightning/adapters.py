"""Parallel bottleneck adapters, shared or hypernetwork-generated (docs/method.md, "The parts").

An adapter is ``ReLU(x·W_down + b_down)·W_up + b_up`` added in parallel to a feed-forward
sublayer. Shared adapters own their weights. Generated adapters read the weights the
hypernetwork produced for the current batch from a :class:`AdapterContext` shared by all layers;
the batch is split into groups (one per distinct task) and each group is transformed with its
own weights, so no per-example copy of the weights is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def apply_bottleneck(x: Tensor, down_w: Tensor, down_b: Tensor, up_w: Tensor, up_b: Tensor) -> Tensor:
    """``ReLU(x·W_down + b_down)·W_up + b_up`` for one weight set; ``x`` is ``(..., d)``."""
    return F.relu(x @ down_w + down_b) @ up_w + up_b


def apply_grouped(x: Tensor, weights: GeneratedWeights, layer: int) -> Tensor:
    """Apply each group's adapter of ``layer`` to that group's examples of ``x`` (``(B, ..., d)``).

    Examples are gathered into contiguous groups, transformed with their group's weights, and
    scattered back into batch order: the cost is that of one adapter over the batch plus two
    gathers, however many groups there are.
    """
    group_of = weights.group_of
    if x.shape[0] != group_of.shape[0]:
        # generate() may expand the batch (e.g. beams); each example's copies are contiguous
        if x.shape[0] % group_of.shape[0]:
            raise ValueError(f"batch of {x.shape[0]} rows does not expand the {group_of.shape[0]} examples")
        if weights.per_example:
            return apply_per_example(x.reshape(group_of.shape[0], -1, x.shape[-1]), weights, layer).view_as(x)
        group_of = group_of.repeat_interleave(x.shape[0] // group_of.shape[0])
    if weights.per_example:
        return apply_per_example(x, weights, layer)
    if weights.num_groups == 1:
        return apply_bottleneck(x, weights.down_w[0, layer], weights.down_b[0, layer], weights.up_w[0, layer], weights.up_b[0, layer])
    order = torch.argsort(group_of, stable=True)
    counts = torch.bincount(group_of, minlength=weights.num_groups).tolist()
    chunks = torch.split(x.index_select(0, order), counts)
    outputs = [
        apply_bottleneck(chunk, weights.down_w[g, layer], weights.down_b[g, layer], weights.up_w[g, layer], weights.up_b[g, layer])
        for g, chunk in enumerate(chunks)
        if counts[g]
    ]
    result = torch.empty((x.shape[0], *outputs[0].shape[1:]), dtype=outputs[0].dtype, device=x.device)
    return result.index_copy(0, order, torch.cat(outputs))


def apply_per_example(x: Tensor, weights: GeneratedWeights, layer: int) -> Tensor:
    """Example ``b`` of ``x (B, ..., d)`` through its own adapter, as one batched matmul."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    hidden = F.relu(torch.bmm(flat, weights.down_w[:, layer]) + weights.down_b[:, layer, None])
    out = torch.bmm(hidden, weights.up_w[:, layer]) + weights.up_b[:, layer, None]
    return out.view_as(x)


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
        self.weights: GeneratedWeights | None = None

    def use(self, weights: GeneratedWeights | None) -> "_ContextUse":
        """Set ``weights`` for the duration of a ``with`` block (``None``: a hook sets them mid-forward)."""
        return _ContextUse(self, weights)


class _ContextUse:
    def __init__(self, context: AdapterContext, weights: GeneratedWeights | None) -> None:
        self.context = context
        self.weights = weights

    def __enter__(self) -> GeneratedWeights | None:
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
        weights = self.context.weights
        if weights is None:
            raise RuntimeError(
                f"generated adapter of layer {self.layer} ran without generated weights; "
                "run the backbone inside `AdapterContext.use(...)`"
            )
        return apply_grouped(x, weights, self.layer)
