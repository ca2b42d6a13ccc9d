"""The hypernetwork (docs/method.md, "The parts"): (prototype row ⊕ layer embedding) → adapter weights.

One network is shared by all tasks and all generated layers; the layer embedding tells it which
layer it is generating for. Its output heads start tiny (scale 1e-3) and with zero biases, so a
freshly built model behaves like the frozen backbone (the generated adapters start near zero).

Calibration (``calibration="width"``, the default): each generated weight is a sum over the
``out_dim`` features of ``g``, so an Adam step that moves every head weight by ``lr`` moves a
generated weight by ``lr·‖g‖₁`` (≈ 50·lr for 64 LayerNorm-ed features), ~30× a shared adapter's
step. The heads therefore multiply their matrix product by ``1/out_dim`` and start with weights
``out_dim`` times larger (the same function at init), which brings the step back to ≈ lr whatever
the width. ``calibration="none"`` is the released parametrisation. See docs/method.md.

Output scale (``output_scale``, off by default; an improvement beyond the paper): each generated
adapter's output is multiplied by a scale that starts at exactly 0, learned per layer (``layer``)
or generated per condition and layer by a zero-started head (``task_layer``), so a fresh adapter is
exactly transparent and has to earn its loudness, as LoRA's ``B = 0``. See docs/method.md.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from pha_lightning.errors import ConfigError
from pha_lightning.model.adapters import GeneratedWeights

Calibration = Literal["width", "none"]
CALIBRATIONS: tuple[str, ...] = get_args(Calibration)
OutputScaleMode = Literal["none", "layer", "task_layer"]
OUTPUT_SCALES: tuple[str, ...] = get_args(OutputScaleMode)


def head_multiplier(calibration: str, out_dim: int) -> float:
    """The factor the heads apply to ``W·g``: ``1/out_dim`` when calibrated, 1 for the released heads."""
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"unknown hypernet_calibration {calibration!r}; valid: {list(CALIBRATIONS)}")
    return 1.0 / out_dim if calibration == "width" else 1.0


class Head(nn.Linear):
    """``multiplier·(W·g) + b``: a linear output head whose weight is stored ``1/multiplier`` larger."""

    def __init__(self, in_features: int, out_features: int, multiplier: float) -> None:
        super().__init__(in_features, out_features)
        self.multiplier = multiplier

    def init_uniform(self, bound: float) -> None:
        """U(±bound/multiplier) weights and a zero bias: at init the head computes what U(±bound)
        weights would, whatever the multiplier; only the size of an optimiser step changes."""
        nn.init.uniform_(self.weight, -bound / self.multiplier, bound / self.multiplier)
        nn.init.zeros_(self.bias)

    def forward(self, g: Tensor) -> Tensor:
        if self.multiplier == 1.0:
            return super().forward(g)
        return torch.addmm(self.bias, g.reshape(-1, g.shape[-1]), self.weight.t(), alpha=self.multiplier).view(
            *g.shape[:-1], -1
        )


class LayerScale(nn.Module):
    """One learned scalar per generated layer, starting at 0: ``s (G, L)``, the same for every condition."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(num_layers))

    def forward(self, g: Tensor) -> Tensor:
        return self.scale.expand(g.shape[0], -1)


class GeneratedScale(nn.Module):
    """A scalar per condition and layer, ``s = w·g + b`` read from the trunk's ``g`` by a head that
    starts at zero (weight and bias): at init ``s = 0`` and only the head gets a gradient."""

    def __init__(self, out_dim: int, multiplier: float) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # draws nothing: every other part's init is unchanged
            self.head = Head(out_dim, 1, multiplier)
            self.head.init_uniform(0.0)

    def forward(self, g: Tensor) -> Tensor:
        return self.head(g).squeeze(-1)


def build_output_scale(mode: str, num_layers: int, out_dim: int, multiplier: float) -> nn.Module | None:
    """The module computing the generated adapters' output scale ``(G, L)`` (``None``: no scale, the released adapters)."""
    if mode not in OUTPUT_SCALES:
        raise ConfigError(f"unknown generated_output_scale {mode!r}; valid: {list(OUTPUT_SCALES)}")
    if mode == "layer":
        return LayerScale(num_layers)
    return GeneratedScale(out_dim, multiplier) if mode == "task_layer" else None


