"""Tasks declared in configuration (``data.task_specs``): a user's own files or any hub dataset.

A spec is data: where the rows are (``files`` or ``hub``), which fields are the inputs and the
label, the label space, the metrics and the text-to-text template. :func:`parse_spec` checks it
when the configuration is parsed; :class:`SpecTask` reads its rows with ``datasets`` (its csv,
json and parquet builders and their cache), maps labels, and carves missing splits with a seeded,
disjoint draw. A model stores each task's :meth:`TaskSpec.portable` part (no file paths), so
checkpoints and bundles serve spec tasks without the spec file. docs/data.md ("Your own tasks")
describes every key; the README walks from a CSV file to predictions.
"""

from __future__ import annotations

import csv
import math
import os
import random
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from pha_lightning.data.glue import DATA_DIR_ENV, load_hub_split
from pha_lightning.data.tasks import SPLITS, Task, available_tasks, check_split, get_task
from pha_lightning.errors import ConfigError, DataError
from pha_lightning.validation import undecodable_bytes

#: File formats by name, and the suffixes they are inferred from.
FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "json", "parquet")
SUFFIX_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
}
#: ``quoting`` of csv/tsv files: ``minimal`` honours quote characters, ``none`` reads them as text
#: (the default for tsv, as in GLUE's files, where quotes occur inside sentences).
QUOTING: dict[str, int] = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}
#: The keys of ``files``: one file per split, or ``all`` for one file to carve.
FILE_SPLITS: tuple[str, ...] = (*SPLITS, "all")
#: Spec keys that say where the rows are; a model keeps the others (:meth:`TaskSpec.portable`).
SOURCE_KEYS: tuple[str, ...] = ("files", "hub", "format", "encoding", "quoting", "columns", "split_column", "split")
#: The metrics a spec may ask for (MultiRC's grouped ``f1a``/``em`` need code), by label space.
CLASS_METRICS: tuple[str, ...] = ("accuracy", "f1", "macro_f1", "matthews")
SCORE_METRICS: tuple[str, ...] = ("pearson", "spearman")
#: A hub dataset's split names by default.
DEFAULT_HUB_SPLITS: dict[str, str] = {split: split for split in SPLITS}
#: Share of the rows carved into each missing split by default.
DEFAULT_CARVE: float = 0.1


def _fail(task: str, problem: str) -> ConfigError:
    return ConfigError(f"task spec {task!r}: {problem}")


def _check_keys(task: str, what: str, raw: Mapping[str, Any], valid: Iterable[str]) -> None:
    valid = list(valid)
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise _fail(task, f"unknown {what} keys {unknown}; valid: {valid}")


def _strings(task: str, key: str, value: Any, size: tuple[int, int | None] = (1, None)) -> tuple[str, ...]:
    """A non-empty list of distinct strings (``size`` bounds its length)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) and v for v in value):
        raise _fail(task, f"{key} must be a list of non-empty strings, got {value!r}")
    low, high = size
    if len(value) < low or (high is not None and len(value) > high):
        bound = f"{low}" if high == low else f"{low} to {high}" if high else f"at least {low}"
        raise _fail(task, f"{key} must hold {bound} entries, got {len(value)}: {list(value)}")
    if len(set(value)) != len(value):
        raise _fail(task, f"{key} holds duplicates: {list(value)}")
    return tuple(value)


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub: ``splits`` maps train/validation/test to its split names."""

    path: str
    name: str | None = None
    revision: str | None = None
    splits: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_HUB_SPLITS))


@dataclass(frozen=True)
class Carve:
    """How missing splits are carved: a share (0 < x < 1) or a count (an integer >= 1) of the rows."""

    validation: float = DEFAULT_CARVE
    test: float = DEFAULT_CARVE
    seed: int | None = None  # default: data.data_seed

    def size(self, split: str, rows: int) -> int:
        value = getattr(self, split)
        return value if isinstance(value, int) else round(rows * value)


