"""Raw examples and batches: a prediction JSONL file, its examples encoded, batches padded.

Each input line is a JSON object with the fields of its task, and optionally ``task`` (without
it the retriever picks one), ``id`` and ``label``; docs/production.md, "Predict on raw examples", gives the
input and output formats. :class:`Collator` pads every batch of training, evaluation and prediction.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
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
#: Batches per chunk of a streamed prediction file (:class:`PredictionChunks`): sorting by length within
#: 16 batches saves nearly all the padding sorting the whole file would. The first chunk is one batch,
#: so that the first rows are written right after start-up (:func:`chunk_end`).
CHUNK_BATCHES = 16


def chunk_end(start: int, batch_size: int) -> int:
    """Where the chunk of a streamed prediction file holding example ``start`` ends (exclusive): the first
    chunk is one batch, every later one :data:`CHUNK_BATCHES` batches, so chunks end at ``batch_size +
    k * batch_size * CHUNK_BATCHES``. A resumed prediction starts at one of those ends, and its batches
    are then an uninterrupted run's."""
    return batch_size if start < batch_size else whole_chunk_rows(start, batch_size) + batch_size * CHUNK_BATCHES


def whole_chunk_rows(rows: int, batch_size: int) -> int:
    """The examples of the whole chunks among the first ``rows`` (:func:`chunk_end`): where a resume starts."""
    if rows < batch_size:
        return 0
    return rows - (rows - batch_size) % (batch_size * CHUNK_BATCHES)


def cap_chars(texts: Sequence[str | None], max_length: int) -> list[str | None]:
    """Each text cut to ``max_length * CHARS_PER_TOKEN`` characters (``None``, no pair, stays)."""
    limit = max_length * CHARS_PER_TOKEN
    return [text if text is None or len(text) <= limit else text[:limit] for text in texts]


def read_jsonl(path: str | os.PathLike, skip: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line after the first ``skip`` of them, read one
    line at a time (nothing grows with the file); a clear error for anything else, when its line is
    reached. Lines end at ``\n`` only (JSON Lines): a string may hold U+2028, U+2029 or U+0085, which
    ``str.splitlines`` would take for line ends; a ``\r`` before the ``\n`` is JSON whitespace."""
    path = Path(path)
    seen = 0
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line = _decoded(path, raw, number)
                if not line.strip():
                    continue
                seen += 1
                if seen > skip:
                    yield number, _parsed(path, line, number)
    except FileNotFoundError:
        raise DataError(f"prediction file {str(path)!r} does not exist") from None
    except OSError as err:
        raise DataError(f"prediction file {str(path)!r} cannot be read: {err}") from None
    if not seen:
        raise DataError(f"prediction file {str(path)!r} holds no examples (it is empty or blank)")


def _decoded(path: Path, raw: bytes, number: int) -> str:
    """A line's text; a byte-order mark (some editors write one) before the first line is not JSON."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError:
        line, problem = undecodable_bytes(path, "utf-8-sig")
        raise DataError(f"{path}:{line}: {problem}") from None


def _parsed(path: Path, line: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    return record


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


def encode_example(
    index: int,
    number: int,
    record: dict[str, Any],
    tasks: Sequence[Task],
    family: str,
    tokenizer: PreTrainedTokenizerBase,
    max_source_length: int,
    source: str = "input",
) -> dict[str, Any]:
    """The tokenised example of input line ``number`` (the ``index``-th non-blank one), with its task
    id (-1: the retriever decides) and what the output echoes."""
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
    return features


def encode_examples(
    rows: Sequence[tuple[int, dict[str, Any]]],
    tasks: Sequence[Task],
    family: str,
    tokenizer: PreTrainedTokenizerBase,
    max_source_length: int,
    source: str = "input",
) -> list[dict[str, Any]]:
    """:func:`encode_example` of every ``(line number, object)``."""
    return [
        encode_example(index, number, record, tasks, family, tokenizer, max_source_length, source)
        for index, (number, record) in enumerate(rows)
    ]


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


def longest_first_batches(examples: list[dict[str, Any]], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """``examples`` in batches, longest first: less padding."""
    ordered = sorted(examples, key=lambda ex: -len(ex["input_ids"]))
    return (ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size))


def predict_loader(examples: list[dict[str, Any]], collator: Any, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Batches of ``examples``, longest first (less padding); outputs are put back in input order."""
    batches = list(longest_first_batches(examples, batch_size))
    return DataLoader(batches, batch_size=None, collate_fn=PredictCollator(collator), num_workers=num_workers)


class PredictionChunks(IterableDataset):
    """A prediction file's examples in batches, streamed: a chunk of lines at a time (one batch first,
    then :data:`CHUNK_BATCHES` batches: :func:`chunk_end`) is read, encoded and batched longest first
    (less padding), so the writer can put each chunk's rows in input order and write them while the
    next chunk is predicted; nothing is held beyond a chunk. ``skip``: non-blank lines already
    predicted (a resumed run; the end of a chunk, so the batches are those of an uninterrupted run).
    With DataLoader workers, worker ``w`` of ``n`` takes the chunks ``w, w + n, ...``."""

    def __init__(self, path: str | os.PathLike, encode: Callable[..., dict[str, Any]], batch_size: int, skip: int = 0):
        self.path = path
        self.encode = encode
        self.batch_size = batch_size
        self.skip = skip

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        worker = get_worker_info()
        shard, shards = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        rows = enumerate(read_jsonl(self.path, self.skip), start=self.skip)
        start = self.skip
        for number in itertools.count():
            end = chunk_end(start, self.batch_size)
            chunk = list(itertools.islice(rows, end - start))
            if not chunk:
                return
            start = end
            if number % shards == shard:
                examples = [self.encode(index, line, record) for index, (line, record) in chunk]
                yield from longest_first_batches(examples, self.batch_size)


def file_dataloader(datamodule: Any) -> DataLoader:
    """The streamed prediction loader of a data module's ``predict_file`` (its tokenizer, tasks and
    lengths), after its first ``predict_start`` examples."""
    encode = functools.partial(
        encode_example,
        tasks=datamodule.task_objects,
        family=datamodule.family,
        tokenizer=datamodule.tokenizer,
        max_source_length=datamodule.max_source_length,
        source=str(datamodule.predict_file),
    )
    chunks = PredictionChunks(datamodule.predict_file, encode, datamodule.eval_batch_size, datamodule.predict_start)
    return DataLoader(
        chunks, batch_size=None, collate_fn=PredictCollator(datamodule.collator()), num_workers=datamodule.num_workers
    )


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
