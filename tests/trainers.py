"""One quiet CPU Trainer for the tests that train or evaluate in-process."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer

#: single process on the CPU, nothing printed, nothing logged, no sanity validation
QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "use_distributed_sampler": False,
}


def quiet_trainer(**overrides: Any) -> Trainer:
    """A Trainer with :data:`QUIET` defaults: tests read results from it, not from its output."""
    return Trainer(**{**QUIET, **overrides})
