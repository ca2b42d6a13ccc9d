"""What ``pha sweep`` searches and how: its settings (:class:`SweepConfig`, the YAML file given as
``--sweep``), the search space read from them and checked in one line per mistake, and the Optuna
sampler, pruner and storage they name. docs/usage.md, "Sweeps", shows a file."""

from __future__ import annotations

import fcntl
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from pha_lightning.errors import ConfigError

#: the keys a parameter of the space may have
PARAMETER_KEYS: tuple[str, ...] = ("type", "low", "high", "log", "step", "choices")
KINDS: tuple[str, ...] = ("float", "int", "categorical")
#: a parameter's declaration as the errors show it
EXAMPLE = "{low: 1.0e-4, high: 1.0e-2, log: true} or {choices: [1.0e-4, 3.0e-4]}"


@dataclass
class SweepConfig:
    """The settings of ``pha sweep`` (the ``sweep`` section; every other option goes to each trial's ``pha fit``)."""

    space: dict[str, Any] = field(default_factory=dict)
    """The search space: a ``pha fit`` setting (e.g. ``model.optim.learning_rate``) to its range,
    ``{low, high, log, step}`` (float, or int when low and high are integers) or ``{choices: [...]}``."""
    n_trials: int | None = None
    """Trials the study runs in all, over every process that joins it (a rerun runs only those
    missing). Default: the grid's size with ``GridSampler``, else 10."""
    storage: str | None = None
    """Where the study lives: a SQLite file (``*.db``; default ``<output_dir>/study.db``), a
    database URL, or an Optuna journal file (any other name, e.g. ``study.journal``: for shared
    file systems where SQLite's locking is unreliable). Processes given the same storage and
    study name join one study."""
    study_name: str | None = None
    """The study's name in its storage (default: the sweep file's name without its extension)."""
    output_dir: str | None = None
    """Where trials' run folders (``trial_NNN``), ``best.yaml``, ``trials.md`` and the plots go
    (default: ``runs/sweeps/<study_name>``)."""
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "TPESampler", "seed": 0})
    """An Optuna sampler: ``name`` (a class of ``optuna.samplers``) and its arguments. With several
    processes the seed is offset by the trials already in the study when a process joins, so they
    do not propose the same values."""
    pruner: dict[str, Any] = field(
        default_factory=lambda: {"name": "MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 0}
    )
    """An Optuna pruner (``name``, a class of ``optuna.pruners``, and its arguments); it reads the
    validation metric at each validation's global step. ``{name: NopPruner}``: no pruning."""
    heartbeat_s: int = 30
    """Seconds between a running trial's heartbeats in a database storage: a trial silent for twice
    as long (its process was killed) is failed, and a retry with its settings resumes from its
    ``last.ckpt``."""


@dataclass(frozen=True)
class Parameter:
    """One searched setting and its distribution."""

    name: str
    distribution: optuna.distributions.BaseDistribution

    def values_to_check(self) -> list[Any]:
        """The values whose validity as the setting stands for the whole range: its ends, or every choice."""
        dist = self.distribution
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            return list(dist.choices)
        return [dist.low, dist.high]


def _describe(name: str) -> str:
    return f"sweep.space[{name!r}]"


def parse_parameter(name: str, spec: object) -> Parameter:
    """A parameter of the space, with a one-line error naming the value for any mistake."""
    where = _describe(name)
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{where} must be a mapping such as {EXAMPLE}, got {spec!r}")
    unknown = sorted(str(key) for key in spec if key not in PARAMETER_KEYS)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; valid: {', '.join(PARAMETER_KEYS)}")
    kind = spec.get("type") or ("categorical" if "choices" in spec else _range_kind(spec))
    if kind not in KINDS:
        raise ConfigError(f"{where}: type {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "categorical":
        return Parameter(name, _categorical(where, spec))
    return Parameter(name, _range(where, kind, spec))


def _range_kind(spec: dict[str, Any]) -> str:
    integers = all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) for k in ("low", "high"))
    return "int" if integers and not isinstance(spec.get("step"), float) else "float"


def _categorical(where: str, spec: dict[str, Any]) -> optuna.distributions.CategoricalDistribution:
    extra = sorted(k for k in spec if k not in ("type", "choices"))
    if extra:
        raise ConfigError(f"{where}: choices cannot be combined with {extra}")
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
    bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
    if bad:
        raise ConfigError(f"{where}: choices must be numbers, strings, booleans or null, got {bad[0]!r}")
    if len(set(map(repr, choices))) < len(choices):
        raise ConfigError(f"{where}: choices {choices!r} repeat a value")
    return optuna.distributions.CategoricalDistribution(choices)


