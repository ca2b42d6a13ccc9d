"""The instance-dense retriever (docs/method.md, "The parts"): ``z = W2 · ReLU(W1 · h̄)``.

``h̄`` is the mean of the hidden states over non-padding tokens. The retriever learns (through
L_IR and L_Pro) to place examples of one task close together and close to that task's
prototype, which is what lets a new task find the most related source prototype.
"""

from __future__ import annotations

from torch import Tensor, nn


def masked_mean(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of ``hidden (B, L, d)`` over the positions where ``attention_mask (B, L)`` is 1."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class Retriever(nn.Module):
    """Masked mean-pool followed by a two-layer MLP, ``d_model → hidden → out``."""

    def __init__(self, d_model: int, hidden_dim: int = 128, out_dim: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self.mlp(masked_mean(hidden, attention_mask))
