"""Length-aware execution of a padded batch: length-sorted chunks, each padded only to its longest example.

A mixed-task batch (CoLA's 12-token sentences next to RTE's 68-token pairs) padded to its longest
example is mostly padding, and the backbone, the adapters and their backward run on all of it.
The backbone treats every example on its own (attention is masked, everything else acts per
token, T5's decoder is causal), so running it on chunks of examples of similar length, each
trimmed to its own longest example, and putting the outputs back in batch order gives the same
outputs, losses and gradients (up to floating-point summation order) for a fraction of the work.
The batch itself is unchanged: the contrastive losses still see every example.

Chunk boundaries are chosen on the examples sorted by length, to minimise
``padded tokens + cost_tokens × number of chunks``: ``cost_tokens`` is the fixed cost of running
the backbone once more (per-call and per-operator overhead), expressed in tokens. Small on a CPU
(many small chunks pay), large on a GPU (few big chunks keep it busy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from pha_lightning.model.adapters import WeightSet

#: batch keys laid out as ``(B, source length)``: trimmed to a chunk's longest source
SOURCE_KEYS = ("input_ids", "attention_mask", "token_type_ids")
#: T5 targets ``(B, target length)``, padded with this id: trimmed to a chunk's longest target
LABEL_KEY, LABEL_PAD_ID = "labels", -100


@dataclass(frozen=True)
class Chunk:
    """Rows of the batch run together, and the source width they are trimmed to."""

    rows: Tensor  # (b,) indices into the batch
    width: int


def partition(lengths: list[int], cost_tokens: int) -> list[list[int]]:
    """Split examples (by index) into chunks minimising padded tokens plus ``cost_tokens`` per chunk.

    Optimal chunks are contiguous runs of the examples sorted by length, longest first, so an
    ``O(B²)`` dynamic programme over the run boundaries finds them.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of the first j sorted examples
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * sorted_lengths[i] + cost_tokens
            if cost < best[j]:
                best[j], start[j] = cost, i
    chunks, end = [], n
    while end > 0:
        chunks.append(order[start[end] : end])
        end = start[end]
    return chunks[::-1]


def plan_chunks(attention_mask: Tensor, cost_tokens: int | None) -> list[Chunk] | None:
    """The chunks to run a batch in, or ``None`` to run it whole (chunking off, or one chunk pays best).

    Only trailing padding is trimmed, so the kept positions keep their position ids: with right
    padding a chunk is as wide as its longest example; a left-padded batch gains nothing.
    """
    if cost_tokens is None or attention_mask.shape[0] < 2:
        return None
    columns = torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
    widths = (attention_mask.ne(0) * columns).amax(dim=1).tolist()  # last real position + 1
    groups = partition(widths, cost_tokens)
    if len(groups) == 1 and max(widths) == attention_mask.shape[1]:
        return None
    return [
        Chunk(torch.tensor(rows, device=attention_mask.device), max(max(widths[r] for r in rows), 1)) for rows in groups
    ]


def chunk_batch(batch: dict[str, Tensor], chunk: Chunk) -> dict[str, Tensor]:
    """The chunk's rows of every per-example tensor, with sources (and T5 targets) trimmed."""
    size = len(batch["attention_mask"])
    sub = {
        k: v.index_select(0, chunk.rows)
        for k, v in batch.items()
        if isinstance(v, Tensor) and v.dim() and len(v) == size
    }
    for key in SOURCE_KEYS:
        if key in sub:
            sub[key] = sub[key][:, : chunk.width]
    if LABEL_KEY in sub:
        labels = sub[LABEL_KEY]
        columns = torch.arange(1, labels.shape[1] + 1, device=labels.device)
        sub[LABEL_KEY] = labels[:, : max(int((labels.ne(LABEL_PAD_ID) * columns).max()), 1)]
    return sub


def restrict_weights(weights: WeightSet | None, rows: Tensor) -> WeightSet | None:
    """The batch's generated weights as a chunk of ``rows`` sees them: same tensors, its rows' groups.

    The weights are generated once per batch; each chunk only re-indexes which group its rows use,
    so gradients from every chunk flow into the same generated tensors.
    """
    if weights is None:
        return None
    if weights.per_example:  # one weight set per example: the chunk takes its rows' sets
        parts = {name: part.index_select(0, rows) for name, part in weights.parts().items()}
        return weights.with_parts(parts, torch.arange(len(rows), device=rows.device), per_example=True)
    return dataclasses.replace(weights, group_of=weights.group_of.index_select(0, rows))


def merge_rows(parts: list[Tensor | None], chunks: list[Chunk], size: int) -> Tensor | None:
    """Per-chunk outputs ``(b, ...)`` back into one ``(size, ...)`` tensor in batch order.

    Outputs with a sequence axis (T5 logits over the trimmed targets) are zero-padded on it to the
    widest chunk; those positions are padding the loss ignores.
    """
    if parts[0] is None:
        return None
    if parts[0].dim() > 2:
        width = max(part.shape[1] for part in parts)
        parts = [F.pad(part, (0, 0) * (part.dim() - 2) + (0, width - part.shape[1])) for part in parts]
    order = torch.cat([chunk.rows for chunk in chunks])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(size, device=order.device)
    return torch.cat(parts).index_select(0, inverse)


def run_chunked(
    batch: dict[str, Tensor],
    chunks: list[Chunk],
    run: Callable[[dict[str, Tensor], Tensor], dict[str, Tensor | None]],
) -> dict[str, Tensor | None]:
    """Call ``run(chunk_batch, rows)`` per chunk and merge each output back into batch order."""
    outputs = [run(chunk_batch(batch, chunk), chunk.rows) for chunk in chunks]
    size = len(batch["attention_mask"])
    return {key: merge_rows([out[key] for out in outputs], chunks, size) for key in outputs[0]}
