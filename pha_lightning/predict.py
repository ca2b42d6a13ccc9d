"""Prediction on raw examples from a JSONL file: ``pha predict --data.predict_file in.jsonl``.

Each input line is a JSON object with the fields of its task (``sentence``, or ``sentence1`` and
``sentence2``, … as the task's ``source_fields`` name them) and optionally:

* ``task`` — a task of the model. Without it, the retriever picks the task whose prototype is
  nearest (cosine of the normalised retrieval vector ``z`` with the normalised prototypes) and
  the output says so. Such an example gives its input as ``text`` (and ``text_pair``), or as one
  or two other fields; for T5 the source is ``"field: value …"`` without a task prefix.
* ``id`` — copied to the output; ``label`` — the expected label, checked against the task's
  label space and copied to the output as ``target``.

Output: one JSON line per input line, in input order (evaluation batches are sorted by length;
every example carries its index through the batch), with ``index`` (0-based, over non-blank
lines), ``line`` (1-based line number), ``task``, ``task_source`` (``input`` or ``retriever``,
then also ``task_similarity``), ``prediction`` (class index or regression value; ``null`` when
a T5 generation is no valid label), ``label`` (the label string) and ``id``/``target`` when given.
Works from a checkpoint or a bundle (``--ckpt_path``), and from Python through
:meth:`pha_lightning.export.PHAModel.predict`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from pha_lightning.errors import ConfigError, DataError
from pha_lightning.tasks import Task
from pha_lightning.validation import undecodable_bytes

if TYPE_CHECKING:
    from pha_lightning.module import PHAModule

#: Input fields with a meaning of their own; every other field is example text.
RESERVED_FIELDS: tuple[str, ...] = ("task", "id", "label")


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line; a clear error for anything else."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (some editors write one) is not JSON
    except FileNotFoundError:
        raise DataError(f"prediction file {str(path)!r} does not exist") from None
    except UnicodeDecodeError:
        line, problem = undecodable_bytes(path, "utf-8-sig")
        raise DataError(f"{path}:{line}: {problem}") from None
    except OSError as err:
        raise DataError(f"prediction file {str(path)!r} cannot be read: {err}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        rows.append((number, record))
    if not rows:
        raise DataError(f"prediction file {str(path)!r} holds no examples (it is empty or blank)")
    return rows


def _text_fields(record: dict[str, Any]) -> list[tuple[str, str]]:
    if "text" in record:
        fields = [("text", record["text"])] + ([("text_pair", record["text_pair"])] if "text_pair" in record else [])
    else:
        fields = [(k, v) for k, v in record.items() if k not in RESERVED_FIELDS]
    return [(k, str(v)) for k, v in fields]


def _check_text_values(record: dict[str, Any], names: Sequence[str], where: str) -> None:
    """Example text must be text (a number reads as its digits): a null or a list would otherwise
    be predicted on as the string ``"None"`` or ``"[...]"``."""
    for name in names:
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DataError(f"{where}: field {name!r} is {json.dumps(value)}, not text; give the example's text as a string")


def _check_label(task: Task, label: Any, where: str) -> str | float:
    if task.is_regression:
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
            raise DataError(f"{where}: label {label!r} of regression task {task.name!r} is not a finite number")
        return float(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(task.label_names):
        return task.label_names[label]
    if isinstance(label, str) and label in task.label_names:
        return label
    raise DataError(
        f"{where}: label {label!r} is outside the label space of task {task.name!r}: "
        f"{list(task.label_names)} (or their indices 0..{len(task.label_names) - 1})"
    )


def encode_examples(
    rows: Sequence[tuple[int, dict[str, Any]]],
    tasks: Sequence[Task],
    family: str,
    tokenizer: PreTrainedTokenizerBase,
    max_source_length: int,
    source: str = "input",
) -> list[dict[str, Any]]:
    """Tokenised examples with their task id (-1: the retriever decides) and what the output echoes."""
    ids = {task.name: index for index, task in enumerate(tasks)}
    examples = []
    for index, (number, record) in enumerate(rows):
        where = f"{source}:{number}"
        task = None
        if record.get("task") is not None:
            if record["task"] not in ids:
                raise ConfigError(f"{where}: unknown task {record['task']!r}; this model's tasks: {list(ids)}")
            task = tasks[ids[record["task"]]]
        meta: dict[str, Any] = {"index": index, "line": number}
        if "id" in record:
            meta["id"] = record["id"]
        if "label" in record and record["label"] is not None:
            if task is None:
                raise DataError(f"{where}: a label needs a task to be checked against; add \"task\"")
            meta["target"] = _check_label(task, record["label"], where)
        if task is not None and all(field in record for field in task.source_fields):
            _check_text_values(record, task.source_fields, where)
            if family == "seq2seq":
                texts: tuple[str, str | None] = (task.seq2seq_source(record), None)
            else:
                texts = task.encoder_text(record)
        else:
            fields = _text_fields(record)
            if task is not None and "text" not in record:
                raise DataError(f"{where}: task {task.name!r} needs the fields {list(task.source_fields)} (or \"text\")")
            if not fields:
                raise DataError(f"{where}: no text: give \"text\" (and \"text_pair\") or the task's fields")
            _check_text_values(record, [name for name, _ in fields], where)
            if family == "seq2seq":
                texts = (" ".join(f"{k}: {v}" for k, v in fields), None)
            elif len(fields) <= 2:
                texts = (fields[0][1], fields[1][1] if len(fields) == 2 else None)
            else:
                raise DataError(f"{where}: {len(fields)} text fields {[k for k, _ in fields]}; an encoder takes one text or a pair")
        features = dict(
            tokenizer(
                texts[0],
                texts[1],
                truncation=True,
                max_length=max_source_length,
                return_token_type_ids=False if family == "seq2seq" else None,
            )
        )
        features["task_ids"] = -1 if task is None else ids[task.name]
        features["meta"] = meta
        examples.append(features)
    return examples


class PredictCollator:
    """The training/evaluation collator plus ``example_ids`` and each example's ``meta`` (a list)."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        plain = [{k: v for k, v in ex.items() if k != "meta"} | {"targets": math.nan} for ex in examples]
        batch = self.collator(plain)
        batch["example_ids"] = torch.tensor([ex["meta"]["index"] for ex in examples], dtype=torch.long)
        batch["meta"] = [ex["meta"] for ex in examples]
        return batch


