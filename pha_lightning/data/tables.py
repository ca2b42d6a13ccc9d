"""Records as ``datasets`` tables (Arrow), and the helpers that treat a table and a list of records alike.

A user's task keeps its rows in ``datasets`` tables from the file to the batch (docs/data.md, "Rows
stay in Arrow"): labels are mapped per distinct value (:func:`distinct_values`), splits are index
selections (:func:`take`), and what the model reads is formatted batch by batch
(:func:`formatted_table`), so no row lives as a Python object for the run; so do the built-in GLUE
tasks' TSV files. The other built-in tasks (JSON lines, the hub), whose readers build records as
dicts, go through the same functions with a list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pha_lightning.data.tasks import Records, Task
from pha_lightning.errors import ConfigError

if TYPE_CHECKING:
    from datasets import Dataset

#: Rows a table is read or formatted by at a time: what lives as Python objects at once.
BATCH_ROWS = 1000
#: The columns of the texts to tokenise, as :func:`model_columns` names them.
TEXT_COLUMNS: tuple[str, ...] = ("source", "pair", "target")


def arrow_column(dataset: Dataset, name: str) -> pa.ChunkedArray:
    """One column of a table as Arrow (its index selection applied), without Python objects."""
    return dataset.select_columns([name]).with_format("arrow")[:][name]


def distinct_values(column: pa.ChunkedArray) -> tuple[list[Any], np.ndarray]:
    """The distinct values of a column (as Python values, in order of first occurrence) and each row's
    position among them: what is decided per value is decided once per distinct value."""
    try:
        distinct = pc.unique(column)
    except pa.ArrowNotImplementedError:  # nested values (lists, objects) have no Arrow hash: told apart by repr
        values, seen = column.to_pylist(), {}
        positions = np.array([seen.setdefault(repr(value), len(seen)) for value in values], dtype=np.int64)
        return [values[row] for row in np.unique(positions, return_index=True)[1]], positions
    positions = pc.index_in(column, value_set=distinct)
    return distinct.to_pylist(), np.asarray(positions.to_numpy(zero_copy_only=False), dtype=np.int64)


def rows_with(positions: np.ndarray, chosen: Sequence[int]) -> np.ndarray:
    """The rows (in order) whose distinct value (:func:`distinct_values`) is one of ``chosen``."""
    return np.flatnonzero(np.isin(positions, list(chosen)))


def first_row(positions: np.ndarray, chosen: Sequence[int]) -> int | None:
    """The first of :func:`rows_with`, ``None`` when there is none."""
    rows = rows_with(positions, chosen)
    return int(rows[0]) if len(rows) else None


def take(records: Records, indices: Sequence[int] | np.ndarray) -> Records:
    """The records at ``indices``, in that order: a list's items, or a table's rows by index selection (no copy)."""
    if isinstance(records, list):
        return [records[int(index)] for index in indices]
    return records.select(np.asarray(indices, dtype=np.int64))


def batches(records: Records) -> Iterator[list[dict]]:
    """The records as lists of row dicts, :data:`BATCH_ROWS` at a time (a table's rows are built batch
    by batch and dropped after, never all at once)."""
    if isinstance(records, list):
        for start in range(0, len(records), BATCH_ROWS):
            yield records[start : start + BATCH_ROWS]
        return
    for batch in records.iter(batch_size=BATCH_ROWS):
        yield rows_of(batch)


def rows_of(batch: dict[str, list]) -> list[dict]:
    """The row dicts of a column batch."""
    names = list(batch)
    return [dict(zip(names, values)) for values in zip(*batch.values())]


def column_values(dataset: Dataset, name: str) -> Iterator[Any]:
    """The values of one column, read :data:`BATCH_ROWS` rows at a time."""
    for batch in dataset.select_columns([name]).iter(batch_size=BATCH_ROWS):
        yield from batch[name]


def texts_to_tokenise(table: Dataset) -> list[str]:
    """The columns of a formatted table (:func:`model_columns`) that hold texts to tokenise."""
    return [name for name in TEXT_COLUMNS if name in table.column_names]


def text_columns(task: Task, records: Sequence[dict], seq2seq: bool) -> dict[str, list]:
    """The strings to tokenise: the (pair of) texts for encoders, source and target for seq2seq."""
    if seq2seq:
        return {
            "source": [task.seq2seq_source(record) for record in records],
            "target": [task.seq2seq_target(record) for record in records],
        }
    texts, pairs = zip(*(task.encoder_text(record) for record in records))
    if any(pair is None for pair in pairs) and any(pair is not None for pair in pairs):
        raise ConfigError(f"task {task.name!r} mixes single texts and text pairs in its records")
    return {"source": list(texts)} if pairs[0] is None else {"source": list(texts), "pair": list(pairs)}


def model_columns(records: Sequence[dict], task: Task, task_id: int, seq2seq: bool) -> dict[str, list]:
    """What the model reads of ``records``: the texts to tokenise (:func:`text_columns`), ``task_ids``,
    ``targets`` (class index or score) and ``groups`` (each record's metric group, or ``None``)."""
    columns = text_columns(task, records, seq2seq)
    columns["task_ids"] = [task_id] * len(records)
    columns["targets"] = [task.target_value(record) for record in records]
    columns["groups"] = [task.group_of(record) for record in records]
    return columns


def model_columns_of_batch(batch: dict[str, list], task: Task, task_id: int, seq2seq: bool) -> dict[str, list]:
    """:func:`model_columns` of a table's column batch (``Dataset.map``)."""
    return model_columns(rows_of(batch), task, task_id, seq2seq)


def formatted_table(table: Dataset, task: Task, task_id: int, seq2seq: bool, name: str) -> Dataset:
    """:func:`model_columns` of every row of ``table``, formatted batch by batch into an Arrow table held in
    memory until it is tokenised; ``name`` (task and split) names the transform, so that ``datasets``
    need not hash the task to fingerprint it."""
    fingerprint = hashlib.sha256(f"pha-format/{name}/{task_id}/{seq2seq}/{len(table)}".encode()).hexdigest()[:32]
    return table.map(
        model_columns_of_batch,
        batched=True,
        batch_size=BATCH_ROWS,
        remove_columns=table.column_names,
        fn_kwargs={"task": task, "task_id": task_id, "seq2seq": seq2seq},
        keep_in_memory=True,
        new_fingerprint=fingerprint,
        desc=f"Formatting {name}",
    )
