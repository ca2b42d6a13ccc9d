"""The one task schema: :class:`TaskSpec`, for the built-in benchmarks and users' own tasks alike.

A spec is data: where the rows are (``files`` or ``hub``), which fields are the inputs and the
label, the label space, the metrics and the text-to-text template; how the splits come about (a
benchmark's official ``protocol``, or splits carved from what is given); and, for the few tasks
that need code, a named ``kind`` (COPA, MultiRC, WiC, WSC: :mod:`pha_lightning.data.kinds`).
:func:`parse_spec` checks a spec once, when the catalogue (:mod:`pha_lightning.data.catalog`)
reads it. The built-in GLUE/SuperGLUE tasks are spec files shipped in the package
(``pha_lightning/data/builtin/*.yaml``). A model stores each user task's :meth:`TaskSpec.portable`
part (no file paths), so checkpoints and bundles serve them without the spec file. docs/data.md
("Your own tasks", "Built-in tasks as specs") describes every key.
"""

from __future__ import annotations

import csv
import math
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from pha_lightning.data.tasks import SPLITS
from pha_lightning.errors import ConfigError

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
SOURCE_KEYS: tuple[str, ...] = (
    *("files", "hub", "format", "encoding", "quoting", "columns", "split_column", "split"),
    *("column_map", "benchmark"),
)
#: A benchmark's official split protocol (docs/data.md): ``small`` halves dev into validation and
#: test; ``large`` draws validation from train and tests on dev; ``mnli`` validates on the
#: mismatched dev set and tests on the matched one.
Protocol = Literal["small", "large", "mnli"]
#: The official splits a protocol draws from: the keys of ``files`` and ``hub.splits`` of such a spec.
OFFICIAL_SPLITS: tuple[str, ...] = ("train", "dev", "dev_mismatched")
#: Tasks whose inputs or records need code (:mod:`pha_lightning.data.kinds`).
Kind = Literal["copa", "multirc", "wic", "wsc"]
#: How a benchmark's files write a label: a class index, a ``meanings`` word, a boolean, a score.
LabelEncoding = Literal["index", "word", "bool", "score"]
#: A record's ``idx``: its position in the split (GLUE) or the file's own ``idx`` (SuperGLUE).
Benchmark = Literal["glue", "superglue"]
#: Metrics that need a kind's code (MultiRC's grouped ones).
KIND_METRICS: dict[str, tuple[str, ...]] = {"multirc": ("f1a", "em")}
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
        text = label_text(value)
        return next((split for split, values in self.values.items() if text in values), None)


def label_text(value: Any) -> str:
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
    files: Mapping[str, str | tuple[str, ...]] | None = None
    hub: HubSource | None = None
    format: str | None = None
    encoding: str = "utf-8"
    quoting: str | None = None
    columns: tuple[str, ...] | None = None
    split_column: SplitColumn | None = None
    split: Carve | None = None
    #: The keys of the built-in benchmarks (docs/data.md, "Built-in tasks as specs").
    protocol: Protocol | None = None
    benchmark: Benchmark | None = None
    kind: Kind | None = None
    label_encoding: LabelEncoding | None = None
    meanings: tuple[str, ...] | None = None
    keep: tuple[str, ...] | None = None
    column_map: Mapping[str, Mapping[str, str]] | None = None

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
            out[f.name] = plain(value)
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

    @property
    def paths(self) -> list[str]:
        """Every file the spec names (each candidate of an official split)."""
        listed = (self.files or {}).values()
        return [path for value in listed for path in ((value,) if isinstance(value, str) else value)]

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