@dataclass(frozen=True)
class SplitColumn:
    """Rows assigned to splits by a field of the file: ``values`` maps each split to the field's values
    that put a row there (as text); a split it does not name is carved from train."""

    name: str
    values: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {split: (split,) for split in SPLITS})

    def split_of(self, value: Any) -> str | None:
        """The split a field value puts its row in, ``None`` when it names none."""
        text = _label_text(value)
        return next((split for split, values in self.values.items() if text in values), None)


def _label_text(value: Any) -> str:
    """A file value as the text a spec names it by: a JSON ``3.0`` is ``3``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


@dataclass(frozen=True)
class TaskSpec:
    """One task declared in configuration; see docs/data.md ("Your own tasks") for every key."""

    name: str
    inputs: tuple[str, ...]
    label: str = "label"
    labels: tuple[str, ...] | Mapping[str, str] | None = None
    regression: tuple[float, float] | None = None
    label_words: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    template: str | None = None
    files: Mapping[str, str] | None = None
    hub: HubSource | None = None
    format: str | None = None
    encoding: str = "utf-8"
    quoting: str | None = None
    columns: tuple[str, ...] | None = None
    split_column: SplitColumn | None = None
    split: Carve | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (it parses back to an equal spec); unset keys are left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name == "encoding" and value == "utf-8"):
                continue
            if isinstance(value, SplitColumn):
                value = {"name": value.name, **value.values}
            elif isinstance(value, (HubSource, Carve)):
                value = {k.name: getattr(value, k.name) for k in fields(value) if getattr(value, k.name) is not None}
            out[f.name] = _plain(value)
        return out

    @property
    def classes(self) -> tuple[str, ...] | None:
        """The class names, in order (``labels`` as a list, or the values of its mapping)."""
        if isinstance(self.labels, Mapping):
            return tuple(dict.fromkeys(self.labels.values()))
        return self.labels

    def portable(self) -> dict[str, Any]:
        """What a model keeps: everything but where the rows are (no file paths, no hub)."""
        return {k: v for k, v in self.to_dict().items() if k not in SOURCE_KEYS}

    @property
    def has_source(self) -> bool:
        return self.files is not None or self.hub is not None

    def file_format(self, path: str) -> str:
        if self.format is not None:
            return self.format
        suffix = Path(path).suffix.lower()
        if suffix not in SUFFIX_FORMATS:
            raise _fail(
                self.name,
                f"cannot infer the format of {path!r} from its suffix; give format (one of {list(FORMATS)})",
            )
        return SUFFIX_FORMATS[suffix]


def _plain(value: Any) -> Any:
    """Plain YAML data: mappings as dicts, tuples as lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


