"""L_IR, L_Pro and the smoothed CE against direct, loop-based transcriptions of method.md."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from pha_lightning.training.losses import (
    instance_contrastive_loss,
    label_smoothed_cross_entropy,
    prototype_contrastive_loss,
)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def reference_l_ir(z: torch.Tensor, task_ids: list[int], tau: float) -> float:
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and task_ids[p] == task_ids[i]]
        if not positives:
            continue
        zi = _unit(z[i])
        denom = sum(math.exp(float(zi @ _unit(z[a])) / tau) for a in range(len(z)) if a != i)
        terms = [math.log(math.exp(float(zi @ _unit(z[p])) / tau) / denom) for p in positives]
        losses.append(-sum(terms) / len(positives))
    return sum(losses) / len(losses)


def reference_l_pro(z: torch.Tensor, protos: torch.Tensor, task_ids: list[int], tau: float, include: bool) -> float:
    losses = []
    for i in range(len(z)):
        zi = _unit(z[i])
        scores = [math.exp(float(zi @ _unit(protos[j])) / tau) for j in range(len(protos))]
        pos = scores[task_ids[i]]
        denom = sum(s for j, s in enumerate(scores) if include or j != task_ids[i])
        losses.append(-math.log(pos / denom))
    return sum(losses) / len(losses)


# the last case has task 3 with a single example: it is an anchor for nobody
TASK_LAYOUTS = [[0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 2, 2, 1], [0, 0, 1, 2, 2, 3]]


@pytest.mark.parametrize("task_ids", TASK_LAYOUTS)
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_l_ir_matches_loop_reference(task_ids: list[int], tau: float) -> None:
    torch.manual_seed(len(task_ids))
    z = torch.randn(len(task_ids), 16, dtype=torch.float64)
    got = instance_contrastive_loss(z, torch.tensor(task_ids), tau)
    assert got.item() == pytest.approx(reference_l_ir(z, task_ids, tau), rel=1e-5)


def test_l_ir_without_any_positive_is_zero_and_differentiable() -> None:
    z = torch.randn(3, 8, requires_grad=True)
    loss = instance_contrastive_loss(z, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and z.grad is not None


@pytest.mark.parametrize("task_ids", TASK_LAYOUTS)
@pytest.mark.parametrize("denominator", ["exclude_positive", "include_positive"])
def test_l_pro_matches_loop_reference(task_ids: list[int], denominator: str) -> None:
    torch.manual_seed(7)
    z = torch.randn(len(task_ids), 16, dtype=torch.float64)
    protos = torch.randn(max(task_ids) + 2, 16, dtype=torch.float64)  # one prototype with no example
    got = prototype_contrastive_loss(z, protos, torch.tensor(task_ids), 0.1, denominator)
    expected = reference_l_pro(z, protos, task_ids, 0.1, include=denominator == "include_positive")
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_l_pro_released_variant_can_be_negative_and_infonce_cannot() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([0, 1])
    assert prototype_contrastive_loss(z, protos, ids, 0.1, "exclude_positive") < 0
    assert prototype_contrastive_loss(z, protos, ids, 0.1, "include_positive") > 0


def test_l_pro_rejects_unknown_denominator_by_name() -> None:
    with pytest.raises(ValueError, match="'both'.*exclude_positive"):
        prototype_contrastive_loss(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]), 0.1, "both")


def test_smoothed_cross_entropy_matches_formula_and_ignores_padding() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 4, -100], [0, -100, -100]])
    eps = 0.1
    terms = []
    for b in range(2):
        for t in range(3):
            if labels[b, t] == -100:
                continue
            logp = F.log_softmax(logits[b, t], -1)
            terms.append(-(1 - eps) * logp[labels[b, t]] - eps * logp.mean())
    expected = torch.stack(terms).mean()
    assert label_smoothed_cross_entropy(logits, labels, eps).item() == pytest.approx(expected.item(), rel=1e-6)
