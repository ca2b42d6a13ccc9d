"""Predicting raw examples with a :class:`~pha_lightning.model.PHAModel` (README, "Predict on raw examples").

Examples are encoded as in a ``pha predict`` JSONL file; the retriever picks the task of an example
that names none; every prediction becomes an output row with its label (:func:`label_of`, also what
``pha predict`` on a test split writes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from pha_lightning.data.examples import Collator, encode_examples, predict_loader
from pha_lightning.data.tasks import Task
from pha_lightning.errors import ConfigError

if TYPE_CHECKING:
    from pha_lightning.model.pha import PHAModel


def label_of(task: Task, value: float) -> tuple[int | float | None, str | None]:
    """A prediction as (value, label string): the class index and its name, or the regression value."""
    if math.isnan(value):
        return None, None
    if task.is_regression:
        return value, f"{value:.3f}"
    return int(value), task.class_names[int(value)]


@torch.no_grad()
def identify_tasks(model: PHAModel, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Nearest prototype of every example: (task ids, cosine similarities)."""
    if model.retriever is None or model.prototypes is None:
        raise ConfigError(
            f"examples without a task need a model with a retriever and prototypes (method 'pha' with "
            f'lambda_ir or lambda_pro > 0); this model is {model.config.method!r}: give every example a "task"'
        )
    probe = {**batch, "task_ids": torch.zeros_like(batch["task_ids"])}  # z does not depend on the task
    best = model.retrieval_scores(model.retrieval_forward(probe)).max(-1)
    return best.indices, best.values


@torch.no_grad()
def predict_rows(model: PHAModel, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Output rows of a batch of raw examples; the retriever picks the task of an example that names none."""
    task_ids = batch["task_ids"].clone()
    unknown = task_ids < 0
    similarity = None
    if bool(unknown.any()):
        chosen, similarity = identify_tasks(model, batch)
        task_ids[unknown] = chosen[unknown]
    values = model.predict_values({**batch, "task_ids": task_ids}).tolist()
    rows = []
    for i, meta in enumerate(batch["meta"]):
        task = model.task_objects[int(task_ids[i])]
        prediction, label = label_of(task, values[i])
        row = {"index": meta["index"], "line": meta["line"]}
        if "id" in meta:
            row["id"] = meta["id"]
        row |= {"task": task.name, "task_source": "retriever" if bool(unknown[i]) else "input"}
        if bool(unknown[i]):
            row["task_similarity"] = round(float(similarity[i]), 6)
        row |= {"prediction": prediction, "label": label}
        if "target" in meta:
            row["target"] = meta["target"]
        rows.append(row)
    return rows


@torch.no_grad()
def predict(
    model: PHAModel,
    examples: Iterable[Mapping[str, Any]],
    batch_size: int = 32,
    max_source_length: int | None = None,
) -> list[dict[str, Any]]:
    """:meth:`PHAModel.predict`: rows in input order, the model left in the mode it was in."""
    rows = [(number, dict(example)) for number, example in enumerate(examples, start=1)]
    if not rows:
        return []
    trained_length = (model.bundle_config or {}).get("data", {}).get("max_source_length")
    length = int(max_source_length or trained_length or 128)
    tokenizer = model.tokenizer
    encoded = encode_examples(rows, model.task_objects, model.family, tokenizer, length, source="example")
    collator = Collator(tokenizer.pad_token_id, tokenizer.pad_token_type_id, tokenizer.padding_side)
    was_training = model.training
    model.eval()
    out: list[dict[str, Any]] = []
    try:
        for batch in predict_loader(encoded, collator, batch_size):
            batch = {k: v.to(model.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            out.extend(predict_rows(model, batch))
    finally:
        model.train(was_training)
    return sorted(out, key=lambda row: row["index"])
