"""The task abstraction (the catalogue of every task by name is :mod:`pha_lightning.data.catalog`).

A task knows how to load its raw records and how to turn one record into model inputs for
either backbone family: a text (pair) for encoder-only models, a ``"<task> field: …"`` source and
a label string for the text-to-text (T5) path. Everything downstream — data module, metrics,
model heads — only talks to this interface: built-in benchmarks and users' tasks are spec files
(:mod:`pha_lightning.data.schema`), and Python-defined tasks are registered with the catalogue.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from pha_lightning.errors import ConfigError

if TYPE_CHECKING:
    from datasets import Dataset

SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: A split's records: dicts in a list, or the rows of a ``datasets`` table (a user's task keeps its rows
#: there: :mod:`pha_lightning.data.tables`); each row a dict as :meth:`Task.encoder_text` and the others read.
Records: TypeAlias = "list[dict] | Dataset"

#: Regression targets of the text-to-text path are rounded to this step (data.md: STS-B uses 0.2;
#: earlier codebases rounded to 0.1 by mistake).
REGRESSION_TARGET_STEP = 0.2
#: The prediction of a generation that parses to no label (NaN: ``-1.0`` is a legitimate regression value).
INVALID = float("nan")


def _reads_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_split(split: str) -> None:
    """Reject a split name that no task provides, listing the valid ones."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")


def format_regression_target(value: float, step: float = REGRESSION_TARGET_STEP) -> str:
    """Print a regression value as a text-to-text target: rounded to the nearest multiple of
    ``step`` (ties upwards: 2.3 → "2.4", 0.1 → "0.2"), one decimal.

    The quotient is first rounded to 6 decimals so that float noise (2.3 / 0.2 = 11.4999…, or a
    float32 score) cannot turn a tie into a round-down; Python's ``round`` would also round ties to
    even, which moves half of STS-B's one-decimal scores down and half up.
    """
    quotient = round(value / step, 6)
    return f"{math.floor(quotient + 0.5) * step:.1f}"


