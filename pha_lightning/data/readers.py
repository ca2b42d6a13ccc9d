"""Reading rows: the built-in benchmarks' files (TSV without quoting, JSON lines), users' files
(csv/tsv/json(l)/parquet through ``datasets``), hub datasets, and which source ``data.source`` means.

Every reader reports a malformed row or an unreadable file as a :class:`~pha_lightning.errors.DataError`
naming the task, the file and the line (or the hub row). docs/data.md describes the formats.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import pyarrow as pa

from pha_lightning.data.schema import QUOTING
from pha_lightning.errors import ConfigError, DataError
from pha_lightning.validation import undecodable_bytes

if TYPE_CHECKING:
    from datasets import Dataset

#: Environment variable naming the local data directory (``<dir>/glue``, ``<dir>/superglue``).
DATA_DIR_ENV = "PHA_DATA_DIR"
#: ``data.source``: ``auto`` resolves to a :data:`Source`.
DataSource = Literal["auto", "local", "hub"]
SOURCES: tuple[str, ...] = get_args(DataSource)
Source = Literal["local", "hub"]


# --------------------------------------------------------------------------- errors and positions
@dataclass(frozen=True)
class Where:
    """Where a row came from, for error messages: a file line or a hub row."""

    task: str
    origin: str  # a file path, or "hub <path> (config <c>, split <s>)"
    line: int | None = None  # 1-based file line, or 0-based hub row

    def __str__(self) -> str:
        if self.line is None:
            return f"task {self.task!r}, {self.origin}"
        unit = "row" if self.origin.startswith("hub ") else "line"
        return f"task {self.task!r}, {self.origin}, {unit} {self.line}"


def fail(where: Where, problem: str) -> DataError:
    """A malformed row, where it is."""
    return DataError(f"malformed data in {where}: {problem}")


# --------------------------------------------------------------------------- local file readers
@dataclass(frozen=True)
class TsvFormat:
    """A GLUE TSV: which columns hold which hub fields.

    ``columns`` maps hub field → header name, or → column index when the file has no header.
    """

    columns: Mapping[str, str | int]
    header: bool = True
    encoding: str = "utf-8"


@dataclass(frozen=True)
class JsonlFormat:
    """A JSONL file; ``columns`` maps hub field → JSON key (identity when empty)."""

    columns: Mapping[str, str] = field(default_factory=dict)


def read_tsv(path: Path, fmt: TsvFormat, task: str) -> Iterator[tuple[Where, dict[str, str]]]:
    """Rows of a GLUE TSV as ``{hub field: raw string}``, with no quoting (``csv.QUOTE_NONE``)."""
    try:
        yield from _tsv_rows(path, fmt, task)
    except UnicodeDecodeError:
        raise _undecodable(path, fmt.encoding, task) from None


def _tsv_rows(path: Path, fmt: TsvFormat, task: str) -> Iterator[tuple[Where, dict[str, str]]]:
    with path.open(encoding=fmt.encoding, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        positions: dict[str, int]
        width, like = None, "the header"  # a header-less file: every row as wide as its first
        if fmt.header:
            header = next(reader, None)
            where = Where(task, str(path), 1)
            if header is None:
                raise fail(where, "the file is empty; expected a header line")
            missing = [name for name in fmt.columns.values() if name not in header]
            if missing:
                raise fail(where, f"header {header} lacks the columns {missing}")
            positions = {key: header.index(name) for key, name in fmt.columns.items()}  # type: ignore[arg-type]
            width = len(header)
        else:
            positions = {key: int(index) for key, index in fmt.columns.items()}
        needed = max(positions.values()) + 1
        for row in reader:
            where = Where(task, str(path), reader.line_num)
            if not row:
                continue  # an empty line carries no example
            if width is None:
                width, like = len(row), f"line {reader.line_num}"
            if len(row) != width:
                raise fail(where, f"expected {width} tab-separated fields (as in {like}), found {len(row)}")
            if len(row) < needed:
                raise fail(where, f"expected at least {needed} tab-separated fields, found {len(row)}")
            yield where, {key: row[index] for key, index in positions.items()}


def read_tsv_table(path: Path, fmt: TsvFormat) -> pa.Table | None:
    """The rows of a GLUE TSV as an Arrow table ``{hub field: text}``, exactly as :func:`read_tsv` reads
    them (no quoting, empty lines skipped, every row as wide as the header or the first row), without a
    Python object per row; ``None`` where Arrow might read the file otherwise (another encoding, a
    byte-order mark that ``utf-8`` keeps) or finds it malformed: :func:`read_tsv` then reads it and
    names the row."""
    import pyarrow.csv as pacsv

    if fmt.encoding not in ("utf-8", "utf-8-sig"):
        return None
    with path.open("rb") as handle:
        if handle.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 and fmt.encoding == "utf-8":
            return None  # csv keeps the mark in the first field, Arrow drops it
    try:
        with path.open(encoding=fmt.encoding, newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            first = next(reader, None) if fmt.header else next((row for row in reader if row), None)
    except UnicodeDecodeError:
        return None
    if not first or (fmt.header and any(name not in first for name in fmt.columns.values())):
        return None
    positions = {key: first.index(str(name)) if fmt.header else int(name) for key, name in fmt.columns.items()}
    if max(positions.values()) >= len(first):
        return None
    names = [f"field{index}" for index in range(len(first))]
    used = [names[index] for index in sorted(set(positions.values()))]
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if fmt.header else 0),
            parse_options=pacsv.ParseOptions(
                delimiter="\t", quote_char=False, double_quote=False, escape_char=False, ignore_empty_lines=True
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=used,
                column_types=dict.fromkeys(used, pa.string()),
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid:  # a row of another width, or bytes that are no UTF-8
        return None
    return pa.table({key: table[names[index]] for key, index in positions.items()})


def file_identity(path: Path) -> list:
    """What tells a file's content apart without reading it: its resolved path, size and modification time
    (nanoseconds); an ``OSError`` where it cannot be read."""
    resolved = path.resolve()
    stat = resolved.stat()
    return [str(resolved), stat.st_size, stat.st_mtime_ns]


def _undecodable(path: Path, encoding: str, task: str) -> DataError:
    line, problem = undecodable_bytes(path, encoding)
    return fail(Where(task, str(path), line), problem)


def read_jsonl(path: Path, task: str) -> Iterator[tuple[Where, dict[str, Any]]]:
    """Objects of a JSONL file, one per non-empty line."""
    try:
        yield from _jsonl_rows(path, task)
    except UnicodeDecodeError:
        raise _undecodable(path, "utf-8-sig", task) from None


def _jsonl_rows(path: Path, task: str) -> Iterator[tuple[Where, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as handle:  # a byte-order mark (some editors write one) is not JSON
        for number, line in enumerate(handle, start=1):
            where = Where(task, str(path), number)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise fail(where, f"invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise fail(where, f"expected a JSON object, found {type(row).__name__}")
            yield where, row


# --------------------------------------------------------------------------- source selection
def resolve_source(source: str, data_dir: str | os.PathLike | None) -> tuple[Source, str | None]:
    """``(source, data_dir)`` to load from: ``auto`` means local files when a data directory is
    given (argument or ``$PHA_DATA_DIR``), else the hub. ``hub`` ignores ``$PHA_DATA_DIR``."""
    if source not in SOURCES:
        raise ConfigError(f"unknown data source {source!r}; valid: {list(SOURCES)}")
    if source == "hub":
        if data_dir is not None:
            raise ConfigError(
                f"data.source=hub but data.data_dir={str(data_dir)!r} is set too; drop one "
                "(source auto loads local files when data_dir is given, the hub otherwise)"
            )
        return "hub", None
    directory = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if directory is None:
        if source == "local":
            raise ConfigError(f"data.source=local needs data.data_dir (or the environment variable {DATA_DIR_ENV})")
        return "hub", None
    directory = os.path.expanduser(str(directory))
    if not os.path.isdir(directory):
        raise ConfigError(
            f"data.data_dir {directory!r} is not a directory"
            + (f" (from ${DATA_DIR_ENV})" if data_dir is None else "")
            + "; give the directory holding glue/ and superglue/"
        )
    return "local", directory


# --------------------------------------------------------------------------- hub access
def load_hub_split(task: str, path: str, config: str | None, split: str, revision: str | None = None) -> Dataset:
    """The rows of a hub dataset split as its ``datasets`` table, or a :class:`DataError` that says what to do instead."""
    import datasets

    try:
        pinned = {"revision": revision} if revision else {}
        dataset = datasets.load_dataset(path, config, split=split, **pinned)
    except Exception as err:  # noqa: BLE001 - any failure inside datasets is reported as a data problem
        offline = any(
            os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
            for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        )
        unreachable = (
            isinstance(err, (ConnectionError, TimeoutError))
            or offline
            or bool(re.search(r"couldn't reach|connection|offline|resolve|timed out", str(err), re.IGNORECASE))
        )
        what = f"{path} (config {config!r}, split {split!r})"
        if unreachable:
            message = (
                f"task {task!r}: the Hugging Face hub could not be reached to load {what}, and it is not in the "
                f"local datasets cache ({type(err).__name__}: {err}). Either run where the hub is reachable "
                f"(once; later runs can use the cache with HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1 set), or "
                f"read the benchmark's own files: --data.data_dir <dir> (or ${DATA_DIR_ENV}=<dir>) with "
                f"<dir>/glue/<TASK>/{{train,dev}}.tsv and <dir>/superglue/<Task>/{{train,val}}.jsonl. "
                f"Without network access set HF_HUB_OFFLINE=1 so this fails at once instead of after retries."
            )
        else:
            message = f"task {task!r}: could not load {what} from the hub: {type(err).__name__}: {err}"
        raise DataError(message) from None
    return dataset


class ColumnCount(Exception):
    """A header-less file's first line has another number of fields than ``columns`` names."""

    def __init__(self, count: int, first: list[str]) -> None:
        super().__init__(f"{count} fields")
        self.count, self.first = count, first


