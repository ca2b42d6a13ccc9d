"""A user's task: a :class:`~pha_lightning.data.schema.TaskSpec` without an official protocol, read
from files or the hub, its labels mapped as the spec says and its missing splits carved with a
seeded, disjoint draw (docs/data.md, "Your own tasks")."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pha_lightning.data.readers import DATA_DIR_ENV, ColumnCount, MissingFields, load_hub_split, read_table
from pha_lightning.data.schema import Carve, SplitColumn, TaskSpec, label_text, plain, spec_carves
from pha_lightning.data.tasks import SPLITS, Task, check_split
from pha_lightning.errors import DataError
from pha_lightning.validation import undecodable_bytes


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
        self._loaded: dict[tuple, dict[str, list[dict]]] = {}

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

    def load_split(self, split: str, **source_options: Any) -> list[dict]:
        return self.load_splits([split], **source_options)[split]

    def load_splits(
        self, splits: Sequence[str], data_dir: str | None = None, data_seed: int = 42, **_: object
    ) -> dict[str, list[dict]]:
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
            resolved = (self.base_dir(data_dir) / str(path)).resolve()
            try:
                stat = resolved.stat()
            except OSError:
                return None
            files[split] = [str(resolved), stat.st_size, stat.st_mtime_ns]
        return {"spec": self.spec.to_dict(), "files": files}

    def _read_sources(self, base: Path) -> dict[str, list[dict]]:
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
        sources = {split: self._read_file(base / str(path)) for split, path in (self.spec.files or {}).items()}
        column = self.spec.split_column
        return sources if column is None else self._split_by_column(column, sources["all"])

    def _split_by_column(self, column: SplitColumn, rows: list[tuple[dict, Any, str]]) -> dict[str, list[dict]]:
        """The rows of one file in the splits its split column names; a value naming none is an error."""
        out: dict[str, list[dict]] = {}
        for record, value, where in rows:
            split = column.split_of(value)
            if split is None:
                raise DataError(
                    f"task {self.name!r}, {where}: split_column {column.name!r} holds {value!r}, which names no "
                    f"split; valid: {plain(column.values)} (give split_column: {{name, train, validation, test}})"
                )
            out.setdefault(split, []).append(record)
        return out

    def train_label_values(self, data_dir: str | None) -> list[Any]:
        """The label values of the training rows as the file holds them (of ``all`` for a file to carve)."""
        if self.spec.hub is not None:
            hub = self.spec.hub
            rows = load_hub_split(self.name, hub.path, hub.name, hub.splits["train"], hub.revision)
            if rows and self.spec.label not in rows[0]:
                raise DataError(
                    f"task {self.name!r}, hub {hub.path}: no field {self.spec.label!r}; its fields are {sorted(rows[0])}"
                )
            return [row[self.spec.label] for row in rows]
        files = self.spec.files or {}
        rows, _ = self._read_rows(self.base_dir(data_dir) / str(files.get("train", files.get("all", ""))))
        column = self.spec.split_column
        return [row[self.spec.label] for row in rows if column is None or column.split_of(row[column.name]) == "train"]

    def _read_file(self, path: Path) -> Any:
        rows, first_line = self._read_rows(path)
        records = self._records(rows, str(path), first_line)
        if self.spec.split_column is None:
            return records
        name = self.spec.split_column.name
        return [(r, row[name], f"{path}, line {i + first_line}") for i, (r, row) in enumerate(zip(records, rows))]

    def _read_rows(self, path: Path) -> tuple[list[dict], int]:
        """The rows of one file with the fields the spec reads, and the file line of the first row."""
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

    def _records(self, rows: list[dict], origin: str, first_line: int) -> list[dict]:
        """Checked records ``{input: text, label: class index or score, idx}``; ``first_line`` is the
        file line of the first row (0: rows are counted, as for the hub)."""
        missing = [f for f in (*self.spec.inputs, self.spec.label) if rows and f not in rows[0]]
        if missing:
            raise DataError(f"task {self.name!r}, {origin}: no field(s) {missing}; its fields are {sorted(rows[0])}")
        records = []
        for index, row in enumerate(rows):
            where = f"{origin}, {'row' if first_line == 0 else 'line'} {index + first_line}"
            record: dict[str, Any] = {}
            for name in self.spec.inputs:
                value = row[name]
                if value is None or isinstance(value, (bool, list, dict)):
                    raise DataError(f"task {self.name!r}, {where}: field {name!r} is {value!r}, not text")
                record[name] = str(value)
            record["label"] = self._target(row[self.spec.label], where)
            record["idx"] = index
            records.append(record)
        if not records:
            raise DataError(f"task {self.name!r}, {origin}: holds no rows")
        return records

    def _target(self, value: Any, where: str) -> float:
        if self.spec.regression is not None:
            return self._score(value, where)
        index = self.class_index(value)
        if index is None:
            raise DataError(f"task {self.name!r}, {where}: label {value!r} is none of the labels {self.label_space()}")
        return float(index)

    def _score(self, value: Any, where: str) -> float:
        low, high = self.spec.regression  # type: ignore[misc]
        try:
            score = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score) or not low <= score <= high:
            raise DataError(f"task {self.name!r}, {where}: score {value!r} is not a number in [{low:g}, {high:g}]")
        return score

    def _carved(self, sources: dict[str, list[dict]], seed: int) -> dict[str, list[dict]]:
        """train/validation/test: the given ones, and the missing ones carved from ``all`` or train."""
        carve = spec_carves(self.spec)
        pool_name = "all" if "all" in sources else "train"
        out = {split: rows for split, rows in sources.items() if split != "all"}
        if carve:
            pool = sources[pool_name]
            sizes = {split: (self.spec.split or Carve()).size(split, len(pool)) for split in carve}
            order = list(range(len(pool)))
            random.Random(f"pha/{seed}/{self.name}/carve").shuffle(order)
            taken, start = set(), 0
            for split in carve:
                chosen = set(order[start : start + sizes[split]])
                start += sizes[split]
                taken |= chosen
                out[split] = [row for i, row in enumerate(pool) if i in chosen]
            out["train"] = [row for i, row in enumerate(pool) if i not in taken]
        for split in SPLITS:
            if not out.get(split):
                how = f" after carving {list(carve)} from {pool_name} ({len(sources[pool_name])} rows)" if carve else ""
                raise DataError(
                    f"task {self.name!r}: its {split} split is empty{how}; give more rows or smaller split sizes"
                )
        return out
