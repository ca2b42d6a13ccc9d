"""The text progress lines of output that is no terminal: when a line is due, and the time left."""

from __future__ import annotations

import pytest

from pha_lightning.training.callbacks import TextProgress, text_progress


def test_a_line_is_due_every_interval_and_always_for_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(text_progress.time, "monotonic", lambda: now[0])
    progress = TextProgress(every_s=30)
    assert progress.due(last=False)  # the first
    now[0] = 129.0
    assert not progress.due(last=False)
    assert progress.due(last=True)  # the last, whenever it comes
    now[0] = 158.0
    assert not progress.due(last=False)
    now[0] = 159.5
    assert progress.due(last=False)
    progress.disable()
    assert not progress.due(last=True)  # ranks other than 0


def test_time_left_is_the_pace_so_far_times_what_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(text_progress.time, "monotonic", lambda: now[0])
    progress = TextProgress()
    progress.restart_clock()
    now[0] = 160.0
    assert progress.timing(done=20, left=180) == "0:01:00 elapsed, ~0:09:00 left"
    assert progress.timing(done=20, left=0) == "0:01:00 elapsed"  # finished
    assert progress.timing(done=20, left=float("inf")) == "0:01:00 elapsed"  # unbounded run


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every_s must be > 0 seconds, got 0"):
        TextProgress(every_s=0)