class MissingFields(Exception):
    """A file lacks fields a spec names."""

    def __init__(self, missing: list[str], present: list[str]) -> None:
        super().__init__(f"missing {missing}")
        self.missing, self.present = missing, present


def read_table(
    path: Path, fmt: str, encoding: str, quoting: str | None, columns: list[str], names: Sequence[str] | None = None
) -> Dataset:
    """The ``columns`` of a csv/tsv/json(l)/parquet file as a ``datasets`` table (read and cached by ``datasets``,
    memory-mapped: no row becomes a Python object).

    csv/tsv fields are read as text (no type guessing, no "NA" → missing); json and parquet keep
    their types (labels may be integers or booleans there). ``names`` are the fields of a csv/tsv
    file without a header line, in order.
    """
    from datasets import Dataset, Features, Value

    if fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        quote = QUOTING[quoting or ("minimal" if fmt == "csv" else "none")]
        first = _csv_header(path, delimiter, encoding, quote)
        if names is not None and len(first) != len(names):
            raise ColumnCount(len(first), first)
        header = list(names) if names is not None else first
        missing = [c for c in columns if c not in header]
        if missing:
            raise MissingFields(missing, header)
        dataset = Dataset.from_csv(
            str(path),
            sep=delimiter,
            encoding=encoding,
            quoting=quote,
            **({"header": None, "column_names": list(names)} if names is not None else {}),
            usecols=list(dict.fromkeys(columns)),
            features=Features({c: Value("string") for c in dict.fromkeys(columns)}),
            na_filter=False,
        )
    elif fmt in ("json", "jsonl"):
        dataset = Dataset.from_json(str(path), encoding=encoding)
    else:
        dataset = Dataset.from_parquet(str(path))
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise MissingFields(missing, list(dataset.column_names))
    return dataset.select_columns(list(dict.fromkeys(columns)))


def _csv_header(path: Path, delimiter: str, encoding: str, quoting: int) -> list[str]:
    with path.open(encoding=encoding, newline="") as handle:
        return next(csv.reader(handle, delimiter=delimiter, quoting=quoting), [])
