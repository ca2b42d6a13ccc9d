"""A user's task: a :class:`~pha_lightning.data.schema.TaskSpec` without an official protocol, read
from files or the hub, its labels mapped as the spec says and its missing splits carved with a
seeded, disjoint draw (docs/data.md, "Your own tasks").

Its rows stay ``datasets`` tables from the file to the batch (docs/data.md, "Rows stay in Arrow"): a
file is read and cached by ``datasets`` and memory-mapped, labels are checked and mapped once per
distinct value, and splits are index selections, so the task keeps no row as a Python object.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pha_lightning.data.readers import (
    DATA_DIR_ENV,
    ColumnCount,
    MissingFields,
    file_identity,
    load_hub_split,
    read_table,
)
from pha_lightning.data.schema import Carve, SplitColumn, TaskSpec, label_text, plain, spec_carves
from pha_lightning.data.tables import arrow_column, distinct_values, first_row, rows_with
from pha_lightning.data.tasks import SPLITS, Task, check_split
from pha_lightning.errors import DataError
from pha_lightning.validation import undecodable_bytes

if TYPE_CHECKING:
    from datasets import Dataset


class SpecTask(Task):
    """A task declared by a :class:`TaskSpec`: rows from files or the hub, labels as the spec says."""

    reads_external_data = True

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec  # without a label space only to read its training labels (with_file_labels)
        self.name = spec.name
        self.source_fields = spec.inputs
        self.label_names = spec.label_words or spec.classes or ()
        self.target_range = spec.regression
        default = ("pearson", "spearman") if spec.regression else ("accuracy",)
        self.metric_names = spec.metrics or default
        self._loaded: dict[tuple, dict[str, Dataset]] = {}

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.classes or ()

    def class_index(self, value: Any) -> int | None:
        """With ``labels`` as a mapping, a value is a file value it maps or a class name; else the rule
        of every task (:meth:`Task.class_index`)."""
        if not isinstance(self.spec.labels, Mapping):
            return super().class_index(value)
        name = self.spec.labels.get(label_text(value), label_text(value))
        return self.class_names.index(name) if name in self.class_names else None

    def label_space(self) -> str:
        if not isinstance(self.spec.labels, Mapping):
            return super().label_space()
        return f"the values {list(self.spec.labels)} (mapped to {dict(self.spec.labels)}) or the classes"

    def seq2seq_source(self, record: dict) -> str:
        if self.spec.template is None:
            return super().seq2seq_source(record)
        return self.spec.template.format_map({field: record[field] for field in self.source_fields})

    # ------------------------------------------------------------------ loading
    def check_sources(
        self, splits: Sequence[str], data_dir: str | None = None, data_seed: int = 42, **_: object
    ) -> None:
        """Read, check and carve every split now (cached for :meth:`load_splits`): a missing field,
        a bad label or an empty carved split is reported before anything is tokenised."""
        self.load_splits(splits, data_dir=data_dir, data_seed=data_seed)

    def load_split(self, split: str, **source_options: Any) -> Dataset:
        return self.load_splits([split], **source_options)[split]

    def load_splits(
        self, splits: Sequence[str], data_dir: str | None = None, data_seed: int = 42, **_: object
    ) -> dict[str, Dataset]:
        for split in splits:
            check_split(split)
        if not self.spec.has_source:
            raise DataError(
                f"task {self.name!r} has no data source: its spec (as stored in a checkpoint or bundle) holds no "
                "files or hub; give data.task_specs with its files to train or evaluate on it"
            )
        seed = data_seed if self.spec.split is None or self.spec.split.seed is None else self.spec.split.seed
        key = (self.base_dir(data_dir), seed)
        if key not in self._loaded:
            self._loaded = {key: self._carved(self._read_sources(key[0]), seed)}
        return {split: self._loaded[key][split] for split in splits}

    def base_dir(self, data_dir: str | None) -> Path:
        """Relative file paths are read under ``data.data_dir`` (or ``$PHA_DATA_DIR``, else the current directory)."""
        base = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or "."
        return Path(os.path.expanduser(str(base)))

    def source_identity(self, data_dir: str | None = None, **_: object) -> dict | None:
        """The spec and each file's resolved path, size and modification time; ``None`` for a hub
        dataset, or a file that cannot be read (loading then reports it)."""
        if self.spec.files is None:
            return None
        files = {}
        for split, path in self.spec.files.items():
            try:
                files[split] = file_identity(self.base_dir(data_dir) / str(path))
            except OSError:
                return None
        return {"spec": self.spec.to_dict(), "files": files}

    def _read_sources(self, base: Path) -> dict[str, Dataset]:
        if self.spec.hub is not None:
            hub = self.spec.hub
            return {
                split: self._records(
                    load_hub_split(self.name, hub.path, hub.name, name, hub.revision),
                    f"hub {hub.path} (split {name})",
                    0,
                )
                for split, name in hub.splits.items()
            }
        sources = {}
        for split, name in (self.spec.files or {}).items():  # each file read and checked before the next
            path = base / str(name)
            rows, first_line = self._read_rows(path)
            sources[split] = self._records(rows, str(path), first_line)
        column = self.spec.split_column
        if column is None:
            return sources
        return self._split_by_column(column, rows, sources["all"], str(path), first_line)  # one file, "all"

    def _split_by_column(
        self, column: SplitColumn, rows: Dataset, records: Dataset, origin: str, first_line: int
    ) -> dict[str, Dataset]:
        """The records of one file in the splits its split column names (decided once per distinct value);
        a value naming none is an error with the line of its first row."""
        values, positions = distinct_values(arrow_column(rows, column.name))
        splits = [column.split_of(value) for value in values]
        if None in splits:
            index = first_row(positions, [i for i, split in enumerate(splits) if split is None])
            value = values[positions[index]]
            raise DataError(
                f"task {self.name!r}, {origin}, line {index + first_line}: split_column {column.name!r} holds "
                f"{value!r}, which names no split; valid: {plain(column.values)} "
                "(give split_column: {name, train, validation, test})"
            )
        return {
            split: records.select(rows_with(positions, [i for i, s in enumerate(splits) if s == split]))
            for split in dict.fromkeys(splits)
        }

    def train_label_values(self, data_dir: str | None) -> list[Any]:
        """The distinct label values of the training rows as the file holds them (of ``all`` for a file to carve)."""
        if self.spec.hub is not None:
            hub = self.spec.hub
            rows = load_hub_split(self.name, hub.path, hub.name, hub.splits["train"], hub.revision)
            if len(rows) and self.spec.label not in rows.column_names:
                raise DataError(
                    f"task {self.name!r}, hub {hub.path}: no field {self.spec.label!r}; its fields are "
                    f"{sorted(rows.column_names)}"
                )
            return distinct_values(arrow_column(rows, self.spec.label))[0]
        files = self.spec.files or {}
        rows, _ = self._read_rows(self.base_dir(data_dir) / str(files.get("train", files.get("all", ""))))
        labels, label_positions = distinct_values(arrow_column(rows, self.spec.label))
        column = self.spec.split_column
        if column is None:
            return labels
        values, positions = distinct_values(arrow_column(rows, column.name))
        train = rows_with(positions, [i for i, value in enumerate(values) if column.split_of(value) == "train"])
        return [labels[i] for i in np.unique(label_positions[train])]

    def _read_rows(self, path: Path) -> tuple[Dataset, int]:
        """The rows of one file with the fields the spec reads (a ``datasets`` table), and the file line of the first row."""
        if not path.is_file():
            raise DataError(f"task {self.name!r}: the file {str(path)!r} does not exist")
        fmt = self.spec.file_format(str(path))
        split_field = [self.spec.split_column.name] if self.spec.split_column else []
        columns = [*self.spec.inputs, self.spec.label, *split_field]
        try:
            rows = read_table(path, fmt, self.spec.encoding, self.spec.quoting, columns, self.spec.columns)
        except ColumnCount as err:
            raise DataError(
                f"task {self.name!r}, {path}: columns names {len(self.spec.columns or ())} fields "
                f"{list(self.spec.columns or ())} but the file's first line has {err.count}: {err.first}"
            ) from None
        except UnicodeDecodeError:
            line, problem = undecodable_bytes(path, self.spec.encoding)
            raise DataError(
                f"task {self.name!r}, {path}, line {line}: {problem} (give the file's encoding, e.g. encoding: latin-1)"
            ) from None
        except MissingFields as err:
            raise DataError(
                f"task {self.name!r}, {path}: the file has no field(s) {err.missing}; its fields are {err.present}"
            ) from None
        except Exception as err:  # noqa: BLE001 - a parser's failure (pandas, pyarrow, json) is a data problem
            raise DataError(f"task {self.name!r}: cannot read {path} as {fmt}: {type(err).__name__}: {err}") from None
        return rows, 1 if fmt not in ("csv", "tsv") or self.spec.columns else 2

    def _records(self, rows: Dataset, origin: str, first_line: int) -> Dataset:
        """Checked records ``{input: text, label: class index or score, idx}`` as a ``datasets`` table;
        ``first_line`` is the file line of the first row (0: rows are counted, as for the hub).

        Each distinct label is mapped once; a bad row is reported as a read row by row would report
        it: the first one, its input fields before its label."""
        present = rows.column_names
        missing = [f for f in (*self.spec.inputs, self.spec.label) if len(rows) and f not in present]
        if missing:
            raise DataError(f"task {self.name!r}, {origin}: no field(s) {missing}; its fields are {sorted(present)}")
        if not len(rows):
            raise DataError(f"task {self.name!r}, {origin}: holds no rows")
        labels, positions = distinct_values(arrow_column(rows, self.spec.label))
        targets = [self._target(value) for value in labels]
        unfit = [first_row(positions, [i for i, target in enumerate(targets) if target is None])]
        unfit += [first_untextual(arrow_column(rows, name)) for name in self.spec.inputs]
        if any(index is not None for index in unfit):
            index = min(index for index in unfit if index is not None)
            where = f"{origin}, {'row' if first_line == 0 else 'line'} {index + first_line}"
            raise DataError(f"task {self.name!r}, {where}: {self._row_problem(rows[index])}")
        records = rows.select_columns(list(self.spec.inputs))
        numbers = [name for name in self.spec.inputs if not is_text(arrow_column(records, name).type)]
        if numbers:  # as Python writes them (str), as every row was before
            from datasets import Value

            features = records.features.copy()
            features.update({name: Value("string") for name in numbers})
            records = records.map(as_text, batched=True, fn_kwargs={"names": numbers}, features=features)
        records = records.add_column("label", np.asarray(targets, dtype=np.float64)[positions])
        return records.add_column("idx", np.arange(len(rows), dtype=np.int64))

    def _row_problem(self, row: dict) -> str:
        """What is wrong with a row (found bad by :meth:`_records`): an input that is no text, else its label."""
        for name in self.spec.inputs:
            value = row[name]
            if value is None or isinstance(value, (bool, list, dict)):
                return f"field {name!r} is {value!r}, not text"
        value = row[self.spec.label]
        if self.spec.regression is not None:
            low, high = self.spec.regression
            return f"score {value!r} is not a number in [{low:g}, {high:g}]"
        return f"label {value!r} is none of the labels {self.label_space()}"

    def _target(self, value: Any) -> float | None:
        """A file's label value as a class index or a score in range, ``None`` when it is neither."""
        if self.spec.regression is None:
            index = self.class_index(value)
            return None if index is None else float(index)
        low, high = self.spec.regression
        try:
            score = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            score = math.nan
        return score if math.isfinite(score) and low <= score <= high else None

    def _carved(self, sources: dict[str, Dataset], seed: int) -> dict[str, Dataset]:
        """train/validation/test: the given ones, and the missing ones carved from ``all`` or train (by index
        selection: the rows of the seeded draw, in the file's order)."""
        carve = spec_carves(self.spec)
        pool_name = "all" if "all" in sources else "train"
        out = {split: rows for split, rows in sources.items() if split != "all"}
        if carve:
            pool = sources[pool_name]
            sizes = {split: (self.spec.split or Carve()).size(split, len(pool)) for split in carve}
            order = list(range(len(pool)))
            random.Random(f"pha/{seed}/{self.name}/carve").shuffle(order)
            taken, start = np.zeros(len(pool), dtype=bool), 0
            for split in carve:
                chosen = np.sort(np.asarray(order[start : start + sizes[split]], dtype=np.int64))
                start += sizes[split]
                taken[chosen] = True
                out[split] = pool.select(chosen)
            out["train"] = pool.select(np.flatnonzero(~taken))
        for split in SPLITS:
            if split not in out or not len(out[split]):
                how = f" after carving {list(carve)} from {pool_name} ({len(sources[pool_name])} rows)" if carve else ""
                raise DataError(
                    f"task {self.name!r}: its {split} split is empty{how}; give more rows or smaller split sizes"
                )
        return out


def is_text(kind: pa.DataType) -> bool:
    """Whether an Arrow column type is a string (as csv/tsv columns always are)."""
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def first_untextual(column: pa.ChunkedArray) -> int | None:
    """The first row whose value is no text (missing, a boolean, a list or an object), ``None`` when every row has one."""
    kind = column.type
    if pa.types.is_boolean(kind) or pa.types.is_null(kind) or pa.types.is_nested(kind):
        return 0  # every value is such a value, or missing
    if not column.null_count:
        return None
    return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def as_text(batch: dict[str, list], names: list[str]) -> dict[str, list]:
    """The ``names`` columns of a batch as strings (``Dataset.map``)."""
    return {name: [str(value) for value in batch[name]] for name in names}