class Generator(nn.Module):
    """What every generator shares: one embedding row per generated site (a layer, or a layer and
    target), a trunk ``(condition ⊕ site embedding) → g`` and calibrated output heads reading ``g``."""

    def __init__(
        self, num_sites: int, cond_dim: int, layer_emb_dim: int, hidden_dim: int, out_dim: int, layer_norm_eps: float
    ) -> None:
        super().__init__()
        self.layer_embeddings = nn.Embedding(num_sites, layer_emb_dim)
        self.trunk = nn.Sequential(
            nn.Linear(cond_dim + layer_emb_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, out_dim),
            nn.LayerNorm(out_dim, eps=layer_norm_eps),
        )

    def features(self, cond: Tensor) -> Tensor:
        """``g (G, sites, out_dim)`` for ``G`` condition vectors ``cond (G, cond_dim)`` and every site."""
        sites = self.layer_embeddings.weight
        pairs = torch.cat(
            [cond.unsqueeze(1).expand(-1, sites.shape[0], -1), sites.unsqueeze(0).expand(cond.shape[0], -1, -1)], dim=-1
        )
        return self.trunk(pairs)

    def heads(self) -> tuple[Head, ...]:
        raise NotImplementedError


class HyperNetwork(Generator):
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
        calibration: ``width`` scales the heads' step to a shared adapter's; ``none`` is the released
            parametrisation (see the module docstring).
        output_scale: ``none`` (the released adapters), ``layer`` or ``task_layer``: a zero-started
            scale on each generated adapter's output (see the module docstring).
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
        calibration: Calibration = "width",
        output_scale: OutputScaleMode = "none",
    ) -> None:
        super().__init__(num_layers, cond_dim, layer_emb_dim, hidden_dim, out_dim, layer_norm_eps)
        self.d_model, self.bottleneck, self.num_layers = d_model, bottleneck, num_layers
        scale = head_multiplier(calibration, out_dim)
        self.down_w = Head(out_dim, d_model * bottleneck, scale)
        self.down_b = Head(out_dim, bottleneck, scale)
        self.up_w = Head(out_dim, bottleneck * d_model, scale)
        self.up_b = Head(out_dim, d_model, scale)
        # this order of random draws is the released code's: calibration "none" reproduces its init
        self.down_w.init_uniform(init_scale * math.sqrt(3.0 / (out_dim * d_model)))
        self.up_w.init_uniform(init_scale * math.sqrt(3.0 / (out_dim * bottleneck)))
        for bias_head in (self.down_b, self.up_b):
            bias_head.init_uniform(init_scale * math.sqrt(3.0 / out_dim))
        self.output_scale = build_output_scale(output_scale, num_layers, out_dim, scale)

    def heads(self) -> tuple[Head, ...]:
        return (self.down_w, self.down_b, self.up_w, self.up_b)

    def forward(self, cond: Tensor, group_of: Tensor | None = None) -> GeneratedWeights:
        """Weights for ``G`` condition vectors ``cond (G, cond_dim)`` and all layers at once.

        ``group_of (B,)`` says which condition row each example of the batch uses; ``None`` means
        one row per example, in batch order (HyperDecoder).
        """
        groups = cond.shape[0]
        g = self.features(cond)  # (G, L, out_dim)
        d, r = self.d_model, self.bottleneck
        up_w, up_b = self.up_w(g).view(groups, self.num_layers, r, d), self.up_b(g)
        if self.output_scale is not None:  # s·(h·W_up + b_up): folded into the up projection
            s = self.output_scale(g)  # (G, L)
            up_w, up_b = up_w * s[..., None, None], up_b * s[..., None]
        return GeneratedWeights(
            down_w=self.down_w(g).view(groups, self.num_layers, d, r),
            down_b=self.down_b(g),
            up_w=up_w,
            up_b=up_b,
            group_of=torch.arange(groups, device=cond.device) if group_of is None else group_of,
            per_example=group_of is None,
        )
