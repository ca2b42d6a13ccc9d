"""Routing calibration (pha_lightning.model.calibration): the fitted temperature, the confusable
groups, the threshold for a target precision, and the decisions with their reasons."""

from __future__ import annotations

import pytest
import torch

from pha_lightning.errors import ConfigError
from pha_lightning.model.calibration import (
    Calibration,
    RoutingConfig,
    calibrate,
    choose_threshold,
    confusable_groups,
    decide,
    fit_temperature,
)


def test_temperature_of_least_nll_recovers_the_one_that_drew_the_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(4000, 5, generator=generator, dtype=torch.float64) * 2 - 1
    targets = torch.multinomial(torch.softmax(scores / 0.2, -1), 1, generator=generator).squeeze(1)
    assert fit_temperature(scores, targets) == pytest.approx(0.2, rel=0.1)


def confusion_examples(shares: list[list[float]], per_task: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(nearest, targets) in which task i's examples go to task j in shares[i][j] of cases."""
    nearest, targets = [], []
    for i, row in enumerate(shares):
        for j, share in enumerate(row):
            count = round(share * per_task)
            nearest += [j] * count
            targets += [i] * count
    return torch.tensor(nearest), torch.tensor(targets)


def test_groups_need_mutual_confusion_and_stay_small() -> None:
    # 0 and 1 confuse each other (30 % and 40 %); 2 sends 50 % to 3, but 3 never to 2: not mutual
    shares = [
        [0.7, 0.3, 0.0, 0.0, 0.0],
        [0.4, 0.6, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.5, 0.5, 0.0],
        [0.0, 0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 1.0],
    ]
    nearest, targets = confusion_examples(shares)
    assert confusable_groups(nearest, targets, 5, RoutingConfig(group_confusion=0.2)) == [[0, 1]]
    assert confusable_groups(nearest, targets, 5, RoutingConfig(group_confusion=0.35)) == []
    # six tasks all confused with each other: groups of at most max_group_size, most confused pairs first
    uniform = [[1 / 6] * 6 for _ in range(6)]
    nearest, targets = confusion_examples(uniform, per_task=600)
    groups = confusable_groups(nearest, targets, 6, RoutingConfig(group_confusion=0.1, max_group_size=4))
    assert max(len(g) for g in groups) <= 4 and sorted(t for g in groups for t in g) == list(range(6))


def test_threshold_is_the_lowest_confidence_that_keeps_the_target_precision() -> None:
    confidence = torch.tensor([0.99, 0.97, 0.95, 0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    correct = torch.tensor([1, 1, 1, 1, 0, 1, 0], dtype=torch.bool)
    assert choose_threshold(confidence, correct, 1.0) == 0.9
    assert choose_threshold(confidence, correct, 0.8) == 0.7  # 5 of 6 right at or above 0.7
    assert choose_threshold(torch.tensor([0.9, 0.8]), torch.tensor([False, True]), 0.95) is None
    # tied confidences are cut together: 0.9 holds one right and one wrong example
    tied = torch.tensor([0.95, 0.9, 0.9], dtype=torch.float64)
    assert choose_threshold(tied, torch.tensor([True, True, False]), 0.9) == 0.95


def calibration(**changes: object) -> Calibration:
    fields = {
        "tasks": ["a", "b", "c", "d"],
        "temperature": 0.1,
        "threshold": 0.8,
        "target_precision": 0.95,
        "similarity_floor": 0.5,
        "groups": [["c", "d"]],
    }
    return Calibration(**{**fields, **changes})


def test_decisions_route_or_abstain_with_the_reason() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0],  # clearly a
            [0.55, 0.52, 0.0, 0.0],  # a or b: low confidence
            [0.0, 0.0, 0.9, 0.85],  # c or d: a confusable group
            [0.3, 0.2, 0.1, 0.0],  # a, but unlike every task
        ],
        dtype=torch.float64,
    )
    decisions = decide(scores, calibration())
    assert decisions[0].task == 0 and decisions[0].confidence > 0.99 and decisions[0].reason is None
    assert decisions[1].task is None and "below the threshold 0.80 chosen for precision 0.95" in decisions[1].reason
    assert decisions[2].task is None and "cannot tell tasks ['c', 'd'] apart" in decisions[2].reason
    assert decisions[2].confidence == pytest.approx(float(torch.softmax(scores[2] / 0.1, -1)[2:].sum()))
    assert decisions[3].task is None and "unlike every trained task: similarity 0.300" in decisions[3].reason
    assert all(d.reason.endswith("name the task to predict") for d in decisions[1:])
    with pytest.raises(ConfigError, match="covers 4 tasks"):
        decide(scores[:, :3], calibration())


def test_calibrated_routing_is_as_precise_as_asked_on_its_validation() -> None:
    generator = torch.Generator().manual_seed(1)
    targets = torch.arange(6).repeat_interleave(200)
    scores = torch.randn(len(targets), 6, generator=generator, dtype=torch.float64) * 0.15
    scores[torch.arange(len(targets)), targets] += 0.25  # right more often than not, far from always
    result = calibrate(scores, targets, list("abcdef"), RoutingConfig(target_precision=0.9, group_confusion=0.5))
    decisions = decide(scores, result)
    routed = [(d.task, int(t)) for d, t in zip(decisions, targets) if d.task is not None]
    precision = sum(task == target for task, target in routed) / len(routed)
    assert precision >= 0.9 and 0.1 < len(routed) / len(targets) < 0.99
    assert result.validation["precision"] == pytest.approx(precision)
    assert result.validation["coverage"] == pytest.approx(len(routed) / len(targets))
    assert Calibration.from_dict(result.to_dict()) == result


def test_routing_settings_name_a_bad_value() -> None:
    with pytest.raises(ConfigError, match=r"model.routing.target_precision must be in \(0, 1\], got 1.5"):
        RoutingConfig(target_precision=1.5)
    with pytest.raises(ConfigError, match="model.routing.max_group_size must be >= 2, got 1"):
        RoutingConfig(max_group_size=1)
