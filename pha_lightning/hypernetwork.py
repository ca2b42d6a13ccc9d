"""The hypernetwork (method.md, "Parts" 4–5): (prototype row ⊕ layer embedding) → adapter weights.

One network is shared by all tasks and all generated layers; the layer embedding tells it which
layer it is generating for. Its output heads start tiny (scale 1e-3) and with zero biases, so a
freshly built model behaves like the frozen backbone (the generated adapters start near zero).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pha_lightning.adapters import GeneratedWeights


def _uniform_head(linear: nn.Linear, bound: float) -> None:
    nn.init.uniform_(linear.weight, -bound, bound)
    nn.init.zeros_(linear.bias)


class HyperNetwork(nn.Module):
    """Generate bottleneck-adapter weights for every generated layer from a condition vector.

    Args:
        d_model: hidden size of the backbone blocks receiving generated adapters.
        bottleneck: adapter bottleneck ``r``.
        num_layers: number of generated layers (rows of the layer-embedding table ``E``).
        cond_dim: size of the condition vector (a prototype row for PHA).
        layer_emb_dim: size of a layer embedding.
        hidden_dim: width of the first hidden layer.
        out_dim: size of ``g``, the LayerNorm-ed feature the heads read.
        init_scale: the ``1e-3`` factor of the head initialisation.
        layer_norm_eps: epsilon of the LayerNorm on ``g``.
    """

    def __init__(
        self,
        d_model: int,
        bottleneck: int = 64,
        num_layers: int = 12,
        cond_dim: int = 64,
        layer_emb_dim: int = 64,
        hidden_dim: int = 128,
        out_dim: int = 64,
        init_scale: float = 1e-3,
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.d_model, self.bottleneck, self.num_layers = d_model, bottleneck, num_layers
        self.layer_embeddings = nn.Embedding(num_layers, layer_emb_dim)
        self.trunk = nn.Sequential(
            nn.Linear(cond_dim + layer_emb_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, out_dim),
            nn.LayerNorm(out_dim, eps=layer_norm_eps),
        )
        self.down_w = nn.Linear(out_dim, d_model * bottleneck)
        self.down_b = nn.Linear(out_dim, bottleneck)
        self.up_w = nn.Linear(out_dim, bottleneck * d_model)
        self.up_b = nn.Linear(out_dim, d_model)
        _uniform_head(self.down_w, init_scale * math.sqrt(3.0 / (out_dim * d_model)))
        _uniform_head(self.up_w, init_scale * math.sqrt(3.0 / (out_dim * bottleneck)))
        for bias_head in (self.down_b, self.up_b):
            _uniform_head(bias_head, init_scale * math.sqrt(3.0 / out_dim))

    def forward(self, cond: Tensor, group_of: Tensor | None = None) -> GeneratedWeights:
        """Weights for ``G`` condition vectors ``cond (G, cond_dim)`` and all layers at once.

        ``group_of (B,)`` says which condition row each example of the batch uses; ``None`` means
        one row per example, in batch order (HyperDecoder).
        """
        groups = cond.shape[0]
        layers = self.layer_embeddings.weight
        pairs = torch.cat(
            [cond.unsqueeze(1).expand(-1, self.num_layers, -1), layers.unsqueeze(0).expand(groups, -1, -1)], dim=-1
        )
        g = self.trunk(pairs)  # (G, L, out_dim)
        d, r = self.d_model, self.bottleneck
        return GeneratedWeights(
            down_w=self.down_w(g).view(groups, self.num_layers, d, r),
            down_b=self.down_b(g),
            up_w=self.up_w(g).view(groups, self.num_layers, r, d),
            up_b=self.up_b(g),
            group_of=torch.arange(groups, device=cond.device) if group_of is None else group_of,
            per_example=group_of is None,
        )