class Task(ABC):
    """One supervised task: its label space, metrics, records, and input/target formatting.

    Subclasses set the class attributes (or instance attributes in ``__init__``) and implement
    :meth:`load_split`. The formatting defaults cover tasks whose records hold their input texts
    under ``source_fields`` and their target under ``"label"``; tasks with other layouts (e.g. a
    marked span, several choices) override the formatting methods.
    """

    name: str
    #: Label strings, which are also the text-to-text targets ("0", "1", …); ``()`` for regression.
    label_names: tuple[str, ...]
    #: Metric names understood by :func:`pha_lightning.training.metrics.build_task_metrics`.
    metric_names: tuple[str, ...]
    #: Record fields holding the input texts, in the order they are presented to the model.
    source_fields: tuple[str, ...]
    #: ``(low, high)`` of a regression target; metrics use it to score an invalid generation.
    target_range: tuple[float, float] | None = None
    #: Whether ``load_splits`` reads files or the hub, so it needs the data module's source
    #: options (``source``, ``data_dir``, ``split_validation_test``, ``data_seed``); tasks that
    #: generate their records (the synthetic suite) leave it False and get no options.
    reads_external_data: bool = False

    @property
    def is_regression(self) -> bool:
        return self.label_names == ()

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes as predictions name them; the text-to-text targets (``label_names``) unless a
        task declares other target words (a spec's ``label_words``)."""
        return self.label_names

    def class_index(self, value: Any) -> int | None:
        """The class a label value names (docs/data.md, "Your own tasks"), ``None`` when it names none:
        a value equal to a class name (or a target word) is that class; an integer (or its digits) is
        a class index only when no class name reads as a number, so that no value is read both ways
        (with labels ``[1, 2, 3]``, ``0`` is no class, not the class at index 0)."""
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # a JSON 3.0 is the label 3
        for names in (self.class_names, self.label_names):
            if str(value) in names:
                return names.index(str(value))
        index = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str) and value.strip().isdigit():
            index = int(value)
        if index is None or not self.indexes_classes or not 0 <= index < len(self.class_names):
            return None
        return index

    @property
    def indexes_classes(self) -> bool:
        """Whether an integer label may index the classes: only when no class name or target word
        reads as a number, which an integer would otherwise be taken for."""
        return not any(_reads_as_number(name) for name in (*self.class_names, *self.label_names))

    def label_space(self) -> str:
        """The label values a classification task accepts, as its errors list them."""
        names = list(self.class_names)
        if self.indexes_classes:
            return f"{names} (or their indices 0..{len(names) - 1})"
        return f"{names} (these labels are numbers: a number names a label, never its position)"

    @property
    def num_labels(self) -> int:
        """Width of the classification head; a regression head has one output."""
        return 1 if self.is_regression else len(self.label_names)

    @abstractmethod
    def load_split(self, split: str, **source_options: object) -> Records:
        """Return the raw records of ``split`` (one of :data:`SPLITS`), as a list or a ``datasets`` table.

        ``source_options`` carries where the data comes from (a data directory, a hub name, …);
        each task reads the options it understands.
        """

    def load_splits(self, splits: Sequence[str], **source_options: object) -> dict[str, Records]:
        """Records of several splits at once; tasks whose splits share files override this to read
        each file only once. The data module always calls this."""
        return {split: self.load_split(split, **source_options) for split in splits}

    def check_sources(self, splits: Sequence[str], **source_options: object) -> None:
        """Raise a DataError naming any file that loading ``splits`` would need and that is missing,
        so a run notices before its first step, not at its test. Tasks that generate their records
        have nothing to check."""

    def source_identity(self, **source_options: object) -> dict | None:
        """What decides this task's records without reading them (its definition, and each file's path,
        size and modification time), for the tokenised-data cache to be found before any row is read;
        ``None`` when the task cannot say (the cache key then digests the records themselves)."""
        return None

    def group_of(self, record: dict) -> int | None:
        """Id of the record's metric group (e.g. MultiRC's question, for exact match), or ``None``.

        The data module stores it as the ``groups`` column of the evaluation batches.
        """
        return None

    def rank_candidates(self) -> tuple[str, ...]:
        """Every valid target string, for rank classification (scoring candidates, no generation).

        Classification: the label strings. Regression: the grid of rounded values over
        ``target_range`` in steps of :data:`REGRESSION_TARGET_STEP` (STS-B: ``"0.0" … "5.0"``).
        """
        if not self.is_regression:
            return self.label_names
        if self.target_range is None:
            raise ConfigError(f"regression task {self.name!r} has no target_range to enumerate candidates from")
        low, high = self.target_range
        steps = round((high - low) / REGRESSION_TARGET_STEP)
        return tuple(
            dict.fromkeys(format_regression_target(low + i * REGRESSION_TARGET_STEP) for i in range(steps + 1))
        )

    def encoder_text(self, record: dict) -> tuple[str, str | None]:
        """Text, or text pair, fed to an encoder-only backbone's tokenizer."""
        texts = [str(record[field]) for field in self.source_fields]
        if len(texts) == 1:
            return texts[0], None
        if len(texts) == 2:
            return texts[0], texts[1]
        raise NotImplementedError(
            f"task {self.name!r} has {len(texts)} source fields {self.source_fields}; "
            "override encoder_text to say how they form a text pair"
        )

    def seq2seq_source(self, record: dict) -> str:
        """``"<task> field1: text1 field2: text2"``, the T5 input format of the paper's code."""
        fields = " ".join(f"{field}: {record[field]}" for field in self.source_fields)
        return f"{self.name} {fields}"

    def target_value(self, record: dict) -> float:
        """Class index or regression value of a record, as a float."""
        return float(record["label"])

    def seq2seq_target(self, record: dict) -> str:
        """Label string of a record; regression values are rounded (see REGRESSION_TARGET_STEP)."""
        value = self.target_value(record)
        if self.is_regression:
            return format_regression_target(value)
        return self.label_names[int(value)]

    def parse_generation(self, text: str) -> float | None:
        """Map a generated string back to a class index or value; ``None`` if it is not valid."""
        text = text.strip()
        if not self.is_regression:
            return float(self.label_names.index(text)) if text in self.label_names else None
        try:
            value = float(text)
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
