"""GLUE and SuperGLUE tasks: loading from the hub or from the benchmarks' local files, and the split protocol.

Both sources give identical records for the same split: the local readers normalise each file row
into the hub's row shape, and one conversion turns a hub-shaped row into a record. A missing file
or a malformed row raises :class:`~pha_lightning.errors.DataError` naming the task, the file and
the line. docs/data.md gives the task list, the file formats and their quirks, the encoder inputs
of structured tasks (COPA, MultiRC, WSC, WiC) and the seeded split protocol implemented here.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from pha_lightning.data.tasks import Task, check_split
from pha_lightning.errors import ConfigError, DataError
from pha_lightning.validation import undecodable_bytes

GLUE_HUB = "nyu-mll/glue"
SUPERGLUE_HUB = "aps/super_glue"
#: Environment variable naming the local data directory (``<dir>/glue``, ``<dir>/superglue``).
DATA_DIR_ENV = "PHA_DATA_DIR"
#: ``data.source``: ``auto`` resolves to a :data:`Source`.
DataSource = Literal["auto", "local", "hub"]
SOURCES: tuple[str, ...] = get_args(DataSource)
PROTOCOLS: tuple[str, ...] = ("small", "large", "mnli")
#: Large tasks (SST-2, QQP, QNLI) carve their validation split of this size out of train.
LARGE_TASK_VALIDATION_SIZE = 1000

Source = Literal["local", "hub"]
LabelKind = Literal["index", "word", "bool", "score"]


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


def _fail(where: Where, problem: str) -> DataError:
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


FileFormat = TsvFormat | JsonlFormat


@dataclass(frozen=True)
class OfficialSplit:
    """One official split of a task: its hub split name and its local file (first that exists)."""

    hub_split: str
    files: tuple[tuple[str, FileFormat], ...]  # (path relative to <data_dir>/<local_dir>, format)


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
                raise _fail(where, "the file is empty; expected a header line")
            missing = [name for name in fmt.columns.values() if name not in header]
            if missing:
                raise _fail(where, f"header {header} lacks the columns {missing}")
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
                raise _fail(where, f"expected {width} tab-separated fields (as in {like}), found {len(row)}")
            if len(row) < needed:
                raise _fail(where, f"expected at least {needed} tab-separated fields, found {len(row)}")
            yield where, {key: row[index] for key, index in positions.items()}


def _undecodable(path: Path, encoding: str, task: str) -> DataError:
    line, problem = undecodable_bytes(path, encoding)
    return _fail(Where(task, str(path), line), problem)


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
                raise _fail(where, f"invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise _fail(where, f"expected a JSON object, found {type(row).__name__}")
            yield where, row


# --------------------------------------------------------------------------- WSC span marking
def _span_matches(words: Sequence[str], index: int, span_text: str) -> bool:
    n = len(span_text.split())
    if index < 0 or index + n > len(words) or n == 0:
        return False
    return " ".join(words[index : index + n]).lower().startswith(" ".join(span_text.split()).lower())


def _locate_span(words: Sequence[str], index: int, span_text: str) -> int:
    """Word index of a span: the given one if the words there start with the span text, else the
    nearest index where they do (the official WSC files have a few off-by-some indices, which the
    hub's ``wsc.fixed`` corrects), else the given index if it is inside the text."""
    if _span_matches(words, index, span_text):
        return index
    found = [i for i in range(len(words)) if _span_matches(words, i, span_text)]
    if found:
        return min(found, key=lambda i: (abs(i - index), i))
    if 0 <= index and index + len(span_text.split()) <= len(words):
        return index
    raise ValueError(
        f"span {span_text!r} at word {index} lies outside the text ({len(words)} whitespace-separated words)"
    )


def _close_offset(words: Sequence[str], start: int, span_text: str) -> int:
    """Where the closing mark goes inside a span's last word: after the span text, so punctuation
    glued to the word stays outside (``"him."`` → ``"him"`` + mark + ``"."``); after the whole word
    when the span text does not match the words (a typo in the span text)."""
    n = len(span_text.split())
    joined = " ".join(words[start : start + n])
    core = " ".join(span_text.split())
    last = words[start + n - 1]
    if not joined.lower().startswith(core.lower()):
        return len(last)
    return len(last) - (len(joined) - len(core))


def mark_wsc_spans(text: str, span1_index: int, span1_text: str, span2_index: int, span2_text: str) -> str:
    """The WSC text with the noun (span 1) marked ``* … *`` and the pronoun (span 2) ``# … #``.

    Indices count whitespace-separated words. Punctuation glued to a span's last word stays outside
    the marks: ``"… told him."`` → ``"… told # him #."``. The official files hold spans that
    overlap (a noun phrase containing the pronoun, both starting at the same word); their marks
    nest: ``"* # his # mother *"``. Raises ``ValueError`` if a span lies outside the text.
    """
    words = text.split()
    spans = []
    for index, span_text, mark in ((span1_index, span1_text, "*"), (span2_index, span2_text, "#")):
        if not span_text.split():
            raise ValueError(f"the span marked {mark} has no text")
        start = _locate_span(words, int(index), span_text)
        end = start + len(span_text.split()) - 1
        spans.append((start, end, _close_offset(words, start, span_text), mark))
    spans.sort(key=lambda span: (span[0], -span[1]))  # outer first: it opens first and closes last
    opens: dict[int, list[str]] = {}
    closes: dict[int, list[tuple[int, str]]] = {}
    for start, end, offset, mark in spans:
        opens.setdefault(start, []).append(mark)
        closes.setdefault(end, []).append((offset, mark))
    marked = []
    for position, word in enumerate(words):
        # rightmost offset first, so earlier offsets stay valid; at one offset a later insertion
        # lands left of an earlier one, so the inner span's mark closes first
        for offset, mark in sorted(closes.get(position, []), key=lambda close: -close[0]):
            word = f"{word[:offset]} {mark}{word[offset:]}"
        marked.append("".join(f"{mark} " for mark in opens.get(position, [])) + word)
    return " ".join(marked)


# --------------------------------------------------------------------------- the task class
@dataclass(frozen=True, kw_only=True)
class BenchmarkSpec:
    """Everything that distinguishes one GLUE/SuperGLUE task from another: a table entry, each
    value named. Unlike a user's :class:`~pha_lightning.data.specs.TaskSpec`, it also carries the
    benchmark's split protocol, hub label encoding and local file quirks (docs/data.md)."""

    name: str
    benchmark: Literal["glue", "superglue"]
    hub_config: str
    local_dir: str  # relative to the data directory, e.g. "glue/CoLA"
    source_fields: tuple[str, ...]
    metric_names: tuple[str, ...]
    protocol: Literal["small", "large", "mnli"]
    splits: Mapping[str, OfficialSplit]  # official split name ("train", "dev", "dev_mismatched") → where
    label_kind: LabelKind
    #: Class names, in the hub's class-id order; ``()`` for the regression task.
    label_words: tuple[str, ...] = ()
    #: Extra record fields kept besides the source fields (WiC offsets, WSC spans).
    extra_fields: tuple[str, ...] = ()
    target_range: tuple[float, float] | None = None


def _glue_splits(directory_files: Mapping[str, Sequence[tuple[str, FileFormat]]]) -> dict[str, OfficialSplit]:
    hub = {"train": "train", "dev": "validation"}
    return {name: OfficialSplit(hub[name], tuple(files)) for name, files in directory_files.items()}


def _superglue_splits() -> dict[str, OfficialSplit]:
    return {
        "train": OfficialSplit("train", (("train.jsonl", JsonlFormat()),)),
        "dev": OfficialSplit("validation", (("val.jsonl", JsonlFormat()),)),
    }


class BenchmarkTask(Task):
    """A GLUE or SuperGLUE task, loadable from the hub or from the benchmark's own files."""

    reads_external_data = True

    def __init__(self, spec: BenchmarkSpec) -> None:
        if spec.protocol not in PROTOCOLS:
            raise ConfigError(f"task {spec.name!r}: unknown split protocol {spec.protocol!r}; valid: {list(PROTOCOLS)}")
        self.spec = spec
        self.name = spec.name
        self.benchmark = spec.benchmark
        self.protocol = spec.protocol
        self.metric_names = spec.metric_names
        self.source_fields = spec.source_fields
        self.label_words = spec.label_words
        #: T5 targets are class indices as strings (data.md), or the rounded score for STS-B.
        self.label_names = tuple(str(i) for i in range(len(spec.label_words)))
        self.target_range = spec.target_range

    @property
    def hub_path(self) -> str:
        return GLUE_HUB if self.benchmark == "glue" else SUPERGLUE_HUB

    # ------------------------------------------------------------------ official splits
    def local_path(self, official: str, data_dir: str | os.PathLike) -> tuple[Path, FileFormat]:
        """The file holding an official split under ``data_dir``: the first candidate that exists."""
        candidates = self.spec.splits[official].files
        base = Path(data_dir) / self.spec.local_dir
        for relative, fmt in candidates:
            if (base / relative).is_file():
                return base / relative, fmt
        looked = ", ".join(str(base / relative) for relative, _ in candidates)
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
        if official not in self.spec.splits:
            raise ConfigError(
                f"task {self.name!r} has no official split {official!r}; valid: {sorted(self.spec.splits)}"
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
        split = self.spec.splits[official].hub_split
        dataset = load_hub_split(self.name, self.hub_path, self.spec.hub_config, split)
        origin = f"hub {self.hub_path} (config {self.spec.hub_config}, split {split})"
        for position, row in enumerate(dataset):
            yield Where(self.name, origin, position), row

    # ------------------------------------------------------------------ local row → hub row
    def _label_from_text(self, value: Any, where: Where) -> int | float:
        """A label as a local file writes it → the hub's class id (or the float score)."""
        kind, words = self.spec.label_kind, self.spec.label_words
        if kind == "word":
            if value not in words:
                raise _fail(where, f"label {value!r} is not one of {list(words)}")
            return words.index(value)
        if kind == "bool":
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return int(value.lower() == "true")
            raise _fail(where, f"label {value!r} is not a boolean (true/false)")
        if kind == "index":
            if isinstance(value, bool):
                raise _fail(where, f"label {value!r} is not a class index in 0..{len(words) - 1}")
            try:
                index = int(value)
            except (TypeError, ValueError):
                index = None
            if index is None or str(index) != str(value).strip():
                raise _fail(where, f"label {value!r} is not a class index in 0..{len(words) - 1}")
            return index
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _fail(where, f"score {value!r} is not a number") from None

    def _hub_row_from_tsv(self, raw: dict[str, str], where: Where) -> dict:
        row: dict[str, Any] = dict(raw)
        row["label"] = self._label_from_text(raw["label"], where)
        return row

    def _hub_rows_from_json(self, raw: dict, fmt: JsonlFormat, where: Where) -> list[dict]:
        columns = dict(fmt.columns) or {
            key: key for key in (*self.source_fields, *self.spec.extra_fields, "label", "idx")
        }
        missing = [key for key in columns.values() if key not in raw and key != "idx"]
        if missing:
            raise _fail(where, f"missing keys {missing}")
        row = {hub_key: raw[key] for hub_key, key in columns.items() if key in raw}
        row["label"] = self._label_from_text(raw[columns["label"]], where)
        return [row]

    # ------------------------------------------------------------------ hub row → record
    def record_from_hub_row(self, row: Mapping[str, Any], where: Where, position: int) -> dict:
        """The record of one hub-shaped row, validated; ``position`` is its index in the split."""
        fields = (*self.source_fields, *self.spec.extra_fields)
        missing = [key for key in (*fields, "label") if key not in row]
        if missing:
            raise _fail(where, f"missing fields {missing}")
        record: dict[str, Any] = {}
        for key in self.source_fields:
            if not isinstance(row[key], str):
                raise _fail(where, f"field {key!r} should be text, found {row[key]!r}")
            record[key] = row[key]
        for key in self.spec.extra_fields:
            record[key] = row[key]
        record["label"] = self._check_label(row["label"], where)
        record["idx"] = position if self.benchmark == "glue" or "idx" not in row else row["idx"]
        self._check_record(record, where)
        return record

    def _check_label(self, label: Any, where: Where) -> int | float:
        if self.is_regression:
            if isinstance(label, bool) or not isinstance(label, (int, float)):
                raise _fail(where, f"score {label!r} is not a number")
            low, high = self.target_range  # type: ignore[misc]
            if not low <= float(label) <= high:
                raise _fail(where, f"score {label!r} lies outside [{low}, {high}]")
            # the hub stores scores as float32; rounding local scores the same way makes both
            # sources give identical records (targets become float32 tensors anyway)
            return float(np.float32(label))
        if isinstance(label, bool):
            label = int(label)
        if not isinstance(label, int) or not 0 <= label < len(self.label_names):
            hidden = " (the hub hides test labels as -1; test splits are carved from dev)" if label == -1 else ""
            raise _fail(where, f"label {label!r} is not a class index in 0..{len(self.label_names) - 1}{hidden}")
        return label

    def _check_record(self, record: dict, where: Where) -> None:
        """Task-specific validation of a finished record (WSC spans, COPA question)."""

    def _finish(self, records: list[dict]) -> list[dict]:
        """Post-process a whole official split (MultiRC numbers its questions here)."""
        return records

    # ------------------------------------------------------------------ protocol splits
    def load_splits(
        self,
        splits: Sequence[str],
        source: Source = "local",
        data_dir: str | os.PathLike | None = None,
        split_validation_test: bool = True,
        data_seed: int = 42,
        **_: object,
    ) -> dict[str, list[dict]]:
        """Records of the protocol ``splits`` (train / validation / test); each official file is read once."""
        for split in splits:
            check_split(split)
        if source not in ("local", "hub"):
            source, data_dir = resolve_source(source, data_dir)
        official_cache: dict[str, list[dict]] = {}

        def official(name: str) -> list[dict]:
            if name not in official_cache:
                official_cache[name] = self.load_official(name, source, data_dir)
            return official_cache[name]

        return {split: self._protocol_split(split, official, split_validation_test, data_seed) for split in splits}

    def load_split(self, split: str, **source_options: Any) -> list[dict]:
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
        for official in sorted(
            {name for split in splits for name in self.official_splits(split, split_validation_test)}
        ):
            self.local_path(official, data_dir)

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
        self, split: str, official: Callable[[str], list[dict]], split_validation_test: bool, data_seed: int
    ) -> list[dict]:
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
        chosen = set(order[:LARGE_TASK_VALIDATION_SIZE])
        keep = chosen if split == "validation" else set(order[LARGE_TASK_VALIDATION_SIZE:])
        return [record for index, record in enumerate(train) if index in keep]

    # ------------------------------------------------------------------ formatting
    def target_value(self, record: dict) -> float:
        return float(record["label"])

    def group_of(self, record: dict) -> int | None:
        """Id of the record's metric group (MultiRC: its question), or ``None``."""
        return record.get("group")


def halve(records: list[dict], data_seed: int, task: str) -> tuple[list[dict], list[dict]]:
    """Shuffle ``records`` by unit and split them in half: (first ``len // 2`` units, the rest).

    A unit is a record, or all records sharing a ``group`` (MultiRC's answers to one question).
    Each half keeps the records' original order.
    """
    units: dict[Any, list[int]] = {}
    for index, record in enumerate(records):
        units.setdefault(("group", record["group"]) if "group" in record else ("row", index), []).append(index)
    keys = list(units)
    random.Random(f"pha/{data_seed}/{task}/dev-halves").shuffle(keys)
    first = {index for key in keys[: len(keys) // 2] for index in units[key]}
    return (
        [record for index, record in enumerate(records) if index in first],
        [record for index, record in enumerate(records) if index not in first],
    )


# --------------------------------------------------------------------------- structured tasks
COPA_QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}


class CopaTask(BenchmarkTask):
    def _check_record(self, record: dict, where: Where) -> None:
        if record["question"] not in COPA_QUESTIONS:
            raise _fail(where, f"question {record['question']!r} is neither 'cause' nor 'effect'")

    def encoder_text(self, record: dict) -> tuple[str, str | None]:
        question = COPA_QUESTIONS[record["question"]]
        return f"{record['premise']} {question}", f"choice1: {record['choice1']} choice2: {record['choice2']}"


class MultiRCTask(BenchmarkTask):
    """MultiRC: one record per answer option; ``group`` numbers the questions."""

    def _hub_rows_from_json(self, raw: dict, fmt: JsonlFormat, where: Where) -> list[dict]:
        try:
            passage = raw["passage"]
            paragraph = passage["text"]
            rows = []
            for question in passage["questions"]:
                for answer in question["answers"]:
                    rows.append(
                        {
                            "paragraph": paragraph,
                            "question": question["question"],
                            "answer": answer["text"],
                            "idx": {"paragraph": raw["idx"], "question": question["idx"], "answer": answer["idx"]},
                            "label": self._label_from_text(answer["label"], where),
                        }
                    )
        except (KeyError, TypeError) as err:
            raise _fail(
                where,
                f"expected {{idx, passage: {{text, questions: [{{question, idx, answers: [{{text, idx, label}}]}}]}}}} ({err!r})",
            ) from None
        return rows

    def record_from_hub_row(self, row: Mapping[str, Any], where: Where, position: int) -> dict:
        record = super().record_from_hub_row(row, where, position)
        idx = row.get("idx")
        if not isinstance(idx, Mapping) or not {"paragraph", "question", "answer"} <= set(idx):
            raise _fail(where, f"idx {idx!r} should be {{paragraph, question, answer}}")
        record["idx"] = {key: int(idx[key]) for key in ("paragraph", "question", "answer")}
        return record

    def _finish(self, records: list[dict]) -> list[dict]:
        groups: dict[tuple[int, int], int] = {}
        for record in records:
            key = (record["idx"]["paragraph"], record["idx"]["question"])
            record["group"] = groups.setdefault(key, len(groups))
        return records

    def encoder_text(self, record: dict) -> tuple[str, str | None]:
        return f"{record['question']} {record['answer']}", record["paragraph"]


class WiCTask(BenchmarkTask):
    def encoder_text(self, record: dict) -> tuple[str, str | None]:
        return f"{record['word']}: {record['sentence1']}", record["sentence2"]


class WSCTask(BenchmarkTask):
    """WSC: the inputs mark the noun ``* … *`` and the pronoun ``# … #``."""

    def _hub_rows_from_json(self, raw: dict, fmt: JsonlFormat, where: Where) -> list[dict]:
        target = raw.get("target")
        if not isinstance(target, dict) or "text" not in raw or "label" not in raw:
            raise _fail(
                where, "expected {text, target: {span1_text, span1_index, span2_text, span2_index}, idx, label}"
            )
        missing = [key for key in self.spec.extra_fields if key not in target]
        if missing:
            raise _fail(where, f"target lacks {missing}")
        row = {"text": raw["text"], **{key: target[key] for key in self.spec.extra_fields}, "label": raw["label"]}
        if "idx" in raw:
            row["idx"] = raw["idx"]
        row["label"] = self._label_from_text(raw["label"], where)
        return [row]

    def _check_record(self, record: dict, where: Where) -> None:
        for key in ("span1_index", "span2_index"):
            if isinstance(record[key], bool) or not isinstance(record[key], int):
                raise _fail(where, f"{key} {record[key]!r} is not a word index")
        try:
            self.marked_text(record)
        except ValueError as err:
            raise _fail(where, str(err)) from None

    @staticmethod
    def marked_text(record: dict) -> str:
        return mark_wsc_spans(
            record["text"], record["span1_index"], record["span1_text"], record["span2_index"], record["span2_text"]
        )

    def encoder_text(self, record: dict) -> tuple[str, str | None]:
        return self.marked_text(record), None

    def seq2seq_source(self, record: dict) -> str:
        return f"{self.name} text: {self.marked_text(record)}"


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
def load_hub_split(task: str, path: str, config: str | None, split: str, revision: str | None = None) -> list[dict]:
    """Rows of a hub dataset split, or a :class:`DataError` that says what to do instead."""
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
    return dataset.to_list()


# --------------------------------------------------------------------------- the registry
def _tsv(columns: Mapping[str, str | int], **kwargs: Any) -> TsvFormat:
    return TsvFormat(columns=dict(columns), **kwargs)


_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}
_ENTAIL2 = ("entailment", "not_entailment")
_NLI3 = ("entailment", "neutral", "contradiction")
_BOOL = ("False", "True")


def _glue_tsv_splits(fmt: TsvFormat) -> dict[str, OfficialSplit]:
    return _glue_splits({"train": [("train.tsv", fmt)], "dev": [("dev.tsv", fmt)]})


def glue_specs() -> list[BenchmarkSpec]:
    mnli_tsv = _tsv({"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"})
    mnli_jsonl = JsonlFormat({"premise": "premise", "hypothesis": "hypothesis", "label": "label"})
    return [
        BenchmarkSpec(
            name="cola",
            benchmark="glue",
            hub_config="cola",
            local_dir="glue/CoLA",
            source_fields=("sentence",),
            metric_names=("matthews",),
            protocol="small",
            splits=_glue_tsv_splits(_tsv({"sentence": 3, "label": 1}, header=False)),
            label_kind="index",
            label_words=("unacceptable", "acceptable"),
        ),
        BenchmarkSpec(
            name="sst2",
            benchmark="glue",
            hub_config="sst2",
            local_dir="glue/SST-2",
            source_fields=("sentence",),
            metric_names=("accuracy",),
            protocol="large",
            splits=_glue_tsv_splits(_tsv({"sentence": "sentence", "label": "label"})),
            label_kind="index",
            label_words=("negative", "positive"),
        ),
        BenchmarkSpec(
            name="mrpc",
            benchmark="glue",
            hub_config="mrpc",
            local_dir="glue/MRPC",
            source_fields=("sentence1", "sentence2"),
            metric_names=("f1", "accuracy"),
            protocol="small",
            splits=_glue_tsv_splits(
                _tsv({"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}, encoding="utf-8-sig")
            ),
            label_kind="index",
            label_words=("not_equivalent", "equivalent"),
        ),
        BenchmarkSpec(
            name="qqp",
            benchmark="glue",
            hub_config="qqp",
            local_dir="glue/QQP",
            source_fields=("question1", "question2"),
            metric_names=("f1", "accuracy"),
            protocol="large",
            splits=_glue_tsv_splits(
                _tsv({"question1": "question1", "question2": "question2", "label": "is_duplicate"})
            ),
            label_kind="index",
            label_words=("not_duplicate", "duplicate"),
        ),
        BenchmarkSpec(
            name="stsb",
            benchmark="glue",
            hub_config="stsb",
            local_dir="glue/STS-B",
            source_fields=("sentence1", "sentence2"),
            metric_names=("pearson", "spearman"),
            protocol="small",
            splits=_glue_tsv_splits(_tsv({"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"})),
            label_kind="score",
            label_words=(),
            target_range=(0.0, 5.0),
        ),
        BenchmarkSpec(
            name="mnli",
            benchmark="glue",
            hub_config="mnli",
            local_dir="glue/MNLI",
            source_fields=("premise", "hypothesis"),
            metric_names=("accuracy",),
            protocol="mnli",
            splits={
                "train": OfficialSplit("train", (("train.tsv", mnli_tsv), ("train.jsonl", mnli_jsonl))),
                "dev": OfficialSplit(
                    "validation_matched",
                    (("dev_matched.tsv", mnli_tsv), ("dev.jsonl", mnli_jsonl), ("dev_matched.jsonl", mnli_jsonl)),
                ),
                "dev_mismatched": OfficialSplit(
                    "validation_mismatched", (("dev_mismatched.tsv", mnli_tsv), ("dev_mismatched.jsonl", mnli_jsonl))
                ),
            },
            label_kind="word",
            label_words=_NLI3,
        ),
        BenchmarkSpec(
            name="qnli",
            benchmark="glue",
            hub_config="qnli",
            local_dir="glue/QNLI",
            source_fields=("question", "sentence"),
            metric_names=("accuracy",),
            protocol="large",
            splits=_glue_tsv_splits(_tsv({"question": "question", "sentence": "sentence", "label": "label"})),
            label_kind="word",
            label_words=_ENTAIL2,
        ),
        BenchmarkSpec(
            name="rte",
            benchmark="glue",
            hub_config="rte",
            local_dir="glue/RTE",
            source_fields=("sentence1", "sentence2"),
            metric_names=("accuracy",),
            protocol="small",
            splits=_glue_tsv_splits(_tsv(_PAIR)),
            label_kind="word",
            label_words=_ENTAIL2,
        ),
        BenchmarkSpec(
            name="wnli",
            benchmark="glue",
            hub_config="wnli",
            local_dir="glue/WNLI",
            source_fields=("sentence1", "sentence2"),
            metric_names=("accuracy",),
            protocol="small",
            splits=_glue_tsv_splits(_tsv(_PAIR)),
            label_kind="index",
            label_words=("not_entailment", "entailment"),
        ),
    ]


def superglue_specs() -> list[BenchmarkSpec]:
    s = _superglue_splits()
    wsc_spans = ("span1_index", "span1_text", "span2_index", "span2_text")
    return [
        BenchmarkSpec(
            name="boolq",
            benchmark="superglue",
            hub_config="boolq",
            local_dir="superglue/BoolQ",
            source_fields=("question", "passage"),
            metric_names=("accuracy",),
            protocol="small",
            splits=s,
            label_kind="bool",
            label_words=_BOOL,
        ),
        BenchmarkSpec(
            name="cb",
            benchmark="superglue",
            hub_config="cb",
            local_dir="superglue/CB",
            source_fields=("premise", "hypothesis"),
            metric_names=("accuracy", "macro_f1"),
            protocol="small",
            splits=s,
            label_kind="word",
            label_words=("entailment", "contradiction", "neutral"),
        ),
        BenchmarkSpec(
            name="copa",
            benchmark="superglue",
            hub_config="copa",
            local_dir="superglue/COPA",
            source_fields=("premise", "choice1", "choice2", "question"),
            metric_names=("accuracy",),
            protocol="small",
            splits=s,
            label_kind="index",
            label_words=("choice1", "choice2"),
        ),
        BenchmarkSpec(
            name="multirc",
            benchmark="superglue",
            hub_config="multirc",
            local_dir="superglue/MultiRC",
            source_fields=("question", "answer", "paragraph"),
            metric_names=("f1a", "em"),
            protocol="small",
            splits=s,
            label_kind="index",
            label_words=_BOOL,
        ),
        BenchmarkSpec(
            name="superglue_rte",
            benchmark="superglue",
            hub_config="rte",
            local_dir="superglue/RTE",
            source_fields=("premise", "hypothesis"),
            metric_names=("accuracy",),
            protocol="small",
            splits=s,
            label_kind="word",
            label_words=_ENTAIL2,
        ),
        BenchmarkSpec(
            name="wic",
            benchmark="superglue",
            hub_config="wic",
            local_dir="superglue/WiC",
            source_fields=("sentence1", "sentence2", "word"),
            metric_names=("accuracy",),
            protocol="small",
            splits=s,
            label_kind="bool",
            label_words=_BOOL,
            extra_fields=("start1", "end1", "start2", "end2"),
        ),
        BenchmarkSpec(
            name="wsc",
            benchmark="superglue",
            hub_config="wsc.fixed",
            local_dir="superglue/WSC",
            source_fields=("text",),
            metric_names=("accuracy",),
            protocol="small",
            splits=s,
            label_kind="bool",
            label_words=_BOOL,
            extra_fields=wsc_spans,
        ),
    ]


TASK_CLASSES: dict[str, type[BenchmarkTask]] = {
    "copa": CopaTask,
    "multirc": MultiRCTask,
    "wic": WiCTask,
    "wsc": WSCTask,
}
GLUE_TASKS: tuple[str, ...] = tuple(spec.name for spec in glue_specs())
SUPERGLUE_TASKS: tuple[str, ...] = tuple(spec.name for spec in superglue_specs())
#: The paper's eight GLUE tasks.
PAPER_GLUE_TASKS: tuple[str, ...] = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")


def builtin_tasks() -> list[BenchmarkTask]:
    """Every GLUE and SuperGLUE task (the task catalogue of :mod:`pha_lightning.data.tasks` asks for them)."""
    return [TASK_CLASSES.get(spec.name, BenchmarkTask)(spec) for spec in (*glue_specs(), *superglue_specs())]
