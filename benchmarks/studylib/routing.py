"""Routing measures shared by the routing studies (``routing_rules.py``, ``routing_vs_arrow.py``):
the fixed test draw they measure and the precision and coverage of calibrated routing."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pha_lightning.data.datamodule import longest_first
from pha_lightning.model.calibration import Calibration, decide_trained, probabilities, unit_choice


def capped(loader: DataLoader, most: int | None, seed: int = 0) -> DataLoader:
    """``loader`` over a fixed random draw of at most ``most`` of its examples (longest first)."""
    dataset = loader.dataset
    if most is None or len(dataset) <= most:
        return loader
    draw = longest_first(dataset.shuffle(seed=seed).select(range(most)))
    return DataLoader(draw, batch_size=loader.batch_size, shuffle=False, collate_fn=loader.collate_fn)


def measure(
    scores: Tensor, targets: Tensor, calibration: Calibration, similarity: Tensor | None = None
) -> dict[str, Any]:
    """Precision and coverage of calibrated routing: over the tasks outside confusable groups, at
    the level of groups over all tasks, and over all tasks; and per task. ``similarity``: the
    prototype cosines the novelty floor reads when the scores are not them (a routing probe's)."""
    tasks = calibration.tasks
    decisions = decide_trained(scores, calibration, similarity)
    routed = torch.tensor([d.task if d.task is not None else -1 for d in decisions])
    units = calibration.units()
    chosen, confidence = unit_choice(probabilities(scores, calibration.temperature), units)
    unit_of = {t: u for u, unit in enumerate(units) for t in unit}
    near_enough = (scores if similarity is None else similarity).max(-1).values >= calibration.similarity_floor
    sure = confidence >= calibration.threshold if calibration.threshold is not None else torch.zeros_like(near_enough)
    group_covered = near_enough & sure
    group_right = chosen == torch.tensor([unit_of[int(t)] for t in targets])
    grouped = {tasks.index(name) for group in calibration.groups for name in group}
    distinguishable = torch.tensor([int(t) not in grouped for t in targets])

    def rates(mask: Tensor, covered: Tensor, right: Tensor) -> tuple[float | None, float]:
        covered = covered & mask
        precision = float(right[covered].double().mean()) if covered.any() else None
        return precision, float(covered.sum()) / max(int(mask.sum()), 1)

    every = torch.ones(len(targets), dtype=torch.bool)
    is_routed, right = routed >= 0, routed == targets
    result = {}
    for name, (mask, covered, hits) in {
        "distinguishable": (distinguishable, is_routed, right),
        "group": (every, group_covered, group_right),
        "all": (every, is_routed, right),
    }.items():
        result[f"{name}_precision"], result[f"{name}_coverage"] = rates(mask, covered, hits)
    result["per_task"] = {
        name: dict(zip(("precision", "coverage"), rates(targets == t, is_routed, right)))
        for t, name in enumerate(tasks)
    }
    return result


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"
