"""The model and the requests of the serving benchmarks (serving.py, serve_load.py, routing_cost.py):
one PHA-LoRA model with non-zero random factors (the cost does not depend on what they learned)
and a stream of validation examples of the offline suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pha_lightning import PHAConfig, PHAModel
from pha_lightning.data.catalog import get_task
from pha_lightning.model.exports import write_peft_export

#: the offline suite's tasks
TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


def lora_model(backbone: str, tasks: list[str], lora_targets: list[str], folder: Path) -> tuple[PHAModel, Path]:
    """A PHA-LoRA model with non-zero factors, loaded back from its bundle (precomputed adapters,
    ``folder/bundle``), and its peft export (``folder/export``, merged models included)."""
    torch.manual_seed(0)
    model = PHAModel(
        PHAConfig(
            backbone=backbone,
            tasks=tasks,
            adapter_kind="lora",
            lora_targets=lora_targets,
            chunk_cost_tokens=None,  # every variant runs the same padded batches
        )
    )
    with torch.no_grad():
        for shared in model.shared_adapters:
            shared.b.weight.normal_(0.0, 0.05)
        for head in model.hypernetwork.b_heads:
            head.init_uniform(0.05)
    model.save_pretrained(folder / "bundle", precompute=True)
    write_peft_export(model, folder / "export", merge=True)
    return PHAModel.from_pretrained(folder / "bundle").eval(), folder / "export"


def request_stream(tasks: list[str], n: int) -> list[dict[str, Any]]:
    """``n`` validation examples, tasks interleaved, as ``{"task", <fields>}`` objects."""
    per_task = {name: get_task(name).load_split("validation") for name in tasks}
    stream = []
    for i in range(n):
        task = get_task(tasks[i % len(tasks)])
        record = per_task[task.name][(i // len(tasks)) % len(per_task[task.name])]
        stream.append({"task": task.name, **{field: record[field] for field in task.source_fields}})
    return stream