def predict_loader(examples: list[dict[str, Any]], collator: Any, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Batches of ``examples``, longest first (less padding); outputs are put back in input order."""
    ordered = sorted(examples, key=lambda ex: -len(ex["input_ids"]))
    return DataLoader(ordered, batch_size=batch_size, shuffle=False, collate_fn=PredictCollator(collator), num_workers=num_workers)


def file_dataloader(datamodule: Any) -> DataLoader:
    """The prediction loader of a data module's ``predict_file`` (its tokenizer, tasks and lengths)."""
    rows = read_jsonl(datamodule.predict_file)
    examples = encode_examples(
        rows,
        datamodule.task_objects,
        datamodule.family,
        datamodule.tokenizer,
        datamodule.max_source_length,
        source=str(datamodule.predict_file),
    )
    return predict_loader(examples, datamodule._collator(), datamodule.eval_batch_size, datamodule.num_workers)


@torch.no_grad()
def identify_tasks(model: PHAModule, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Nearest prototype of every example: (task ids, cosine similarities)."""
    if model.retriever is None or model.prototypes is None:
        raise ConfigError(
            f"examples without a task need a model with a retriever and prototypes (method 'pha' with "
            f"lambda_ir or lambda_pro > 0); this model is {model.hparams.method!r}: give every example a \"task\""
        )
    probe = {**batch, "task_ids": torch.zeros_like(batch["task_ids"])}  # z does not depend on the task
    z = model.retrieval_forward(probe)
    scores = F.normalize(z.float(), dim=-1) @ model.prototypes.normalized().float().T
    best = scores.max(-1)
    return best.indices, best.values


def _label_of(task: Task, value: float) -> tuple[int | float | None, str | None]:
    if math.isnan(value):
        return None, None
    if task.is_regression:
        return value, f"{value:.3f}"
    return int(value), task.label_names[int(value)]


@torch.no_grad()
def predict_rows(model: PHAModule, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Output rows of a batch of raw examples (see the module docstring); called by ``predict_step``."""
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
        prediction, label = _label_of(task, values[i])
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


def write_jsonl_atomic(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class JSONLPredictionWriter(BasePredictionWriter):
    """Collects every prediction row and writes them once, in input order, when prediction ends.

    Rows with an ``index`` (raw examples) are sorted by it; others (the test split) keep loader
    order. Under DDP every rank predicts every example; rank 0 writes.
    """

    def __init__(self, output_path: str) -> None:
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self.rows: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:  # noqa: ANN001
        if isinstance(prediction, list):
            self.rows.extend(prediction)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        rows = self.rows
        if rows and all("index" in row for row in rows):
            rows = sorted(rows, key=lambda row: row["index"])
        path = write_jsonl_atomic(self.output_path, rows)
        print(f"wrote {len(rows)} predictions to {path}", flush=True)