def _range(where: str, kind: str, spec: dict[str, Any]) -> optuna.distributions.BaseDistribution:
    missing = [k for k in ("low", "high") if k not in spec]
    if missing:
        raise ConfigError(f"{where} needs {' and '.join(missing)} (or choices), e.g. {EXAMPLE}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for key, value in (("low", low), ("high", high), ("step", step)):
        if value is None and key == "step":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
        if kind == "int" and not isinstance(value, int):
            raise ConfigError(f"{where}: {key} of an int parameter must be an integer, got {value!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{where}: low {low!r} must be below high {high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got low {low!r}")
    if log and step is not None:
        raise ConfigError(f"{where}: step {step!r} cannot be combined with log: true")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step must be > 0, got {step!r}")
    if kind == "int":
        return optuna.distributions.IntDistribution(low, high, log=log, step=step or 1)
    return optuna.distributions.FloatDistribution(float(low), float(high), log=log, step=step)


def parse_space(space: object) -> list[Parameter]:
    """Every parameter of ``sweep.space``; an empty or malformed space is one error."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            f"sweep.space must map pha fit settings to ranges, e.g. {{model.optim.learning_rate: {EXAMPLE}}}, "
            f"got {space!r}"
        )
    return [parse_parameter(str(name), spec) for name, spec in space.items()]


def _optuna_class(module: Any, kind: str, settings: object) -> tuple[type, dict[str, Any]]:
    """The class ``settings['name']`` of ``module`` and the other settings as its arguments."""
    if not isinstance(settings, dict) or not isinstance(settings.get("name"), str):
        raise ConfigError(f"sweep.{kind} must be a mapping with a name, e.g. {{name: ...}}, got {settings!r}")
    valid = sorted(n for n in dir(module) if n.endswith(kind.capitalize()) and not n.startswith("Base"))
    name = settings["name"]
    if name not in valid:
        raise ConfigError(f"sweep.{kind}.name {name!r} is not an Optuna {kind}; valid: {', '.join(valid)}")
    return getattr(module, name), {k: v for k, v in settings.items() if k != "name"}


def _instantiate(kind: str, cls: type, kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"sweep.{kind} {cls.__name__}{kwargs!r}: {err}") from None


def make_sampler(
    settings: dict[str, Any], parameters: list[Parameter], seed_offset: int
) -> optuna.samplers.BaseSampler:
    """The sampler. ``GridSampler``'s grid: its own ``search_space`` (values of ranges declared in
    the space, so a later grid of the same study may hold other values), else the space's choices."""
    cls, kwargs = _optuna_class(optuna.samplers, "sampler", settings)
    if cls is optuna.samplers.GridSampler:
        kwargs["search_space"] = grid_of(parameters, kwargs.get("search_space"))
    if isinstance(kwargs.get("seed"), int) and not isinstance(kwargs["seed"], bool):
        kwargs["seed"] += seed_offset
    return _instantiate("sampler", cls, kwargs)


def grid_of(parameters: list[Parameter], given: object) -> dict[str, list[Any]]:
    """Every parameter's grid values, each inside its declared range or among its choices."""
    if given is not None and not isinstance(given, dict):
        raise ConfigError(f"sweep.sampler.search_space must map parameters to lists of values, got {given!r}")
    given = given or {}
    unknown = sorted(set(given) - {p.name for p in parameters})
    if unknown:
        raise ConfigError(f"sweep.sampler.search_space names {unknown}, which sweep.space does not declare")
    grid = {}
    for parameter in parameters:
        dist = parameter.distribution
        categorical = isinstance(dist, optuna.distributions.CategoricalDistribution)
        values = given.get(parameter.name, list(dist.choices) if categorical else None)
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"sweep.sampler GridSampler searches a grid: give {parameter.name} choices, or list its values "
                f"in sweep.sampler.search_space, got {values!r}"
            )
        outside = [v for v in values if not _within(dist, v)]
        if outside:
            raise ConfigError(
                f"sweep.sampler.search_space[{parameter.name!r}]: {outside[0]!r} is outside its sweep.space"
            )
        grid[parameter.name] = values
    return grid


def _within(dist: optuna.distributions.BaseDistribution, value: object) -> bool:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return value in dist.choices
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and dist.low <= value <= dist.high


def grid_size(parameters: list[Parameter], sampler: dict[str, Any]) -> int:
    """How many points the grid of a ``GridSampler``'s settings has."""
    return math.prod(len(values) for values in grid_of(parameters, sampler.get("search_space")).values())


def make_pruner(settings: dict[str, Any]) -> optuna.pruners.BasePruner:
    cls, kwargs = _optuna_class(optuna.pruners, "pruner", settings)
    return _instantiate("pruner", cls, kwargs)


#: file names that mean a SQLite database
SQLITE_SUFFIXES: tuple[str, ...] = (".db", ".sqlite", ".sqlite3")


@contextmanager
def creation_lock(database: Path | None) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite file while Optuna opens it: processes started together
    would otherwise all create its tables, and all but one fail on a duplicate schema version."""
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def make_storage(
    storage: str,
    heartbeat_s: int = SweepConfig.heartbeat_s,
    stale_trial_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """A database (SQLite file or URL, with heartbeats; ``stale_trial_callback`` gets each trial a
    killed process left running) or a journal file."""
    if heartbeat_s < 1:
        raise ConfigError(f"sweep.heartbeat_s must be a whole number of seconds >= 1, got {heartbeat_s}")
    if "://" in storage or storage.endswith(SQLITE_SUFFIXES):
        url = storage if "://" in storage else f"sqlite:///{Path(storage).expanduser().absolute()}"
        database = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
        with creation_lock(database):
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": {"timeout": 120}} if database else None,
                heartbeat_interval=heartbeat_s,
                heartbeat_stale_trial_callback=stale_trial_callback,
            )
    path = Path(storage).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
