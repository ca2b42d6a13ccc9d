"""The built-in benchmarks' task: a :class:`~pha_lightning.data.schema.TaskSpec` with an official split
protocol, read from the hub or from the benchmark's own files.

Both sources give identical records for the same split: the local readers normalise each file row
into the hub's row shape, and one conversion turns a hub-shaped row into a record. A missing file
or a malformed row raises :class:`~pha_lightning.errors.DataError` naming the task, the file and
the line. A local TSV's records stay a ``datasets`` table (:meth:`BenchmarkTask.official_table`:
read by Arrow, labels checked per distinct value, the protocol's splits carved by index selection);
JSON lines files and the hub give lists of records. docs/data.md gives the task list, the file
formats and their quirks and the seeded split protocol implemented here; the tasks that need code
(COPA, MultiRC, WiC, WSC) are in :mod:`pha_lightning.data.kinds`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pha_lightning.data.readers import (
    DATA_DIR_ENV,
    JsonlFormat,
    Source,
    TsvFormat,
    Where,
    fail,
    file_identity,
    load_hub_split,
    read_jsonl,
    read_tsv,
    read_tsv_table,
    resolve_source,
)
from pha_lightning.data.schema import TaskSpec
from pha_lightning.data.tables import distinct_values, take
from pha_lightning.data.tasks import SPLITS, Records, Task, check_split
from pha_lightning.errors import ConfigError, DataError

if TYPE_CHECKING:
    from datasets import Dataset

#: Large tasks (SST-2, QQP, QNLI) carve their validation split of this size out of train.
LARGE_TASK_VALIDATION_SIZE = 1000

FileFormat = TsvFormat | JsonlFormat


class BenchmarkTask(Task):
    """A GLUE or SuperGLUE task, loadable from the hub or from the benchmark's own files."""

    reads_external_data = True

    def __init__(self, spec: TaskSpec) -> None:
        if spec.protocol is None:
            raise ConfigError(f"task {spec.name!r}: a benchmark task needs an official protocol")
        self.spec = spec
        self.name = spec.name
        self.benchmark = spec.benchmark
        self.protocol = spec.protocol
        self.metric_names = tuple(spec.metrics or ())
        self.source_fields = spec.inputs
        #: What each class means (the hub's class names); ``()`` for the regression task.
        self.label_words = spec.meanings or ()
        #: T5 targets are class indices as strings (data.md), or the rounded score for STS-B.
        self.label_names = tuple(str(i) for i in range(len(self.label_words)))
        self.target_range = spec.regression

    @property
    def hub_path(self) -> str | None:
        return None if self.spec.hub is None else self.spec.hub.path

    @property
    def hub_config(self) -> str | None:
        return None if self.spec.hub is None else self.spec.hub.name

    @property
    def official_names(self) -> tuple[str, ...]:
        """The official splits of the benchmark (``train``, ``dev``, MNLI also ``dev_mismatched``)."""
        hub = self.spec.hub.splits if self.spec.hub is not None else {}
        return tuple(dict.fromkeys((*(self.spec.files or ()), *hub)))

    def file_format(self, path: str) -> FileFormat:
        """How to read one of the benchmark's files: its columns (by format) and encoding."""
        fmt = self.spec.file_format(path)
        columns = dict((self.spec.column_map or {}).get(fmt, {}))
        if fmt == "jsonl":
            return JsonlFormat(columns)
        fields = (*self.source_fields, *(self.spec.keep or ()), "label")
        if self.spec.columns is not None:  # a file without a header line: columns by position
            names = self.spec.columns
            return TsvFormat(
                {f: names.index(columns.get(f, f)) for f in fields}, header=False, encoding=self.spec.encoding
            )
        return TsvFormat({f: columns.get(f, f) for f in fields}, encoding=self.spec.encoding)

    # ------------------------------------------------------------------ official splits
    def local_path(self, official: str, data_dir: str | os.PathLike) -> tuple[Path, FileFormat]:
        """The file holding an official split under ``data_dir``: the first candidate that exists."""
        listed = (self.spec.files or {}).get(official, ())
        candidates = (listed,) if isinstance(listed, str) else listed
        if not candidates:
            raise DataError(f"task {self.name!r}: its spec names no file for its {official} split")
        base = Path(data_dir)
        for relative in candidates:
            if (base / relative).is_file():
                return base / relative, self.file_format(relative)
        looked = ", ".join(str(base / relative) for relative in candidates)
        hint = "" if Path(data_dir).is_dir() else f" (the data directory {str(data_dir)!r} does not exist)"
        raise DataError(f"task {self.name!r}: the {official} file is missing: looked for {looked}{hint}")

    def has_local(self, official: str, data_dir: str | os.PathLike) -> bool:
        try:
            self.local_path(official, data_dir)
        except DataError:
            return False
        return True

    def load_official(
        self, official: str, source: Source = "local", data_dir: str | os.PathLike | None = None
    ) -> list[dict]:
        """All records of one official split (``train``, ``dev``, MNLI also ``dev_mismatched``)."""
        if official not in self.official_names:
            raise ConfigError(
                f"task {self.name!r} has no official split {official!r}; valid: {sorted(self.official_names)}"
            )
        if source == "local":
            if data_dir is None:
                raise ConfigError(f"task {self.name!r}: local loading needs data_dir (or ${DATA_DIR_ENV})")
            rows = self._local_rows(official, data_dir)
        elif source == "hub":
            rows = self._hub_rows(official)
        else:
            raise ConfigError(f"unknown data source {source!r}; valid: ['local', 'hub']")
        records = [self.record_from_hub_row(row, where, position) for position, (where, row) in enumerate(rows)]
        return self._finish(records)

    def _local_rows(self, official: str, data_dir: str | os.PathLike) -> Iterator[tuple[Where, dict]]:
        path, fmt = self.local_path(official, data_dir)
        if isinstance(fmt, TsvFormat):
            for where, raw in read_tsv(path, fmt, self.name):
                yield where, self._hub_row_from_tsv(raw, where)
        else:
            for where, raw in read_jsonl(path, self.name):
                for row in self._hub_rows_from_json(raw, fmt, where):
                    yield where, row

    def _hub_rows(self, official: str) -> Iterator[tuple[Where, dict]]:
        if self.spec.hub is None or official not in self.spec.hub.splits:
            raise DataError(f"task {self.name!r}: its spec names no hub dataset split for its {official} split")
        split = self.spec.hub.splits[official]
        dataset = load_hub_split(self.name, self.hub_path, self.hub_config, split)
        origin = f"hub {self.hub_path} (config {self.hub_config}, split {split})"
        for position, row in enumerate(dataset):
            yield Where(self.name, origin, position), row

    # ------------------------------------------------------------------ local row → hub row
    def _label_from_text(self, value: Any, where: Where) -> int | float:
        """A label as a local file writes it → the hub's class id (or the float score)."""
        kind, words = self.spec.label_encoding, self.label_words
        if kind == "word":
            if value not in words:
                raise fail(where, f"label {value!r} is not one of {list(words)}")
            return words.index(value)
        if kind == "bool":
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return int(value.lower() == "true")
            raise fail(where, f"label {value!r} is not a boolean (true/false)")
        if kind == "index":
            if isinstance(value, bool):
                raise fail(where, f"label {value!r} is not a class index in 0..{len(words) - 1}")
            try:
                index = int(value)
            except (TypeError, ValueError):
                index = None
            if index is None or str(index) != str(value).strip():
                raise fail(where, f"label {value!r} is not a class index in 0..{len(words) - 1}")
            return index
        try:
            return float(value)
        except (TypeError, ValueError):
            raise fail(where, f"score {value!r} is not a number") from None

    def _hub_row_from_tsv(self, raw: dict[str, str], where: Where) -> dict:
        row: dict[str, Any] = dict(raw)
        row["label"] = self._label_from_text(raw["label"], where)
        return row

    def _hub_rows_from_json(self, raw: dict, fmt: JsonlFormat, where: Where) -> list[dict]:
        columns = dict(fmt.columns) or {
            key: key for key in (*self.source_fields, *(self.spec.keep or ()), "label", "idx")
        }
        missing = [key for key in columns.values() if key not in raw and key != "idx"]
        if missing:
            raise fail(where, f"missing keys {missing}")
        row = {hub_key: raw[key] for hub_key, key in columns.items() if key in raw}
        row["label"] = self._label_from_text(raw[columns["label"]], where)
        return [row]

    # ------------------------------------------------------------------ hub row → record
    def record_from_hub_row(self, row: Mapping[str, Any], where: Where, position: int) -> dict:
        """The record of one hub-shaped row, validated; ``position`` is its index in the split."""
        fields = (*self.source_fields, *(self.spec.keep or ()))
        missing = [key for key in (*fields, "label") if key not in row]
        if missing:
            raise fail(where, f"missing fields {missing}")
        record: dict[str, Any] = {}
        for key in self.source_fields:
            if not isinstance(row[key], str):
                raise fail(where, f"field {key!r} should be text, found {row[key]!r}")
            record[key] = row[key]
        for key in self.spec.keep or ():
            record[key] = row[key]
        record["label"] = self._check_label(row["label"], where)
        record["idx"] = position if self.benchmark == "glue" or "idx" not in row else row["idx"]
        self._check_record(record, where)
        return record

    def _check_label(self, label: Any, where: Where) -> int | float:
        if self.is_regression:
            if isinstance(label, bool) or not isinstance(label, (int, float)):
                raise fail(where, f"score {label!r} is not a number")
            low, high = self.target_range  # type: ignore[misc]
            if not low <= float(label) <= high:
                raise fail(where, f"score {label!r} lies outside [{low}, {high}]")
            # the hub stores scores as float32; rounding local scores the same way makes both
            # sources give identical records (targets become float32 tensors anyway)
            return float(np.float32(label))
        if isinstance(label, bool):
            label = int(label)
        if not isinstance(label, int) or not 0 <= label < len(self.label_names):
            hidden = " (the hub hides test labels as -1; test splits are carved from dev)" if label == -1 else ""
            raise fail(where, f"label {label!r} is not a class index in 0..{len(self.label_names) - 1}{hidden}")
        return label

    def _check_record(self, record: dict, where: Where) -> None:
        """Task-specific validation of a finished record (WSC spans, COPA question)."""

    def _finish(self, records: list[dict]) -> list[dict]:
        """Post-process a whole official split (MultiRC numbers its questions here)."""
        return records

    # ------------------------------------------------------------------ official splits as tables
    def official_records(
        self, official: str, source: Source = "local", data_dir: str | os.PathLike | None = None
    ) -> Records:
        """:meth:`load_official`, the rows of a local GLUE TSV kept in Arrow (:meth:`official_table`)."""
        if source == "local" and data_dir is not None and official in self.official_names:
            table = self.official_table(official, data_dir)
            if table is not None:
                return table
        return self.load_official(official, source, data_dir)

    def official_table(self, official: str, data_dir: str | os.PathLike) -> Dataset | None:
        """The records of a local TSV as a ``datasets`` table: the file read by Arrow, each distinct label
        checked once. ``None`` for a JSON lines file or a kind's records (their code reads rows), and
        where a row is malformed: :meth:`load_official` then names it (task, file, line, value)."""
        from datasets import Dataset

        path, fmt = self.local_path(official, data_dir)
        if not isinstance(fmt, TsvFormat) or self.spec.kind is not None or "idx" in (self.spec.keep or ()):
            return None
        rows = read_tsv_table(path, fmt)
        if rows is None:
            return None
        values, positions = distinct_values(rows["label"])
        where = Where(self.name, str(path))
        try:
            labels = [self._check_label(self._label_from_text(value, where), where) for value in values]
        except DataError:
            return None
        columns = {name: rows[name] for name in (*self.source_fields, *(self.spec.keep or ()))}
        columns["label"] = pa.array(np.asarray(labels, dtype=np.float64 if self.is_regression else np.int64)[positions])
        columns["idx"] = pa.array(np.arange(len(rows), dtype=np.int64))
        # named by the file's identity: without a fingerprint, datasets would hash (copy) the whole table
        named = json.dumps([self.spec.to_dict(), file_identity(path)])
        return Dataset(pa.table(columns), fingerprint=hashlib.sha256(named.encode()).hexdigest()[:32])

    # ------------------------------------------------------------------ protocol splits
    def load_splits(
        self,
        splits: Sequence[str],
        source: Source = "local",
        data_dir: str | os.PathLike | None = None,
        split_validation_test: bool = True,
        data_seed: int = 42,
        **_: object,
    ) -> dict[str, Records]:
        """Records of the protocol ``splits`` (train / validation / test); each official file is read once.
        A local GLUE TSV's records are a ``datasets`` table (:meth:`official_table`), the others a list."""
        for split in splits:
            check_split(split)
        if source not in ("local", "hub"):
            source, data_dir = resolve_source(source, data_dir)
        official_cache: dict[str, Records] = {}

        def official(name: str) -> Records:
            if name not in official_cache:
                official_cache[name] = self.official_records(name, source, data_dir)
            return official_cache[name]

        return {split: self._protocol_split(split, official, split_validation_test, data_seed) for split in splits}

    def load_split(self, split: str, **source_options: Any) -> Records:
        return self.load_splits([split], **source_options)[split]

    def check_sources(
        self,
        splits: Sequence[str],
        source: Source = "local",
        data_dir: str | os.PathLike | None = None,
        split_validation_test: bool = True,
        **_: object,
    ) -> None:
        """Every local file of the official splits behind ``splits`` exists (the hub is checked when loaded)."""
        if source != "local" or data_dir is None:
            return
        for official in self.officials_read(splits, split_validation_test):
            self.local_path(official, data_dir)

    def officials_read(self, splits: Sequence[str], split_validation_test: bool = True) -> list[str]:
        """The official splits that the protocol ``splits`` are drawn from, sorted."""
        return sorted({name for split in splits for name in self.official_splits(split, split_validation_test)})

    def source_identity(
        self,
        source: Source = "local",
        data_dir: str | os.PathLike | None = None,
        split_validation_test: bool = True,
        **_: object,
    ) -> dict | None:
        """The spec and, for each official file the protocol reads, the file chosen among its candidates
        (resolved path, size, modification time; ``None`` where none exists, as loading then reports).

        ``None`` for the hub: the built-in specs pin no revision, and nothing cheaper than loading the
        dataset tells whether it changed."""
        if source != "local" or data_dir is None:
            return None
        files: dict[str, list | None] = {}
        for official in self.officials_read(SPLITS, split_validation_test):
            try:
                files[official] = file_identity(self.local_path(official, data_dir)[0])
            except (DataError, OSError):
                files[official] = None
        return {"spec": self.spec.to_dict(), "kind": type(self).__name__, "files": files}

    def official_splits(self, split: str, split_validation_test: bool = True) -> tuple[str, ...]:
        """The official splits a protocol split is drawn from."""
        check_split(split)
        if self.protocol == "mnli":
            return ({"train": "train", "validation": "dev_mismatched", "test": "dev"}[split],)
        if not split_validation_test:
            return ("train" if split == "train" else "dev",)
        if self.protocol == "small":
            return ("train" if split == "train" else "dev",)
        return ("dev" if split == "test" else "train",)  # large: validation is drawn from train

    def _protocol_split(
        self, split: str, official: Callable[[str], Records], split_validation_test: bool, data_seed: int
    ) -> Records:
        if self.protocol == "mnli" or not split_validation_test:
            (name,) = self.official_splits(split, split_validation_test)
            return official(name)
        if self.protocol == "small":
            if split == "train":
                return official("train")
            validation, test = halve(official("dev"), data_seed, self.name)
            return validation if split == "validation" else test
        # large: validation is drawn from train and removed from it; test = dev
        if split == "test":
            return official("dev")
        train = official("train")
        if len(train) <= LARGE_TASK_VALIDATION_SIZE:
            raise DataError(
                f"task {self.name!r}: its train split has {len(train)} examples, too few to carve out "
                f"{LARGE_TASK_VALIDATION_SIZE} validation examples"
            )
        order = list(range(len(train)))
        random.Random(f"pha/{data_seed}/{self.name}/validation-from-train").shuffle(order)
        chosen = np.zeros(len(train), dtype=bool)
        chosen[order[:LARGE_TASK_VALIDATION_SIZE]] = True
        return take(train, np.flatnonzero(chosen if split == "validation" else ~chosen))

    # ------------------------------------------------------------------ formatting
    def target_value(self, record: dict) -> float:
        return float(record["label"])

    def group_of(self, record: dict) -> int | None:
        """Id of the record's metric group (MultiRC: its question), or ``None``."""
        return record.get("group")


def halve(records: Records, data_seed: int, task: str) -> tuple[Records, Records]:
    """Shuffle ``records`` by unit and split them in half: (first ``len // 2`` units, the rest).

    A unit is a record, or all records sharing a ``group`` (MultiRC's answers to one question; a
    table of records has no groups). Each half keeps the records' original order.
    """
    units: dict[Any, list[int]] = {}
    for index in range(len(records)):
        record = records[index] if isinstance(records, list) else {}
        units.setdefault(("group", record["group"]) if "group" in record else ("row", index), []).append(index)
    keys = list(units)
    random.Random(f"pha/{data_seed}/{task}/dev-halves").shuffle(keys)
    first = np.zeros(len(records), dtype=bool)
    first[[index for key in keys[: len(keys) // 2] for index in units[key]]] = True
    return take(records, np.flatnonzero(first)), take(records, np.flatnonzero(~first))
