"""The learning-rate schedule of ``pha fit``: linear warm-up then linear decay, as transformers' schedule."""

from __future__ import annotations

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from pha_lightning.training.system import linear_schedule


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=3e-4)


@pytest.mark.parametrize(("warmup", "total"), [(0, 10), (3, 10), (10, 10), (5, 7), (0, 1), (1, 1)])
def test_schedule_matches_transformers_linear_schedule_step_by_step(warmup: int, total: int) -> None:
    ours, theirs = _optimizer(), _optimizer()
    ours_schedule = linear_schedule(ours, warmup, total)
    theirs_schedule = get_linear_schedule_with_warmup(theirs, warmup, total)
    for _ in range(total + 2):  # past the end: the factor stays 0
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
        ours.step(), theirs.step()
        ours_schedule.step(), theirs_schedule.step()
    assert ours_schedule.state_dict() == theirs_schedule.state_dict()


def test_schedule_warms_up_then_decays_to_zero() -> None:
    optimizer = _optimizer()
    schedule = linear_schedule(optimizer, warmup_steps=2, total_steps=6)
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([0.0, 1.5e-4, 3e-4, 2.25e-4, 1.5e-4, 0.75e-4, 0.0])


def test_resumed_schedule_continues_where_it_stopped() -> None:
    first, second = _optimizer(), _optimizer()
    schedule = linear_schedule(first, 2, 6)
    for _ in range(3):
        first.step()
        schedule.step()
    resumed = linear_schedule(second, 2, 6)
    resumed.load_state_dict(schedule.state_dict())
    second.load_state_dict(first.state_dict())
    for optimizer, scheduler in ((first, schedule), (second, resumed)):
        optimizer.step()
        scheduler.step()
    assert second.param_groups[0]["lr"] == first.param_groups[0]["lr"] == pytest.approx(1.5e-4)
