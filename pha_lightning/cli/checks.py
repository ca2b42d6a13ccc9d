"""What a ``pha`` command line and its configuration must satisfy before a model or trainer is built.

Every numeric setting is range-checked as soon as the configuration is parsed (model, data,
trainer, seed), a config file must be a mapping, options of pha-lightning 0.1 and LightningCLI's
optimiser options name what replaced them, and ``--predict_output`` may not destroy a file (the
input, the model being served, an earlier prediction). Each failure is one
:class:`~pha_lightning.errors.ConfigError` line; :mod:`pha_lightning.cli.app` calls these.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

from jsonargparse import Namespace

from pha_lightning.cli.parsing import read_config_mapping
from pha_lightning.data.catalog import parse_specs
from pha_lightning.data.datamodule import PHADataModule, check_source_length
from pha_lightning.errors import ConfigError
from pha_lightning.formats.migration import check_model_section, renamed_model_setting
from pha_lightning.model.calibration import RoutingConfig
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.settings import LossConfig, OptimConfig
from pha_lightning.validation import (
    SEED,
    SIZE,
    Range,
    check_range,
    check_ranges,
    check_settings,
    ensure_writable_dir,
)

#: Trainer settings Lightning checks late, with a traceback, or not at all (``val_check_interval 0``
#: divides by zero mid-run; a seed out of range is replaced by 0 with a warning).
TRAINER_RANGES: dict[str, Range] = {
    "max_steps": Range(-1, integer=True),  # -1: no limit
    "max_epochs": Range(-1, integer=True, optional=True),
    "min_steps": Range(0, integer=True, optional=True),
    "min_epochs": Range(0, integer=True, optional=True),
    "check_val_every_n_epoch": Range(1, integer=True, optional=True),
    "accumulate_grad_batches": SIZE,
    "log_every_n_steps": Range(1, integer=True, optional=True),
    "num_sanity_val_steps": Range(-1, integer=True, optional=True),  # -1: all
    "gradient_clip_val": Range(0, optional=True),
}
#: Trainer settings that count batches (an integer) or a share of them (a float in [0, 1]).
BATCH_COUNT_SETTINGS: tuple[str, ...] = (
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
)


#: The model's setting groups and the dataclass declaring each one's settings.
MODEL_GROUPS: dict[str, type] = {
    "arch": PHAConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "routing": RoutingConfig,
}
#: The architecture settings, which a flat ``model.<key>`` of pha-lightning 0.1 may name (``formats.migration``).
ARCHITECTURE_SETTINGS = frozenset(f.name for f in fields(PHAConfig))


def check_run_settings(config: Namespace) -> None:
    """Range checks of every numeric setting (model, data, trainer, seed) and the task specs as
    soon as the configuration is parsed, before a model or a trainer is built."""
    if config.get("data"):
        parse_specs(config.data.get("task_specs"), config.data.get("data_dir"))
        check_settings("data", PHADataModule, config.data)
    model = config.get("model") or {}
    for group, settings in MODEL_GROUPS.items():
        check_settings(f"model.{group}", settings, model.get(group) or {})
    if model and config.get("data"):
        check_source_length(model.arch.backbone, config.data.max_source_length)
    seed = config.get("seed_everything")
    if not isinstance(seed, bool) and seed is not None:
        check_range("seed_everything", seed, SEED)
    trainer = config.get("trainer") or {}
    check_ranges("trainer", {key: TRAINER_RANGES[key] for key in TRAINER_RANGES if key in trainer}, trainer)
    for key in BATCH_COUNT_SETTINGS:
        _check_count_or_share(f"trainer.{key}", trainer.get(key), Range(0, integer=True), Range(0, 1))
    _check_count_or_share(
        "trainer.val_check_interval", trainer.get("val_check_interval"), SIZE, Range(0, 1, low_open=True)
    )


def _check_count_or_share(name: str, value: object, count: Range, share: Range) -> None:
    """Lightning's convention: an integer counts batches, a float is a share of them."""
    if value is None or (count.contains(value) if isinstance(value, int) else share.contains(value)):
        return
    raise ConfigError(
        f"{name} must be an integer {count.describe()} (batches) or a float {share.describe()} (a share of them), got {value!r}"
    )


def check_config_file(path: str) -> None:
    """A config file must be UTF-8 YAML mapping section names to settings; jsonargparse's own
    messages for one that is not do not name the file. A ``--config`` that is no file (an inline
    YAML string) or cannot be read is left to jsonargparse."""
    loaded = read_config_mapping(
        path, "sections to settings, e.g. 'trainer: {max_steps: 100}' and 'data: {tasks: [rte]}'"
    )
    if loaded is None:
        return
    for section in (loaded, *(loaded.get(name) or {} for name in ("fit", "validate", "test", "predict"))):
        if isinstance(section, dict):
            check_model_section(section.get("model"), f"config file {path!r}", ARCHITECTURE_SETTINGS)
            for key in OPTIMIZER_OPTIONS:
                if key[2:] in section:
                    raise ConfigError(f"config file {path!r}: {optimizer_option_error(key[2:])}")