def plain(value: Any) -> Any:
    """Plain YAML data: mappings as dicts, tuples as lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
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
    kind = _choice(name, "kind", raw.get("kind"), get_args(Kind))
    inputs = _strings(name, "inputs", raw["inputs"], (1, None) if kind else (1, 2))
    label = raw.get("label", "label")
    if not isinstance(label, str) or not label:
        raise _fail(name, f"label must be a field name, got {label!r}")
    if label in inputs:
        raise _fail(name, f"the label field {label!r} is also an input")
    protocol = _choice(name, "protocol", raw.get("protocol"), get_args(Protocol))
    labels, regression = _label_space(name, raw, protocol is not None)
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
        valid = (SCORE_METRICS if regression else CLASS_METRICS) + KIND_METRICS.get(str(kind), ())
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
        files=_files(name, raw.get("files"), OFFICIAL_SPLITS if protocol else FILE_SPLITS),
        hub=_hub(name, raw.get("hub"), OFFICIAL_SPLITS if protocol else SPLITS),
        format=_choice(name, "format", raw.get("format"), FORMATS),
        encoding=_encoding(name, raw.get("encoding", "utf-8")),
        quoting=_choice(name, "quoting", raw.get("quoting"), tuple(QUOTING)),
        columns=None if raw.get("columns") is None else _strings(name, "columns", raw["columns"]),
        split_column=_split_column(name, raw.get("split_column")),
        split=_carve(name, raw.get("split")),
        protocol=protocol,
        kind=kind,
        **_benchmark_keys(name, raw, protocol, inputs),
    )
    if spec.files is not None and spec.hub is not None and protocol is None:
        raise _fail(name, "give files or hub, not both (a benchmark with a protocol may give both: data.source picks)")
    for path in spec.paths:
        spec.file_format(path)  # a suffix that names no format: now, not at loading
    _check_file_layout(spec)
    if spec.split is not None and spec.has_source and not spec_carves(spec):
        raise _fail(name, "split says how to carve missing splits, but train, validation and test are all given")
    return spec


def _label_space(
    name: str, raw: Mapping[str, Any], official: bool
) -> tuple[tuple[str, ...] | None, tuple[float, float] | None]:
    labels, regression = raw.get("labels"), raw.get("regression")
    if labels is not None and regression is not None:
        raise _fail(name, "give labels (the classes) or regression: [low, high] (a score), not both")
    if official and labels is not None:
        raise _fail(name, "a benchmark with a protocol names its classes by meanings (its classes are their indices)")
    if labels is None and regression is None and official:
        return None, None  # the classes are the indices of meanings
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
    mapping = {label_text(key): value for key, value in labels.items()}
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
        values[split] = tuple(label_text(v) for v in listed)
    if "train" not in values:
        raise _fail(name, f"split_column needs the values of train, got {sorted(values)}")
    seen = [v for listed in values.values() for v in listed]
    twice = sorted({v for v in seen if seen.count(v) > 1})
    if twice:
        raise _fail(name, f"split_column puts the values {twice} in more than one split: {plain(values)}")
    return SplitColumn(raw["name"], values)


def _check_file_layout(spec: TaskSpec) -> None:
    """``columns`` name a header-less csv/tsv file's fields (every field the spec reads among them);
    ``split_column`` splits one file."""
    if spec.columns is not None:
        if spec.files is None or any(spec.file_format(p) not in ("csv", "tsv") for p in spec.paths):
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


def _files(name: str, files: Any, splits: tuple[str, ...]) -> dict[str, str | tuple[str, ...]] | None:
    """``files``: split → path; with a protocol, official split → path or list of candidate paths
    (the first that exists is read: MNLI's dev set comes as a TSV or as JSON lines)."""
    if files is None:
        return None
    if isinstance(files, str):
        files = {"all": files}
    if not isinstance(files, Mapping) or not files:
        raise _fail(name, f"files must map splits {list(splits)} to paths, got {files!r}")
    _check_keys(name, "files", files, splits)
    if splits == OFFICIAL_SPLITS:
        listed = {k: tuple(v) if isinstance(v, list) else v for k, v in files.items()}
        bad = {k: v for k, v in listed.items() if not v or not all(isinstance(p, str) and p for p in _paths(v))}
        if bad or "train" not in listed:
            raise _fail(name, f"files must map train (and dev, dev_mismatched) to a path or paths, got {files!r}")
        return listed
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


def _paths(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def _hub(name: str, hub: Any, keys: tuple[str, ...]) -> HubSource | None:
    if hub is None:
        return None
    if isinstance(hub, str):
        hub = {"path": hub}
    if not isinstance(hub, Mapping) or not isinstance(hub.get("path"), str):
        raise _fail(name, f"hub must be {{path, name, revision, splits}} with a path, got {hub!r}")
    _check_keys(name, "hub", hub, [f.name for f in fields(HubSource)])
    splits = hub.get("splits", DEFAULT_HUB_SPLITS)
    if not isinstance(splits, Mapping) or not splits or not all(isinstance(v, str) for v in splits.values()):
        raise _fail(name, f"hub.splits must map {list(keys)} to the dataset's split names, got {splits!r}")
    _check_keys(name, "hub.splits", splits, keys)
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


def _benchmark_keys(name: str, raw: Mapping[str, Any], protocol: str | None, inputs: tuple[str, ...]) -> dict[str, Any]:
    """The keys a benchmark with an official protocol gives (the built-in GLUE/SuperGLUE specs):
    how its files write labels and what each class means, the fields it keeps besides the inputs,
    and which file columns hold which fields, by format."""
    given = [key for key in ("kind", "benchmark", "label_encoding", "meanings", "keep", "column_map") if key in raw]
    if protocol is None:
        if given:
            raise _fail(name, f"{given} describe a benchmark's official files: give them with a protocol")
        return {}
    out: dict[str, Any] = {
        "benchmark": _choice(name, "benchmark", raw.get("benchmark", "superglue"), get_args(Benchmark)),
        "label_encoding": _choice(name, "label_encoding", raw.get("label_encoding"), get_args(LabelEncoding)),
        "keep": None if raw.get("keep") is None else _strings(name, "keep", raw["keep"]),
        "meanings": None if raw.get("meanings") is None else _strings(name, "meanings", raw["meanings"], (2, None)),
    }
    if out["label_encoding"] is None:
        raise _fail(name, f"a benchmark needs label_encoding, one of {list(get_args(LabelEncoding))}")
    if (out["meanings"] is None) != (raw.get("regression") is not None):
        raise _fail(name, "a benchmark gives meanings (its classes, in class-id order) or regression, one of them")
    maps = raw.get("column_map") or {}
    if not isinstance(maps, Mapping) or not all(isinstance(m, Mapping) for m in maps.values()):
        raise _fail(name, f"column_map must map a format to {{field: file column}}, got {maps!r}")
    _check_keys(name, "column_map", maps, FORMATS)
    fields_read = (*inputs, *(out["keep"] or ()), "label")
    for fmt, columns in maps.items():
        _check_keys(name, f"column_map.{fmt}", columns, fields_read)
    out["column_map"] = {fmt: dict(columns) for fmt, columns in maps.items()} or None
    return out


def spec_carves(spec: TaskSpec) -> tuple[str, ...]:
    """The splits carved from train (or from ``all``) because no file or hub split gives them."""
    if spec.protocol is not None:
        return ()
    if spec.split_column is not None:
        given = set(spec.split_column.values)
    elif spec.files is not None:
        given = set(spec.files)
    else:
        given = set(spec.hub.splits if spec.hub else ())
    if "all" in given:
        return ("validation", "test")
    return tuple(split for split in ("validation", "test") if split not in given)


#: Data settings that name places on the machine that ran (what it read, where it cached): a bundle,
#: which travels to other machines, does not record them.
MACHINE_PATHS: tuple[str, ...] = ("data_dir", "cache_dir", "predict_file")


def portable_data_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """The data settings of a run that hold on any machine (a bundle's): without :data:`MACHINE_PATHS`
    and without the private keys a ``save_hyperparameters`` record carries (``_instantiator``)."""
    return {key: value for key, value in data.items() if not key.startswith("_") and key not in MACHINE_PATHS}