# ------------------------------------------------------------------------------------------ parsing
def parse_spec(raw: Any) -> TaskSpec:
    """A checked :class:`TaskSpec` from its mapping; a bad key or value names the task and what is valid."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a task spec must be a mapping with at least name and inputs, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or name != name.strip() or "/" in name:
        raise ConfigError(f"a task spec needs a name (a non-empty string without '/' or edge spaces), got {name!r}")
    _check_keys(name, "spec", raw, [f.name for f in fields(TaskSpec)])
    if "inputs" not in raw:
        raise _fail(name, "inputs (one or two field names) is missing")
    inputs = _strings(name, "inputs", raw["inputs"], (1, 2))
    label = raw.get("label", "label")
    if not isinstance(label, str) or not label:
        raise _fail(name, f"label must be a field name, got {label!r}")
    if label in inputs:
        raise _fail(name, f"the label field {label!r} is also an input")
    labels, regression = _label_space(name, raw)
    label_words = None
    if raw.get("label_words") is not None:
        if labels is None:
            raise _fail(
                name,
                "label_words need labels (a regression task's targets are its rounded scores; one "
                "word per label needs the labels in order)",
            )
        classes = labels if not isinstance(labels, Mapping) else tuple(dict.fromkeys(labels.values()))
        label_words = _strings(name, "label_words", raw["label_words"], (len(classes), len(classes)))
    metrics = None
    if raw.get("metrics") is not None:
        metrics = _strings(name, "metrics", raw["metrics"])
        valid = SCORE_METRICS if regression else CLASS_METRICS
        wrong = [metric for metric in metrics if metric not in valid]
        if wrong:
            kind = "a score" if regression else "classes"
            raise _fail(name, f"unknown metrics {wrong} for {kind}; valid: {list(valid)}")
    spec = TaskSpec(
        name=name,
        inputs=inputs,
        label=label,
        labels=labels,
        regression=regression,
        label_words=label_words,
        metrics=metrics,
        template=_template(name, raw.get("template"), inputs),
        files=_files(name, raw.get("files")),
        hub=_hub(name, raw.get("hub")),
        format=_choice(name, "format", raw.get("format"), FORMATS),
        encoding=_encoding(name, raw.get("encoding", "utf-8")),
        quoting=_choice(name, "quoting", raw.get("quoting"), tuple(QUOTING)),
        columns=None if raw.get("columns") is None else _strings(name, "columns", raw["columns"]),
        split_column=_split_column(name, raw.get("split_column")),
        split=_carve(name, raw.get("split")),
    )
    if spec.files is not None and spec.hub is not None:
        raise _fail(name, "give files or hub, not both")
    if spec.files is not None:
        for path in spec.files.values():
            spec.file_format(path)  # a suffix that names no format: now, not at loading
    _check_file_layout(spec)
    if spec.split is not None and spec.has_source and not spec_carves(spec):
        raise _fail(name, "split says how to carve missing splits, but train, validation and test are all given")
    return spec


def _label_space(name: str, raw: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, tuple[float, float] | None]:
    labels, regression = raw.get("labels"), raw.get("regression")
    if labels is not None and regression is not None:
        raise _fail(name, "give labels (the classes) or regression: [low, high] (a score), not both")
    if labels is None and regression is None:
        if raw.get("files") is None and raw.get("hub") is None:
            raise _fail(name, "give labels (the classes) or regression: [low, high]; without files none are read")
        return None, None  # read from the training rows: with_file_labels
    if isinstance(labels, Mapping):
        return _label_map(name, labels), None
    if labels is not None:
        return _strings(name, "labels", [str(v) if isinstance(v, int) else v for v in labels], (2, None)), None
    ok = (
        isinstance(regression, Sequence)
        and len(regression) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in regression)
        and regression[0] < regression[1]
    )
    if not ok:
        raise _fail(name, f"regression must be [low, high] with low < high, got {regression!r}")
    return None, (float(regression[0]), float(regression[1]))


def _label_map(name: str, labels: Mapping[Any, Any]) -> dict[str, str]:
    """``labels`` as a mapping from the file's values to class names (``{1: negative, 2: positive}``)."""
    keys = [key for key in labels if isinstance(key, bool) or not isinstance(key, (int, str)) or key == ""]
    if keys:
        raise _fail(name, f"labels maps the file's values (integers or texts) to class names; bad values {keys}")
    mapping = {_label_text(key): value for key, value in labels.items()}
    if len(mapping) != len(labels):
        raise _fail(name, f"labels maps one file value twice: {dict(labels)}")
    classes = _strings(name, "labels", list(dict.fromkeys(mapping.values())), (2, None))
    crossed = sorted(key for key, value in mapping.items() if key in classes and key != value)
    if crossed:
        raise _fail(name, f"labels maps the file values {crossed} to other classes than those they name: {mapping}")
    return mapping


