"""Raw examples and batches: a prediction JSONL file, its examples encoded, batches padded.

Each input line is a JSON object with the fields of its task, and optionally ``task`` (without
it the retriever picks one), ``id`` and ``label``; docs/production.md, "Predict on raw examples", gives the
input and output formats. :class:`Collator` pads every batch of training, evaluation and prediction.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from pha_lightning.data.tasks import Task
from pha_lightning.errors import ConfigError, DataError
from pha_lightning.validation import undecodable_bytes

#: The label id of padded target positions (T5), which the losses ignore.
LABEL_PAD_ID = -100
#: Input fields with a meaning of their own; every other field is example text.
RESERVED_FIELDS: tuple[str, ...] = ("task", "id", "label")
#: Characters of each text kept per token of its length limit before tokenising (docs/data.md,
#: "Long texts"): tokenising a megabyte-long pair in full, only to truncate it, takes gigabytes.
#: Real text averages 3-6 characters per token, and a WordPiece word over 100 characters is one
#: unknown token, so the cut changes no tokenised input that has this many characters per token or fewer.
CHARS_PER_TOKEN = 128


def cap_chars(texts: Sequence[str | None], max_length: int) -> list[str | None]:
    """Each text cut to ``max_length * CHARS_PER_TOKEN`` characters (``None``, no pair, stays)."""
    limit = max_length * CHARS_PER_TOKEN
    return [text if text is None or len(text) <= limit else text[:limit] for text in texts]


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line; a clear error for anything else. Lines end
    at ``\n`` only (JSON Lines): a string may hold U+2028, U+2029 or U+0085, which ``str.splitlines``
    would take for line ends; a ``\r`` before the ``\n`` is JSON whitespace."""
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
    for number, line in enumerate(text.split("\n"), start=1):
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
            raise DataError(
                f"{where}: field {name!r} is {json.dumps(value)}, not text; give the example's text as a string"
            )


def _check_label(task: Task, label: Any, where: str) -> str | float:
    if task.is_regression:
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
            raise DataError(f"{where}: label {label!r} of regression task {task.name!r} is not a finite number")
        return float(label)
    index = task.class_index(label)
    if index is None:
        raise DataError(
            f"{where}: label {label!r} is outside the label space of task {task.name!r}: {task.label_space()}"
        )
    return task.class_names[index]


def checked_example(
    record: dict[str, Any], tasks: Sequence[Task], family: str, where: str
) -> tuple[int, dict[str, Any], tuple[str, str | None]]:
    """An example's task id (-1: the retriever decides), what the output echoes (``id``, ``target``)
    and its text (or text pair); a :class:`DataError` or :class:`ConfigError` naming the field or
    value at ``where`` when it cannot be predicted. The server checks requests with it before they
    are queued (:mod:`pha_lightning.model.serving`)."""
    ids = {task.name: index for index, task in enumerate(tasks)}
    task = None
    if record.get("task") is not None:
        if not isinstance(record["task"], str) or record["task"] not in ids:
            raise ConfigError(f"{where}: unknown task {record['task']!r}; this model's tasks: {list(ids)}")
        task = tasks[ids[record["task"]]]
    meta: dict[str, Any] = {}
    if "id" in record:
        meta["id"] = record["id"]
    if "label" in record and record["label"] is not None:
        if task is None:
            raise DataError(f'{where}: a label needs a task to be checked against; add "task"')
        meta["target"] = _check_label(task, record["label"], where)
    if task is not None and all(field in record for field in task.source_fields):
        _check_text_values(record, task.source_fields, where)
        if family == "seq2seq":
            return ids[task.name], meta, (task.seq2seq_source(record), None)
        return ids[task.name], meta, task.encoder_text(record)
    fields = _text_fields(record)
    if task is not None and "text" not in record:
        raise DataError(f'{where}: task {task.name!r} needs the fields {list(task.source_fields)} (or "text")')
    if not fields:
        raise DataError(f'{where}: no text: give "text" (and "text_pair") or the task\'s fields')
    _check_text_values(record, [name for name, _ in fields], where)
    task_id = -1 if task is None else ids[task.name]
    if family == "seq2seq":
        return task_id, meta, (" ".join(f"{k}: {v}" for k, v in fields), None)
    if len(fields) <= 2:
        return task_id, meta, (fields[0][1], fields[1][1] if len(fields) == 2 else None)
    raise DataError(f"{where}: {len(fields)} text fields {[k for k, _ in fields]}; an encoder takes one text or a pair")


def encode_examples(
    rows: Sequence[tuple[int, dict[str, Any]]],
    tasks: Sequence[Task],
    family: str,
    tokenizer: PreTrainedTokenizerBase,
    max_source_length: int,
    source: str = "input",
) -> list[dict[str, Any]]:
    """Tokenised examples with their task id (-1: the retriever decides) and what the output echoes."""
    examples = []
    for index, (number, record) in enumerate(rows):
        task_id, echoed, texts = checked_example(record, tasks, family, f"{source}:{number}")
        text, pair = cap_chars(texts, max_source_length)
        features = dict(
            tokenizer(
                text,
                pair,
                truncation=True,
                max_length=max_source_length,
                return_token_type_ids=False if family == "seq2seq" else None,
            )
        )
        features["task_ids"] = task_id
        features["meta"] = {"index": index, "line": number, **echoed}
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
    return DataLoader(
        ordered, batch_size=batch_size, shuffle=False, collate_fn=PredictCollator(collator), num_workers=num_workers
    )


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
    return predict_loader(examples, datamodule.collator(), datamodule.eval_batch_size, datamodule.num_workers)


@dataclass
class Collator:
    """Pads a list of tokenised examples to the longest one and stacks them into tensors."""

    pad_token_id: int
    pad_token_type_id: int = 0
    padding_side: str = "right"

    def __call__(self, examples: list[dict]) -> dict[str, Tensor]:
        pad_values = {
            "input_ids": self.pad_token_id,
            "attention_mask": 0,
            "token_type_ids": self.pad_token_type_id,
            "labels": LABEL_PAD_ID,
        }
        present = [key for key in pad_values if key in examples[0]]
        batch = {key: self._pad([ex[key] for ex in examples], pad_values[key]) for key in present}
        batch["task_ids"] = torch.tensor([ex["task_ids"] for ex in examples], dtype=torch.long)
        batch["targets"] = torch.tensor([ex["targets"] for ex in examples], dtype=torch.float32)
        if any("groups" in ex for ex in examples):
            batch["groups"] = torch.tensor([ex.get("groups", -1) for ex in examples], dtype=torch.long)
        return batch

    def _pad(self, sequences: list[list[int]], value: int) -> Tensor:
        width = max(len(seq) for seq in sequences)
        out = torch.full((len(sequences), width), value, dtype=torch.long)
        for row, seq in enumerate(sequences):
            if self.padding_side == "left":
                out[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            else:
                out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out