#: LightningCLI's optimiser options, which PHA does not take: its AdamW and schedule are ``model.optim``
OPTIMIZER_OPTIONS: tuple[str, ...] = ("--optimizer", "--lr_scheduler")


def optimizer_option_error(name: str) -> ConfigError:
    """LightningCLI's optimiser options are off (``auto_configure_optimizers=False``): what configures PHA's."""
    return ConfigError(
        f"{name} is not an option of pha: PHA trains with AdamW and a linear warm-up and decay, set by "
        "model.optim.learning_rate, model.optim.weight_decay, model.optim.warmup_steps and model.optim.adam_epsilon"
    )


def check_option_names(argv: list[str]) -> None:
    """A ``--model.<key>`` option of pha-lightning 0.1 (before settings were grouped) names its new key;
    ``--optimizer`` / ``--lr_scheduler`` name the settings that configure PHA's optimiser instead."""
    for token in argv:
        name = token.split("=", 1)[0].split(".", 1)[0]
        if name in OPTIMIZER_OPTIONS:
            raise optimizer_option_error(name)
        key = token[2:].split("=", 1)[0] if token.startswith("--model.") else ""
        renamed = (
            renamed_model_setting(key.removeprefix("model."), ARCHITECTURE_SETTINGS) if key.count(".") == 1 else None
        )
        if renamed is not None:
            raise ConfigError(f"--{key} is {renamed} (settings are grouped by concern: see docs/migration.md)")


def check_predict_output(output: str, predict_file: str | None, ckpt_path: str | None, overwrite: bool) -> None:
    """``--predict_output`` must be a file that writing cannot destroy something else with: not the
    input file, not the checkpoint or inside the bundle being served, and, unless ``overwrite``, no
    existing file (predictions of an earlier run)."""
    path = Path(output).expanduser().absolute()
    if path.is_dir():
        raise ConfigError(
            f"predict_output {str(path)!r} is a directory; give the JSONL file to write, e.g. {str(path / 'predictions.jsonl')!r}"
        )
    if predict_file and same_file(path, Path(predict_file)):
        raise ConfigError(
            f"predict_output {str(path)!r} is the input file data.predict_file: writing it would destroy the "
            "examples; give another file"
        )
    if ckpt_path and ckpt_path not in ("last", "best", "hpc"):
        served = Path(ckpt_path).expanduser().resolve()
        if same_file(path, served) or (served.is_dir() and path.resolve().is_relative_to(served)):
            raise ConfigError(
                f"predict_output {str(path)!r} is inside {str(served)!r}, the model being served (ckpt_path); "
                "write the predictions outside it"
            )
    if path.exists() and not overwrite:
        raise ConfigError(f"predict_output {str(path)!r} exists; pass --overwrite to replace it, or give another file")
    ensure_writable_dir(path.parent, "the directory of predict_output")


def predict_start(config: Namespace) -> int:
    """Where ``pha predict`` starts in ``data.predict_file``: after the rows of an interrupted prediction
    with ``--resume`` (:func:`~pha_lightning.training.callbacks.resume_start`), else at the first example."""
    from pha_lightning.training.callbacks import resume_start

    output, predict_file = config.get("predict_output"), config.data.get("predict_file")
    if config.get("resume") and (not output or not predict_file):
        raise ConfigError(
            "--resume continues the prediction of a data.predict_file into a given --predict_output "
            "(the default output is a new folder per run, and the test split is predicted whole)"
        )
    if not output or not predict_file:
        return 0
    return resume_start(
        output, predict_file, prediction_identity(config), config.get("resume"), config.get("overwrite")
    )


def prediction_identity(config: Namespace) -> dict[str, str]:
    """What decides a prediction's rows besides the input's lines: the model (its file or folder, with
    size and modification time) and the settings that change tokens or batches."""
    data = config.data
    return {
        "ckpt_path": file_identity(config.get("ckpt_path")),
        "data.predict_file": str(Path(data.predict_file).expanduser().absolute()) if data.get("predict_file") else "",
        "data.tasks": ",".join(data.tasks),
        "data.backbone": str(data.get("backbone")),
        "data.max_source_length": str(data.max_source_length),
        "data.eval_batch_size": str(data.eval_batch_size),
    }


def file_identity(path: str | None) -> str:
    """A checkpoint file's or bundle folder's path, size and latest modification: a retrained or
    re-exported model differs."""
    if not path or not os.path.exists(path):
        return str(path)
    files = [Path(path)] if os.path.isfile(path) else sorted(p for p in Path(path).rglob("*") if p.is_file())
    stats = [file.stat() for file in files]
    size, modified = sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    return f"{Path(path).resolve()} ({size} bytes, modified {modified} ns)"


def same_file(path: Path, other: Path) -> bool:
    """Whether two paths name one file (also through links); paths that do not exist yet are compared resolved."""
    if path.exists() and other.exists():
        return os.path.samefile(path, other)
    return path.resolve() == other.expanduser().resolve()
