"""A quiet CPU Trainer for scripts that read results from return values, not from output.

Benchmarks and tests train and evaluate in-process many times; each run printing a progress bar,
a model summary and a log folder would bury what they measure.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer

#: on the CPU, nothing printed or logged, no sanity validation, the loaders' samplers kept as given
QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "use_distributed_sampler": False,
}


def quiet_trainer(**overrides: Any) -> Trainer:
    """A Trainer with :data:`QUIET` defaults; ``overrides`` replace or add any Trainer argument."""
    return Trainer(**{**QUIET, **overrides})
