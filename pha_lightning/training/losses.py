"""PHA's training losses (docs/method.md, "Losses").

* :func:`instance_contrastive_loss` — L_IR, supervised InfoNCE between the retrieval vectors of a
  batch: examples of the same task are positives, every other example is in the denominator.
* :func:`prototype_contrastive_loss` — L_Pro, each retrieval vector against every prototype. The
  authors' released code leaves the positive prototype out of the denominator
  (``denominator="exclude_positive"``, the default); standard InfoNCE keeps it in
  (``"include_positive"``).
* :func:`between_task_similarity` — L_apart (off by default, beyond the paper): the mean pairwise
  cosine similarity between tasks' generated adapters per generated layer or LoRA site, floored at 0.
* :func:`label_smoothed_cross_entropy` — token- or example-level CE with label smoothing, averaged
  (the released low-data configs sum it instead, which makes the contrastive terms vanish).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor
from torch.nn import functional as F

from pha_lightning.model.adapters import WeightSet, site_vectors

ProDenominator = Literal["exclude_positive", "include_positive"]
PRO_DENOMINATORS: tuple[str, ...] = get_args(ProDenominator)


def instance_contrastive_loss(z: Tensor, task_ids: Tensor, temperature: float = 0.1) -> Tensor:
    """L_IR over a batch of retrieval vectors ``z (B, D)`` with task ids ``(B,)``.

    Anchors without a positive (the only example of their task in the batch) are skipped; a batch
    with no anchor at all returns a zero that still belongs to the graph.
    """
    z_hat = F.normalize(z.float(), dim=-1)
    sim = z_hat @ z_hat.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    sim = sim - sim.max(dim=1, keepdim=True).values.detach()
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (task_ids.unsqueeze(0) == task_ids.unsqueeze(1)) & ~eye
    num_pos = positives.sum(1)
    anchors = num_pos > 0
    if not anchors.any():
        return z.sum() * 0.0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)
    return -(pos_log_prob[anchors] / num_pos[anchors]).mean()


def prototype_contrastive_loss(
    z: Tensor,
    prototypes: Tensor,
    task_ids: Tensor,
    temperature: float = 0.1,
    denominator: ProDenominator = "exclude_positive",
) -> Tensor:
    """L_Pro between retrieval vectors ``z (B, D)`` and the prototype table ``(T, D)``."""
    if denominator not in PRO_DENOMINATORS:
        raise ValueError(f"unknown L_Pro denominator {denominator!r}; valid: {list(PRO_DENOMINATORS)}")
    if denominator == "exclude_positive" and prototypes.shape[0] < 2:
        raise ValueError("L_Pro with denominator 'exclude_positive' needs at least 2 tasks (prototypes)")
    logits = F.normalize(z.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).T / temperature
    positive = logits.gather(1, task_ids.unsqueeze(1)).squeeze(1)
    if denominator == "exclude_positive":
        logits = logits.scatter(1, task_ids.unsqueeze(1), float("-inf"))
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def label_smoothed_cross_entropy(
    logits: Tensor, labels: Tensor, epsilon: float = 0.1, ignore_index: int = -100
) -> Tensor:
    """Mean label-smoothed CE over the non-ignored positions; ``logits (..., C)``, ``labels (...)``."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        label_smoothing=epsilon,
        ignore_index=ignore_index,
    )


def between_task_similarity(weights: WeightSet) -> Tensor:
    """L_apart: ``mean over sites of max(0, mean_{s<t} cos(W_s, W_t))`` for ``weights`` generated for
    ``T ≥ 2`` tasks (one group each), ``W_t`` a task's matrices at one site flattened into one vector.

    1 when every task gets the same adapter (up to scale), 0 once a site's adapters are unrelated on
    average (independent per-task adapters): the hinge keeps it from rewarding opposite adapters,
    which a plain mean reaches with two tasks (cos −1). For equal norms and ``L_apart > 0`` at a
    site, ``(T−1)/T·(1 − L_apart)`` is the square of the health report's between-task spread.
    """
    sets = site_vectors(weights)  # each (T, sites, n); n differs between LoRA's shape sets
    tasks = sets[0].shape[0]
    if tasks < 2:
        raise ValueError(f"L_apart compares tasks' adapters: it needs at least 2 tasks, got {tasks}")
    first, second = torch.triu_indices(tasks, tasks, offset=1, device=sets[0].device)
    per_site = []
    for vectors in sets:
        unit = F.normalize(vectors.float(), dim=-1)
        gram = torch.einsum("tsn,usn->stu", unit, unit)  # (sites, T, T): no per-pair copy of the weights
        per_site.append(gram[:, first, second].mean(1))
    return torch.cat(per_site).clamp_min(0.0).mean()
