"""Multi-task LoRA banks: each task's LoRA factors at every site, made without a hypernetwork
(docs/method.md, "Multi-task LoRA baselines").

Every bank yields a :class:`~pha_lightning.model.lora.GeneratedLoRA` for the tasks of a batch, so
the sites, the grouped application, chunking and exports are generated LoRA's:

* :class:`TaskLoRABank` (``task_lora``): one LoRA per task, peft's ``LoraModel`` once per task;
* :class:`SkillLoRABank` (``poly``, ``mhr``): peft's ``PolyModel``, each task's LoRA a learned
  mixture of ``poly_skills`` skill LoRAs, each cut into ``poly_splits`` heads mixed apart (MHR);
* :class:`MTLLoRABank` (``mtl_lora``): AdapterHub's MTL-LoRA, a shared ``A``, a per-task diagonal
  ``Λ`` and a per-task mixture of shared up-projections;
* :class:`ArrowLoRA` (``arrow``): peft's Arrow routing over a ``task_lora`` library at inference,
  every token mixing the ``arrow_top_k`` LoRAs whose top right singular vector it aligns with best.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions.relaxed_bernoulli import RelaxedBernoulli

from pha_lightning.errors import ConfigError
from pha_lightning.model.lora import GeneratedLoRA, Shape, shape_sets

#: peft's Poly router: the mixture weights are normalised by their sum plus this
POLY_EPS = 1e-12


def site_counts(site_shapes: Sequence[Shape]) -> tuple[list[Shape], list[int]]:
    """The distinct site shapes (in order of appearance) and how many sites each has."""
    shapes, slots = shape_sets(site_shapes)
    return shapes, [sum(1 for k, _ in slots if k == set_) for set_ in range(len(shapes))]


def init_lora_a(a: Tensor) -> Tensor:
    """Each ``(r, d_in)`` matrix of ``a (..., r, d_in)`` drawn as peft draws ``lora_A``."""
    for matrix in a.view(-1, *a.shape[-2:]):
        nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))
    return a


class TaskLoRABank(nn.Module):
    """One LoRA per task at every site (``task_lora``, and Arrow's library): ``a[k] (T, S_k, r, d_in)``
    drawn as peft's ``lora_A``, ``b[k] (T, S_k, d_out, r)`` zero."""

    def __init__(self, num_tasks: int, site_shapes: Sequence[Shape], rank: int) -> None:
        super().__init__()
        shapes, counts = site_counts(site_shapes)
        self.a = nn.ParameterList(
            nn.Parameter(init_lora_a(torch.empty(num_tasks, n, rank, d_in))) for (d_in, _), n in zip(shapes, counts)
        )
        self.b = nn.ParameterList(
            nn.Parameter(torch.zeros(num_tasks, n, d_out, rank)) for (_, d_out), n in zip(shapes, counts)
        )
        self._prototypes: tuple[tuple, tuple[Tensor, ...]] | None = None

    def forward(self, task_ids: Tensor) -> GeneratedLoRA:
        tasks, group_of = torch.unique(task_ids, return_inverse=True)
        return GeneratedLoRA(tuple(a[tasks] for a in self.a), tuple(b[tasks] for b in self.b), group_of)

    def arrow(self, top_k: int, temperature: float, examples: int) -> ArrowLoRA:
        """Arrow's routing over every task's LoRA, for a batch of ``examples`` (no task label used)."""
        return ArrowLoRA(
            tuple(self.a),
            tuple(self.b),
            self.prototypes(),
            top_k,
            temperature,
            torch.zeros(examples, dtype=torch.long, device=self.a[0].device),
        )

    @torch.no_grad()
    def prototypes(self) -> tuple[Tensor, ...]:
        """Each task's and site's Arrow prototype, the top right singular vector of ``ΔW = B·A``
        ``(T, S_k, d_in)``; computed again only when a factor changed."""
        stamp = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if self._prototypes is None or self._prototypes[0] != stamp:
            self._prototypes = (stamp, tuple(top_right_singular_vectors(a, b) for a, b in zip(self.a, self.b)))
        return self._prototypes[1]


def top_right_singular_vectors(a: Tensor, b: Tensor) -> Tensor:
    """The top right singular vector of every ``B·A`` (``a (..., r, d_in)``, ``b (..., d_out, r)``),
    exactly, without forming ``B·A``: with ``Aᵀ = QR``, ``B·A = (B·Rᵀ)·Qᵀ``, so it is ``Q`` times the
    top right singular vector of the small ``B·Rᵀ`` (peft approximates it by power iteration)."""
    q, r = torch.linalg.qr(a.transpose(-1, -2))  # (..., d_in, r), (..., r, r)
    _, _, vh = torch.linalg.svd(b @ r.transpose(-1, -2), full_matrices=False)
    return (q @ vh[..., 0, :, None]).squeeze(-1)


@dataclass
class ArrowLoRA:
    """Every task's LoRA factors and prototypes, applied by Arrow's per-token routing.

    Each token ``x`` scores every task's LoRA of a site by ``|x·v_t|`` (``v_t`` the prototype), keeps the
    ``top_k``, and sums their updates weighted by the softmax of the kept scores over ``temperature``.
    ``group_of`` puts every example in the one group the whole library serves (chunks re-index it).
    """

    a: tuple[Tensor, ...]
    b: tuple[Tensor, ...]
    protos: tuple[Tensor, ...]
    top_k: int
    temperature: float
    group_of: Tensor
    per_example: bool = False

    def parts(self) -> dict[str, Tensor]:
        sets = range(len(self.a))
        return {
            **{f"lora_a{k}": self.a[k] for k in sets},
            **{f"lora_b{k}": self.b[k] for k in sets},
            **{f"proto{k}": self.protos[k] for k in sets},
        }

    def with_parts(self, parts: dict[str, Tensor], group_of: Tensor, per_example: bool = False) -> ArrowLoRA:
        sets = range(len(parts) // 3)
        return ArrowLoRA(
            tuple(parts[f"lora_a{k}"] for k in sets),
            tuple(parts[f"lora_b{k}"] for k in sets),
            tuple(parts[f"proto{k}"] for k in sets),
            self.top_k,
            self.temperature,
            group_of,
            per_example,
        )

    def matrix_sets(self) -> list[tuple[Tensor, ...]]:
        return list(zip(self.a, self.b))

    def coefficients(self, x: Tensor, shape_set: int, index: int) -> Tensor:
        """Every token's weights over the task LoRAs at site ``index`` of set ``shape_set``: ``(tokens, T)``,
        zero off the ``top_k``, each row summing to 1 (what routing analyses read, and :meth:`apply` uses)."""
        tokens = x.reshape(-1, x.shape[-1])
        scores = (tokens @ self.protos[shape_set][:, index].T).abs()  # (t, T)
        top, chosen = scores.topk(self.top_k, dim=1)
        kept = torch.full_like(scores, float("-inf")).scatter(1, chosen, top)
        return torch.softmax(kept / self.temperature, dim=1)

    def apply(self, x: Tensor, shape_set: int, index: int) -> Tensor:
        """The routed update of site ``index`` of set ``shape_set`` for every token of ``x (..., d_in)``."""
        a, b = self.a[shape_set][:, index], self.b[shape_set][:, index]  # (T, r, d_in), (T, d_out, r)
        tokens = x.reshape(-1, x.shape[-1])
        coeff = self.coefficients(x, shape_set, index)  # (t, T)
        low = torch.einsum("tf,erf->ter", tokens, a) * coeff[..., None]  # (t, T, r)
        update = low.flatten(1) @ b.permute(0, 2, 1).reshape(-1, b.shape[1])  # Σ_t coeff·B_t·A_t·x
        return update.reshape(*x.shape[:-1], b.shape[1])


class SkillLoRABank(nn.Module):
    """peft's Poly (``splits`` 1) and MHR (``splits`` > 1): an inventory of ``skills`` LoRAs per site;
    each task's LoRA at a site mixes them with weights from its own learned logits, split by split.

    Per shape set ``k``: ``a[k] (S_k, splits, skills, r, d_in / splits)`` drawn as peft draws them,
    ``b[k] (S_k, splits, skills, d_out / splits, r)`` zero, ``logits[k] (S_k, T, splits, skills)``
    uniform in ±1e-3. The weights are ``sigmoid(logits)`` at evaluation and a relaxed Bernoulli
    sample (temperature 1) per example in training, normalised to sum to 1 over the skills.
    """

    def __init__(self, num_tasks: int, site_shapes: Sequence[Shape], rank: int, skills: int, splits: int) -> None:
        super().__init__()
        shapes, counts = site_counts(site_shapes)
        uneven = sorted({width for shape in shapes for width in shape if width % splits})
        if uneven:
            raise ConfigError(
                f"poly_splits {splits} must divide every LoRA site's input and output width, and {uneven} are not "
                f"multiples of it; use a divisor of {math.gcd(*(w for s in shapes for w in s))}"
            )
        self.rank, self.splits = rank, splits
        self.a = nn.ParameterList(
            nn.Parameter(init_lora_a(torch.empty(n, splits, skills, rank, d_in // splits)))
            for (d_in, _), n in zip(shapes, counts)
        )
        self.b = nn.ParameterList(
            nn.Parameter(torch.zeros(n, splits, skills, d_out // splits, rank)) for (_, d_out), n in zip(shapes, counts)
        )
        self.logits = nn.ParameterList(
            nn.Parameter(torch.empty(n, num_tasks, splits, skills).uniform_(-1e-3, 1e-3)) for n in counts
        )

    def forward(self, task_ids: Tensor) -> GeneratedLoRA:
        if self.training:  # one sample per example: the groups are the examples
            rows, group_of, per_example = task_ids, torch.arange(len(task_ids), device=task_ids.device), True
        else:
            (rows, group_of), per_example = torch.unique(task_ids, return_inverse=True), False
        a, b = [], []
        for a_k, b_k, logits in zip(self.a, self.b, self.logits):
            w = self.mixture(logits[:, rows])  # (S, G, splits, skills)
            sites, groups = w.shape[:2]
            a.append(torch.einsum("ngqs,nqsrd->gnrqd", w, a_k).reshape(groups, sites, self.rank, -1))
            b.append(torch.einsum("ngqs,nqsdr->gnqdr", w, b_k).reshape(groups, sites, -1, self.rank))
        return GeneratedLoRA(tuple(a), tuple(b), group_of, per_example)

    def mixture(self, logits: Tensor) -> Tensor:
        """The skills' weights from their logits, as peft's ``PolyRouter`` makes them."""
        w = RelaxedBernoulli(1.0, logits=logits).rsample() if self.training else torch.sigmoid(logits)
        return w / (w.sum(dim=-1, keepdim=True) + POLY_EPS)


class MTLLoRABank(nn.Module):
    """AdapterHub's MTL-LoRA (``MTLLoRAConfig`` with ``task_specific_matrix_type="singular_values"``):
    per site a shared ``A``, a task-specific diagonal ``Λ_t`` and ``n`` shared up-projections ``B_i``
    mixed per task by ``softmax(w_t / sharpness)``; task ``t``'s LoRA is ``(Σ_i p_ti·B_i)·(Λ_t·A)``.

    Per shape set ``k``: ``a[k] (S_k, r, d_in)`` drawn as LoRA's ``A``, ``b[k] (S_k, n, d_out, r)``
    zero, ``scales[k] (S_k, T, r)`` and ``mix[k] (S_k, T, n)`` ones, as ``adapters`` starts them.
    """

    def __init__(
        self, num_tasks: int, site_shapes: Sequence[Shape], rank: int, up_projections: int, sharpness: float
    ) -> None:
        super().__init__()
        shapes, counts = site_counts(site_shapes)
        self.sharpness = sharpness
        self.a = nn.ParameterList(
            nn.Parameter(init_lora_a(torch.empty(n, rank, d_in))) for (d_in, _), n in zip(shapes, counts)
        )
        self.b = nn.ParameterList(
            nn.Parameter(torch.zeros(n, up_projections, d_out, rank)) for (_, d_out), n in zip(shapes, counts)
        )
        self.scales = nn.ParameterList(nn.Parameter(torch.ones(n, num_tasks, rank)) for n in counts)
        self.mix = nn.ParameterList(nn.Parameter(torch.ones(n, num_tasks, up_projections)) for n in counts)

    def forward(self, task_ids: Tensor) -> GeneratedLoRA:
        tasks, group_of = torch.unique(task_ids, return_inverse=True)
        a, b = [], []
        for a_k, b_k, scales, mix in zip(self.a, self.b, self.scales, self.mix):
            a.append((scales[:, tasks, :, None] * a_k[:, None]).transpose(0, 1))  # (G, S, r, d_in)
            weights = torch.softmax(mix[:, tasks] / self.sharpness, dim=-1)  # (S, G, n)
            b.append(torch.einsum("sgn,sndr->gsdr", weights, b_k))
        return GeneratedLoRA(tuple(a), tuple(b), group_of)
