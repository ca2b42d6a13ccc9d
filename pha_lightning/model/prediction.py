"""Predicting raw examples with a :class:`~pha_lightning.model.PHAModel` (README, "Predict on raw examples").

Examples are encoded as in a ``pha predict`` JSONL file; the retriever picks the task of an example
that names none; every prediction becomes an output row (docs/production.md, "Predict on raw
examples", lists its keys). A row is built from independent parts — where it came from
(:func:`input_fields`), its task (:func:`task_fields`), the prediction (:func:`prediction_fields`, also
what ``pha predict`` on a test split writes) — so a new part is one more function.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from pha_lightning.data.examples import Collator, encode_examples, predict_loader
from pha_lightning.data.tasks import Task
from pha_lightning.errors import ConfigError
from pha_lightning.model.calibration import Decision, decide
from pha_lightning.model.chunking import Chunk, chunk_batch


def prediction_fields(task: Task, value: float) -> dict[str, Any]:
    """``prediction`` as a user reads it (the label string; a regression's score) and, for a
    classification, ``prediction_index`` (the class index); ``None`` for a value that is no prediction
    (NaN: an invalid generation)."""
    if task.is_regression:
        return {"prediction": None if math.isnan(value) else value}
    if math.isnan(value):
        return {"prediction": None, "prediction_index": None}
    return {"prediction": task.class_names[int(value)], "prediction_index": int(value)}


def input_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Which input an output row answers: ``index`` (0-based, non-blank lines), ``line`` and the input's ``id``."""
    row = {"index": meta["index"], "line": meta["line"]}
    if "id" in meta:
        row["id"] = meta["id"]
    return row


def task_fields(task: Task, similarity: float | None) -> dict[str, Any]:
    """``task``; ``routed`` (the retriever chose it: the input named none) with, if so, the cosine
    ``task_similarity`` to the chosen prototype."""
    if similarity is None:
        return {"task": task.name, "routed": False}
    return {"task": task.name, "routed": True, "task_similarity": round(similarity, 6)}


def routes(model: nn.Module) -> bool:
    """Whether the model can pick the task of an example that names none (a retriever and prototypes)."""
    return model.retriever is not None and model.prototypes is not None


def routes_by_probe(model: nn.Module) -> bool:
    """Whether the model's routing scores its trained tasks by a linear probe (``model.routing.unlabelled_per_task``)."""
    return model.calibration is not None and model.calibration.probe is not None


def no_router_error(method: str) -> ConfigError:
    """What an example without a task gets from a model that cannot pick one."""
    return ConfigError(
        f"examples without a task need a model with a retriever and prototypes (method 'pha' with "
        f'lambda_ir or lambda_pro > 0); this model is {method!r}: give every example a "task"'
    )


@torch.no_grad()
def identify_tasks(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Nearest prototype of every example: (task ids, cosine similarities)."""
    best = task_scores(model, batch).max(-1)
    return best.indices, best.values


@torch.no_grad()
def task_scores(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The cosine of every example's retrieval vector with every task's prototype, ``(B, tasks)``."""
    return model.retrieval_scores(retrieval_vectors(model, batch)[0])


@torch.no_grad()
def retrieval_vectors(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """Every example's retrieval vector ``z``, from the blocks up to the retrieval point, and, when
    routing scores by a probe, the pooled hidden states there (else ``None``)."""
    if not routes(model):
        raise no_router_error(model.config.method)
    probe = {**batch, "task_ids": torch.zeros_like(batch["task_ids"])}  # z does not depend on the task
    return model.retrieval_features(probe, pool=routes_by_probe(model))


@torch.no_grad()
def route_batch(model: nn.Module, batch: dict[str, Tensor]) -> list[Decision]:
    """The routing of every example of ``batch`` (:func:`route`), by a retrieval pass."""
    z, features = retrieval_vectors(model, batch)
    return route(model, model.retrieval_scores(z), features)


#: what a row routed by a model without a routing calibration says (once per call)
UNCALIBRATED_NOTE = (
    "this model has no routing calibration (trained before routing was calibrated): examples without a task go "
    "to the nearest prototype, with no confidence and no abstention; retrain, or name each example's task"
)


def route(model: nn.Module, scores: Tensor, features: Tensor | None = None) -> list[Decision]:
    """Each example's routing from its prototype cosines ``scores`` (and pooled ``features``, which a
    routing probe scores): calibrated with abstention when the model has a calibration, else the
    nearest prototype (confidence ``nan``: there is none)."""
    if model.calibration is not None:
        return decide(scores, model.calibration, features)
    return [Decision(int(task), math.nan) for task in scores.argmax(-1).tolist()]


class Routing:
    """The routing of a batch's rows that name no task, kept by row (``batch["row"]``) as the
    retrieval vectors of the rows come in (all at once, or chunk by chunk)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.decisions: dict[int, Decision] = {}
        self.similarity: dict[int, float] = {}
        #: the task each routed row runs with: the chosen one, or an abstained row's nearest (its prediction is dropped)
        self.task_of: dict[int, int] = {}

    def choose(self, z: Tensor, rows: dict[str, Tensor], features: Tensor | None = None) -> Tensor:
        """The task ids ``rows`` run with: their own, or for one naming none the router's (from
        ``z`` and, for a routing probe, the pooled ``features``)."""
        task_ids = rows["task_ids"].clone()
        unknown = torch.nonzero(task_ids < 0).flatten()
        if len(unknown):
            scores = self.model.retrieval_scores(z.index_select(0, unknown))
            best = scores.max(-1)
            numbers = rows["row"].index_select(0, unknown).tolist()
            picked = None if features is None else features.index_select(0, unknown)
            decisions = route(self.model, scores, picked)
            self.decisions.update(zip(numbers, decisions))
            self.similarity.update(zip(numbers, best.values.tolist()))
            chosen = [d.task if d.task is not None else n for d, n in zip(decisions, best.indices.tolist())]
            self.task_of.update(zip(numbers, chosen))
            task_ids[unknown] = torch.tensor(chosen, device=task_ids.device)
        return task_ids


@torch.no_grad()
def routed_values(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Routing]:
    """Predicted values of a batch and the task ids they were predicted with; the rows that name
    no task are routed at the retrieval point of the same pass when the model can
    (:attr:`PHAModel.chooses_tasks_in_pass`), else by a retrieval pass over those rows first."""
    rows = {**batch, "row": torch.arange(len(batch["task_ids"]), device=batch["task_ids"].device)}
    routing = Routing(model)
    unknown = torch.nonzero(rows["task_ids"] < 0).flatten()
    if not len(unknown):
        return model.predict_values(rows), rows["task_ids"], routing
    if model.chooses_tasks_in_pass and routes(model):
        pooled = model(rows, choose=routing.choose)["pooled"]
        task_ids = rows["task_ids"].clone()
        task_ids[unknown] = torch.tensor([routing.task_of[r] for r in unknown.tolist()], device=task_ids.device)
        return model.heads.predictions(pooled, task_ids), task_ids, routing
    unnamed = chunk_batch(rows, Chunk(unknown, rows["attention_mask"].shape[1]))
    task_ids = rows["task_ids"].clone()
    z, features = retrieval_vectors(model, unnamed)
    task_ids[unknown] = routing.choose(z, unnamed, features)
    return model.predict_values({**rows, "task_ids": task_ids}), task_ids, routing


@torch.no_grad()
def predict_rows(model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Output rows of a batch of raw examples; the router picks the task of an example that names
    none, or abstains (``task`` and ``prediction`` ``null``, ``abstained`` the reason)."""
    values, task_ids, routing = routed_values(model, batch)
    values = values.tolist()
    rows = []
    for i, meta in enumerate(batch["meta"]):
        task, decision = model.task_objects[int(task_ids[i])], routing.decisions.get(i)
        routed = routing.similarity.get(i)
        if decision is not None and decision.task is None:
            row = input_fields(meta) | abstained_fields(decision, routed)
        else:
            row = input_fields(meta) | task_fields(task, routed) | confidence_fields(decision)
            row |= prediction_fields(task, values[i])
        if "target" in meta:
            row["target"] = meta["target"]
        rows.append(row)
    return rows


def confidence_fields(decision: Decision | None) -> dict[str, Any]:
    """``confidence``, the router's calibrated probability, of a routed row (none without a calibration)."""
    if decision is None or math.isnan(decision.confidence):
        return {}
    return {"confidence": round(decision.confidence, 6)}


def abstained_fields(decision: Decision, similarity: float) -> dict[str, Any]:
    """A row the router abstained on: no task and no prediction, and ``abstained``, the reason."""
    fields = {"task": None, "routed": True, "task_similarity": round(similarity, 6)} | confidence_fields(decision)
    return fields | {"prediction": None, "abstained": decision.reason}


def example_batches(
    model: nn.Module, examples: Iterable[Mapping[str, Any]], batch_size: int, max_source_length: int | None
) -> Iterator[dict[str, Any]]:
    """Raw examples encoded as ``pha predict`` encodes them, in batches on the model's device.

    ``max_source_length`` defaults to the one the model was trained with (its bundle), else 128.
    """
    rows = [(number, dict(example)) for number, example in enumerate(examples, start=1)]
    trained_length = (model.bundle_config or {}).get("data", {}).get("max_source_length")
    length = int(max_source_length or trained_length or 128)
    tokenizer = model.tokenizer
    encoded = encode_examples(rows, model.task_objects, model.family, tokenizer, length, source="example")
    collator = Collator(tokenizer.pad_token_id, tokenizer.pad_token_type_id, tokenizer.padding_side)
    for batch in predict_loader(encoded, collator, batch_size) if encoded else ():
        yield on_device(batch, model.device)


def on_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with its tensors moved to ``device`` (other values, e.g. task names, as they are)."""
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def retrieval_batches(
    model: nn.Module, loaders: Iterable[Iterable[Mapping[str, Any]]], pool: bool = False
) -> Iterator[tuple[Tensor, Tensor | None, Tensor]]:
    """Every batch of ``loaders`` through the blocks up to the retrieval point: its retrieval vectors
    ``z``, (``pool``) the pooled hidden states there, and its task ids."""
    for loader in loaders:
        for batch in loader:
            batch = on_device(batch, model.device)
            z, features = model.retrieval_features(batch, pool=pool)
            yield z, features, batch["task_ids"]


@torch.no_grad()
def predict(
    model: nn.Module,
    examples: Iterable[Mapping[str, Any]],
    batch_size: int = 32,
    max_source_length: int | None = None,
) -> list[dict[str, Any]]:
    """:meth:`PHAModel.predict`: rows in input order, the model left in the mode it was in. A model
    in eval mode is not switched at all: switching walks every submodule, which costs a served
    request about as much as its routing (``pha serve`` calls this per batch)."""
    was_training = model.training
    if was_training:
        model.eval()
    out: list[dict[str, Any]] = []
    try:
        for batch in example_batches(model, examples, batch_size, max_source_length):
            out.extend(predict_rows(model, batch))
    finally:
        if was_training:
            model.train()
    if model.calibration is None and any(row["routed"] for row in out):
        warnings.warn(UNCALIBRATED_NOTE, stacklevel=3)
    return sorted(out, key=lambda row: row["index"])
