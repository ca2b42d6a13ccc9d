"""Sweep pruning: a report per validation at the global step; a stop when pruned, never at the last step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pha_lightning.training.callbacks.trial_pruning import TrialPruning


class AlwaysPrune:
    def __init__(self) -> None:
        self.reports: list[tuple[int, float]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return True


def validate(callback: TrialPruning, step: int, value: float, max_steps: int = 150) -> SimpleNamespace:
    trainer = SimpleNamespace(
        sanity_checking=False,
        callback_metrics={"val/avg": torch.tensor(value)},
        global_step=step,
        max_steps=max_steps,
        should_stop=False,
    )
    callback.on_validation_end(trainer, None)
    return trainer


def test_a_pruned_trial_stops_at_that_validation_but_not_at_the_last_one() -> None:
    trial = AlwaysPrune()
    last = TrialPruning(trial, "val/avg")
    assert not validate(last, 150, 99.8).should_stop and last.pruned_at is None  # the run's end: complete
    middle = TrialPruning(trial, "val/avg")
    assert validate(middle, 50, 46.0).should_stop and middle.pruned_at == 50
    validate(middle, 100, 47.0)  # after pruning: nothing more is reported
    assert [step for step, _ in trial.reports] == [150, 50] and trial.reports[0][1] == pytest.approx(99.8)
