"""Which PHA for how many training examples per task: the rule the converged grid backs.

On five GLUE tasks with MiniLM (results/converged, 3 paired seeds), PHA generating LoRA
was ahead of PHA generating bottleneck adapters at 100 examples per task on every seed, and behind
it at 500 on every seed; between the two sizes nothing was measured, so nothing is advised there.
On 18 tasks at 100 examples per task (results/many_tasks) the two kinds were level, so the rule
holds for as many tasks as it was measured on. docs/method.md, "Which PHA for which data size",
gives the numbers.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from pha_lightning.model.config import PHAConfig

RESULTS = "results/converged"


@dataclass(frozen=True)
class SizeRule:
    """The sizes (median training examples per task) at which one kind was measured ahead."""

    lora_at_most: int = 100
    """At or below this, PHA generating LoRA was ahead (test average 48.9 vs 45.4 at 100)."""
    bottleneck_at_least: int = 500
    """At or above this, PHA generating bottleneck adapters was ahead (58.4 vs 56.7 at 500)."""
    tasks_at_most: int = 5
    """Both were measured on five tasks; on 18 the kinds were level at 100 (PHA +0.5), so with more
    tasks than this nothing is advised."""


def size_advice(config: PHAConfig, examples_per_task: Sequence[int], rule: SizeRule = SizeRule()) -> str | None:
    """The advice to switch PHA's generated adapter kind, or ``None`` when the run is on the measured
    side (or between the measured sizes, over more tasks than measured, or not the released PHA the
    grid compared)."""
    if config.method != "pha" or not examples_per_task or len(examples_per_task) > rule.tasks_at_most:
        return None
    size = statistics.median(examples_per_task)
    where = f"{size:g} training examples per task (median over {len(examples_per_task)} tasks)"
    if config.adapter_kind == "bottleneck" and config.generated_output_scale == "none" and size <= rule.lora_at_most:
        return (
            f"PHA generating bottleneck adapters at {where}: at {rule.lora_at_most} or fewer examples per task, "
            "PHA generating LoRA was ahead on every paired seed (test average 48.9 vs 45.4, five GLUE tasks, "
            f"{RESULTS}); consider --model.arch.adapter_kind=lora (configs/methods/pha_lora.yaml). "
            "docs/method.md, 'Which PHA for which data size'."
        )
    if config.adapter_kind == "lora" and size >= rule.bottleneck_at_least:
        return (
            f"PHA generating LoRA at {where}: at {rule.bottleneck_at_least} or more examples per task, PHA "
            "generating bottleneck adapters was ahead on every paired seed (test average 58.4 vs 56.7, five GLUE "
            f"tasks, {RESULTS}); consider --model.arch.adapter_kind=bottleneck (PHA's default). "
            "docs/method.md, 'Which PHA for which data size'."
        )
    return None
