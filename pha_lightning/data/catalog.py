"""The task catalogue: every task a command can name, and the one place that reads task specs.

It owns the registry: the built-in tasks (the synthetic suite, and the GLUE/SuperGLUE specs shipped
as package data in ``builtin/*.yaml``), tasks registered from Python (:func:`register_task`) and
users' specs (``data.task_specs``), each parsed once (:func:`parsed`). Every command, the data
module, the model and the training system ask it for tasks by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pha_lightning.data import synthetic
from pha_lightning.data.benchmark import BenchmarkTask
from pha_lightning.data.kinds import KINDS
from pha_lightning.data.schema import TaskSpec, label_text, parse_spec
from pha_lightning.data.spec_task import SpecTask
from pha_lightning.data.tasks import Task
from pha_lightning.errors import ConfigError, DataError

#: The package folder holding one spec file per built-in benchmark task.
BUILTIN_SPECS = "builtin"
#: The paper's eight GLUE tasks.
PAPER_GLUE_TASKS: tuple[str, ...] = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")

_REGISTRY: dict[str, Task] = {}
_BUILTIN: dict[str, Task] = {}
_PARSED: dict[str, TaskSpec] = {}


def builtin_specs() -> list[TaskSpec]:
    """The specs of the built-in benchmark tasks, read from the package's ``builtin/*.yaml``."""
    folder = resources.files("pha_lightning.data").joinpath(BUILTIN_SPECS)
    files = sorted((entry for entry in folder.iterdir() if entry.name.endswith(".yaml")), key=lambda e: e.name)
    return [parse_spec(yaml.safe_load(entry.read_text(encoding="utf-8"))) for entry in files]


def task_of(spec: TaskSpec) -> Task:
    """The task object of a spec: a benchmark's official protocol (with its kind's code), or a user's carving."""
    if spec.protocol is None:
        return SpecTask(spec)
    return KINDS.get(spec.kind or "", BenchmarkTask)(spec)


def parsed(raw: Any) -> TaskSpec:
    """The checked spec of a raw mapping, parsed once per distinct spec (commands ask several times)."""
    key = json.dumps(raw, sort_keys=True, default=repr)
    if key not in _PARSED:
        _PARSED[key] = parse_spec(raw)
    return _PARSED[key]


def _load_builtin_tasks() -> None:
    """Fill the catalogue with the built-in tasks, once."""
    if _BUILTIN:
        return
    for task in (*synthetic.builtin_tasks(), *(task_of(spec) for spec in builtin_specs())):
        _BUILTIN[task.name] = task
    _REGISTRY.update(_BUILTIN)


def register_task(task: Task) -> None:
    """Make a Python-defined ``task`` available under ``task.name`` (tasks without code are
    declared in configuration instead: ``data.task_specs``); a name is taken once."""
    _load_builtin_tasks()
    if task.name in _REGISTRY and _REGISTRY[task.name] is not task:
        raise ConfigError(f"a task named {task.name!r} is already registered: {_REGISTRY[task.name]!r}")
    _REGISTRY[task.name] = task


def unregister_task(name: str) -> None:
    """Forget a task :func:`register_task` added (a notebook that redefines one); built-in tasks stay."""
    _load_builtin_tasks()
    if name in _BUILTIN or name not in _REGISTRY:
        raise ConfigError(
            f"cannot unregister {name!r}: only registered tasks can be, and these are "
            f"{sorted(set(_REGISTRY) - set(_BUILTIN))}"
        )
    del _REGISTRY[name]


def builtin_task_names() -> list[str]:
    """Sorted names of the tasks that ship with the package."""
    _load_builtin_tasks()
    return sorted(_BUILTIN)


def benchmark_tasks(benchmark: str) -> tuple[str, ...]:
    """The built-in tasks of one benchmark (``glue`` or ``superglue``), in their spec files' order."""
    _load_builtin_tasks()
    return tuple(
        name for name, task in _BUILTIN.items() if isinstance(task, BenchmarkTask) and task.benchmark == benchmark
    )


def available_tasks() -> list[str]:
    """Sorted names of every registered task."""
    _load_builtin_tasks()
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """Look a task up by name; an unknown name is an error that lists the valid ones."""
    _load_builtin_tasks()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; available tasks: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


# ------------------------------------------------------------------------------------------ users' specs
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
    specs = [parsed(raw) for raw in read_spec_list(value)]
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
    values = {label_text(value) for value in SpecTask(spec).train_label_values(data_dir)}
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


def resolve_tasks(names: Sequence[str], specs: Iterable[Any] = ()) -> list[Task]:
    """The task objects of ``names``: a spec (a :class:`TaskSpec` or its mapping) or a built-in task."""
    by_name = {s.name: s for s in (s if isinstance(s, TaskSpec) else parsed(s) for s in specs)}
    check_new_names(by_name)
    unknown = [n for n in names if n not in by_name and n not in available_tasks()]
    if unknown:
        raise ConfigError(
            f"unknown tasks {unknown}; available tasks: {available_tasks()}"
            + (f", and from data.task_specs: {sorted(by_name)}" if by_name else "")
        )
    return [task_of(by_name[n]) if n in by_name else get_task(n) for n in names]
