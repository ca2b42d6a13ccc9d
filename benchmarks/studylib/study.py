"""Study configs: what a study script runs, as data (benchmarks/README.md, "Studies").

A study file names the base ``pha fit`` config, the protocol (a config file of
``configs/protocols/``), the methods (each the override file ``configs/methods/<name>.yaml``;
``<method>+<extra>`` composes ``<extra>.yaml`` after it), the sizes, seeds and learning rates, and
where the rows go. A method's entry says what is particular to it in this study: it takes another
method's chosen rate (``rate_of``), trains nothing and evaluates another method's run of the same
cell (``evaluates``), or runs at other sizes or rates than the study's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from studylib.runs import ROOT

METHODS_DIR = ROOT / "configs" / "methods"


def method_configs(name: str) -> list[Path]:
    """The override files of a method name: ``configs/methods/<part>.yaml`` for each ``+``-joined part."""
    files = [METHODS_DIR / f"{part}.yaml" for part in name.split("+")]
    missing = [f.stem for f in files if not f.is_file()]
    if missing:
        raise SystemExit(
            f"method {name!r}: no configs/methods/{missing[0]}.yaml; methods: {', '.join(known_methods())}"
        )
    return files


def method_settings(name: str) -> dict:
    """The settings of a method's override files, merged in order (``{"model": {"arch": …}, "data": …}``):
    for scripts that build the model in process rather than through ``pha fit``."""
    merged: dict = {}
    for path in method_configs(name):
        _merge(merged, yaml.safe_load(path.read_text()) or {})
    return merged


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def known_methods() -> list[str]:
    return sorted(path.stem for path in METHODS_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class StudyMethod:
    """One method of a study and what is particular to it there."""

    name: str
    #: takes this method's chosen learning rate (never tuned itself), e.g. PHA's ablations take PHA's
    rate_of: str | None = None
    #: trains nothing: each row validates and tests this method's run of the same cell (size, seed, rate)
    evaluates: str | None = None
    #: its own sizes (default: the study's)
    n_train: tuple[int, ...] | None = None
    #: its own candidate rates (default: the study's)
    rates: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Study:
    """A study config, read by :func:`load_study`."""

    config: Path
    methods: dict[str, StudyMethod]
    output_dir: Path
    protocol: Path | None = None
    n_train: tuple[int, ...] = (100,)
    seeds: tuple[int, ...] = (0, 1, 2)
    #: candidate learning rates, each tuned method chooses among them on validation (none: no tuning)
    rates: tuple[float, ...] = ()
    #: the tuning cell (n_train, seed), and whether to step beyond a choice at the edge of the rates
    tune: dict = field(default_factory=lambda: {"n_train": 100, "seed": 0, "bracket": False})
    #: a chosen_lr.json whose rates the methods not tuned here take (e.g. a screening at PHA's rate)
    reference_rates: Path | None = None
    #: a study folder whose PHA and PHA-LoRA rows a validation-only screening is set beside
    screen_against: Path | None = None

    def fit_configs(self) -> list[str]:
        """``--config`` arguments every run of the study starts from: base config, then protocol."""
        return [f"--config={self.config}", *([f"--config={self.protocol}"] if self.protocol else [])]


def _path(value: str | None) -> Path | None:
    return None if value is None else (Path(value) if Path(value).is_absolute() else ROOT / value)


def _method(name: str, entry: dict | None) -> StudyMethod:
    entry = entry or {}
    unknown = set(entry) - {f.name for f in fields(StudyMethod)}
    if unknown:
        raise SystemExit(
            f"method {name!r}: unknown key {sorted(unknown)[0]!r}; valid: rate_of, evaluates, n_train, rates"
        )
    method_configs(name)
    for key in ("n_train", "rates"):
        if key in entry:
            entry[key] = tuple(entry[key])
    return StudyMethod(name=name, **entry)


def load_study(path: Path) -> Study:
    """The study of a YAML file; unknown keys, unknown methods and missing files are errors naming them."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    valid = {f.name for f in fields(Study)}
    unknown = set(raw) - valid
    if unknown:
        raise SystemExit(f"study {path}: unknown key {sorted(unknown)[0]!r}; valid: {', '.join(sorted(valid))}")
    for key in ("config", "methods", "output_dir"):
        if key not in raw:
            raise SystemExit(f"study {path}: no {key!r}; a study names its base config, methods and output_dir")
    methods = raw["methods"] if isinstance(raw["methods"], dict) else dict.fromkeys(raw["methods"])
    study = Study(
        **{**raw, "methods": {name: _method(name, entry) for name, entry in methods.items()}},
    )
    study = _with_paths(study)
    for name, method in study.methods.items():
        if method.rate_of is not None and method.rate_of not in study.methods and study.reference_rates is None:
            raise SystemExit(
                f"study {path}: method {name!r} takes the rate of {method.rate_of!r}, which is neither in the study "
                "nor given by reference_rates"
            )
        if method.evaluates is not None:
            method_configs(method.evaluates)
    for file in (study.config, study.protocol):
        if file is not None and not file.is_file():
            raise SystemExit(f"study {path}: no file {file}")
    return study


def _with_paths(study: Study) -> Study:
    """Paths of a study file are relative to the checkout; tuples where YAML gives lists."""
    return Study(
        config=_path(str(study.config)),
        methods=study.methods,
        output_dir=_path(str(study.output_dir)),
        protocol=_path(study.protocol and str(study.protocol)),
        n_train=tuple(study.n_train),
        seeds=tuple(study.seeds),
        rates=tuple(float(r) for r in study.rates),
        tune={"n_train": 100, "seed": 0, "bracket": False, **study.tune},
        reference_rates=_path(study.reference_rates and str(study.reference_rates)),
        screen_against=_path(study.screen_against and str(study.screen_against)),
    )