def _split_column(name: str, raw: Any) -> SplitColumn | None:
    """``split_column``: a field name (its values are the split names), or ``{name, train, validation,
    test}`` with the values (one or a list) that put a row in each split."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise _fail(name, f"split_column must be a field name or {{name, train, validation, test}}, got {raw!r}")
    _check_keys(name, "split_column", raw, ("name", *SPLITS))
    given = {split: raw[split] for split in SPLITS if split in raw}
    if not given:
        return SplitColumn(raw["name"])
    values: dict[str, tuple[str, ...]] = {}
    for split, value in given.items():
        listed = value if isinstance(value, list) else [value]
        if not listed or not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in listed):
            raise _fail(name, f"split_column.{split} must be a value or a list of values, got {value!r}")
        values[split] = tuple(_label_text(v) for v in listed)
    if "train" not in values:
        raise _fail(name, f"split_column needs the values of train, got {sorted(values)}")
    seen = [v for listed in values.values() for v in listed]
    twice = sorted({v for v in seen if seen.count(v) > 1})
    if twice:
        raise _fail(name, f"split_column puts the values {twice} in more than one split: {_plain(values)}")
    return SplitColumn(raw["name"], values)


def _check_file_layout(spec: TaskSpec) -> None:
    """``columns`` name a header-less csv/tsv file's fields (every field the spec reads among them);
    ``split_column`` splits one file."""
    if spec.columns is not None:
        if spec.files is None or any(spec.file_format(p) not in ("csv", "tsv") for p in spec.files.values()):
            raise _fail(
                spec.name, "columns name the fields of header-less csv/tsv files; give them only with such files"
            )
        wanted = [*spec.inputs, spec.label, *([spec.split_column.name] if spec.split_column else [])]
        missing = [f for f in wanted if f not in spec.columns]
        if missing:
            raise _fail(spec.name, f"the fields {missing} are not among columns {list(spec.columns)}")
    if spec.split_column is not None and (spec.files is None or "all" not in spec.files):
        raise _fail(
            spec.name,
            f"split_column splits one file: give it as files: {{all: <path>}}, got {spec.files or spec.hub!r}",
        )


def _template(name: str, template: Any, inputs: tuple[str, ...]) -> str | None:
    if template is None:
        return None
    if not isinstance(template, str) or not template.strip():
        raise _fail(name, f"template must be a text with {{field}} placeholders, got {template!r}")
    try:
        used = [part[1] for part in string.Formatter().parse(template) if part[1] is not None]
    except ValueError as err:
        raise _fail(name, f"template {template!r} is not a valid format string ({err})") from None
    wrong = sorted({field for field in used if field not in inputs})
    if wrong or not used:
        raise _fail(name, f"template {template!r} must use input fields {list(inputs)} as {{field}}; found {used}")
    return template


def _files(name: str, files: Any) -> dict[str, str] | None:
    if files is None:
        return None
    if isinstance(files, str):
        files = {"all": files}
    if not isinstance(files, Mapping) or not files:
        raise _fail(name, f"files must map splits {list(FILE_SPLITS)} to paths, got {files!r}")
    _check_keys(name, "files", files, FILE_SPLITS)
    if "all" in files and len(files) > 1:
        raise _fail(
            name, f"files: 'all' is one file to carve every split from; it excludes {sorted(set(files) - {'all'})}"
        )
    if "all" not in files and "train" not in files:
        raise _fail(name, f"files needs a train file (or all), got {sorted(files)}")
    bad = {k: v for k, v in files.items() if not isinstance(v, str) or not v}
    if bad:
        raise _fail(name, f"files must be paths, got {bad}")
    return dict(files)


def _hub(name: str, hub: Any) -> HubSource | None:
    if hub is None:
        return None
    if isinstance(hub, str):
        hub = {"path": hub}
    if not isinstance(hub, Mapping) or not isinstance(hub.get("path"), str):
        raise _fail(name, f"hub must be {{path, name, revision, splits}} with a path, got {hub!r}")
    _check_keys(name, "hub", hub, [f.name for f in fields(HubSource)])
    splits = hub.get("splits", DEFAULT_HUB_SPLITS)
    if not isinstance(splits, Mapping) or not splits or not all(isinstance(v, str) for v in splits.values()):
        raise _fail(name, f"hub.splits must map {list(SPLITS)} to the dataset's split names, got {splits!r}")
    _check_keys(name, "hub.splits", splits, SPLITS)
    if "train" not in splits:
        raise _fail(name, f"hub.splits needs train, got {sorted(splits)}")
    for key in ("name", "revision"):
        if hub.get(key) is not None and not isinstance(hub[key], str):
            raise _fail(name, f"hub.{key} must be a string, got {hub[key]!r}")
    return HubSource(hub["path"], hub.get("name"), hub.get("revision"), dict(splits))


def _choice(name: str, key: str, value: Any, valid: tuple[str, ...]) -> str | None:
    if value is not None and value not in valid:
        raise _fail(name, f"unknown {key} {value!r}; valid: {list(valid)}")
    return value


def _encoding(name: str, encoding: Any) -> str:
    import codecs

    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise _fail(name, f"unknown encoding {encoding!r} (e.g. utf-8, utf-8-sig, latin-1)") from None
    return encoding


def _carve(name: str, split: Any) -> Carve | None:
    if split is None:
        return None
    if not isinstance(split, Mapping):
        raise _fail(name, f"split must be {{validation, test, seed}}, got {split!r}")
    _check_keys(name, "split", split, [f.name for f in fields(Carve)])
    for key in ("validation", "test"):
        value = split.get(key, DEFAULT_CARVE)
        share = isinstance(value, float) and 0 < value < 1
        count = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if not (share or count):
            raise _fail(name, f"split.{key} must be a share in (0, 1) or a count >= 1, got {value!r}")
    seed = split.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _fail(name, f"split.seed must be an integer >= 0, got {seed!r}")
    return Carve(split.get("validation", DEFAULT_CARVE), split.get("test", DEFAULT_CARVE), seed)


def spec_carves(spec: TaskSpec) -> tuple[str, ...]:
    """The splits carved from train (or from ``all``) because no file or hub split gives them."""
    if spec.split_column is not None:
        given = set(spec.split_column.values)
    elif spec.files is not None:
        given = set(spec.files)
    else:
        given = set(spec.hub.splits if spec.hub else ())
    if "all" in given:
        return ("validation", "test")
    return tuple(split for split in ("validation", "test") if split not in given)


def read_spec_list(value: Any) -> list[Any]:
    """``data.task_specs`` as a list: given inline, or the path of a YAML file that holds the list."""
    if value is None:
        return []
    if isinstance(value, str):
        path = Path(value).expanduser()
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"data.task_specs: the file {value!r} does not exist") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"data.task_specs: the file {value!r} cannot be read as YAML: {err}") from None
        return _listed_specs(loaded, value)
    if isinstance(value, Sequence):
        return list(value)
    raise ConfigError(f"data.task_specs must be a list of task specs or the path of a YAML file, got {value!r}")


def _listed_specs(loaded: Any, path: str) -> list[Any]:
    """The specs of a spec file in any of its shapes: a list, ``task_specs: [...]``, or a
    configuration (``data: {task_specs: [...]}``, as ``pha fit --config`` reads)."""
    if isinstance(loaded, Mapping) and isinstance(loaded.get("data"), Mapping):
        loaded = loaded["data"]
    if isinstance(loaded, Mapping) and "task_specs" in loaded:
        loaded = loaded["task_specs"]
    if not isinstance(loaded, list):
        raise ConfigError(
            f"data.task_specs: the file {path!r} holds no task specs; give a list of specs, "
            "task_specs: [...], or a configuration with data: {task_specs: [...]}"
        )
    return loaded


def parse_specs(value: Any, data_dir: str | None = None) -> list[TaskSpec]:
    """Every spec of ``data.task_specs``, checked: names unique and not those of built-in tasks; a spec
    without labels or regression gets the labels of its training rows (:func:`with_file_labels`)."""
    specs = [parse_spec(raw) for raw in read_spec_list(value)]
    names = [spec.name for spec in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"data.task_specs declares the tasks {twice} more than once")
    check_new_names(names)
    return [with_file_labels(spec, data_dir) for spec in specs]


def with_file_labels(spec: TaskSpec, data_dir: str | None) -> TaskSpec:
    """``spec`` with the label values of its training rows as labels when it gives neither labels nor
    regression: sorted (as numbers when all are integers), so every run reads the same list; a label
    only validation or test rows hold is then an error naming it."""
    if spec.labels is not None or spec.regression is not None:
        return spec
    values = {_label_text(value) for value in SpecTask(spec).train_label_values(data_dir)}
    integers = all(value.lstrip("-").isdigit() for value in values)
    labels = tuple(sorted(values, key=lambda v: (int(v), v) if integers else (0, v)))
    if len(labels) < 2:
        raise DataError(f"task {spec.name!r}: its training rows hold the labels {list(labels)}; a task needs two")
    return replace(spec, labels=labels)


def check_new_names(names: Iterable[str]) -> None:
    """A spec task may not take the name of a built-in (or registered) task."""
    taken = sorted(set(names) & set(available_tasks()))
    if taken:
        raise ConfigError(f"task specs {taken} have the names of built-in tasks; give them other names")


def portable_specs(
    value: Any, tasks: Sequence[str] | None = None, data_dir: str | None = None
) -> list[dict[str, Any]] | None:
    """The part of each spec (of ``tasks``, if given) that a model stores; ``None`` when there is none."""
    specs = [s.portable() for s in parse_specs(value, data_dir) if tasks is None or s.name in tasks]
    return specs or None


#: Data settings that name places on the machine that ran (what it read, where it cached): a bundle,
#: which travels to other machines, does not record them.
MACHINE_PATHS: tuple[str, ...] = ("data_dir", "cache_dir", "predict_file")


def portable_data_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """The data settings of a run that hold on any machine (a bundle's): without :data:`MACHINE_PATHS`
    and without the private keys a ``save_hyperparameters`` record carries (``_instantiator``)."""
    return {key: value for key, value in data.items() if not key.startswith("_") and key not in MACHINE_PATHS}


def resolve_tasks(names: Sequence[str], specs: Iterable[Any] = ()) -> list[Task]:
    """The task objects of ``names``: a spec (a :class:`TaskSpec` or its mapping) or a built-in task."""
    by_name = {s.name: s for s in (s if isinstance(s, TaskSpec) else parse_spec(s) for s in specs)}
    check_new_names(by_name)
    unknown = [n for n in names if n not in by_name and n not in available_tasks()]
    if unknown:
        raise ConfigError(
            f"unknown tasks {unknown}; available tasks: {available_tasks()}"
            + (f", and from data.task_specs: {sorted(by_name)}" if by_name else "")
        )
    return [SpecTask(by_name[n]) if n in by_name else get_task(n) for n in names]


# ------------------------------------------------------------------------------------------ the task
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
        name = self.spec.labels.get(_label_text(value), _label_text(value))
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
        sources = {split: self._read_file(base / path) for split, path in (self.spec.files or {}).items()}
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
                    f"split; valid: {_plain(column.values)} (give split_column: {{name, train, validation, test}})"
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
        rows, _ = self._read_rows(self.base_dir(data_dir) / files.get("train", files.get("all", "")))
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
) -> list[dict]:
    """The ``columns`` of a csv/tsv/json(l)/parquet file as rows, read with ``datasets`` (and cached by it).

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
    return dataset.select_columns(list(dict.fromkeys(columns))).to_list()


def _csv_header(path: Path, delimiter: str, encoding: str, quoting: int) -> list[str]:
    with path.open(encoding=encoding, newline="") as handle:
        return next(csv.reader(handle, delimiter=delimiter, quoting=quoting), [])
