"""Everything written by earlier versions, upgraded to the current format here and nowhere else.

Checkpoints, bundles and configuration files carry a format; each upgrade is one step from a
version to the next, applied in order, so the rest of the code sees the current format only
(``tests/test_layout.py`` checks that no other module reads an old one). docs/migration.md lists
the formats.

* checkpoint 1 (unversioned, pha-lightning 0.1): flat ``hyper_parameters``, one key per setting,
  some predating later settings (:data:`LEGACY_SETTINGS`); the oldest hold the model's weights
  without the ``model.`` prefix. Checkpoint 2: ``hyper_parameters`` grouped as the system's
  arguments ``arch`` / ``loss`` / ``optim`` / ``transfer``, version in ``pha_checkpoint_version``.
* bundle 1: ``config.json`` held every training hyperparameter under ``hyperparameters``;
  bundle 2: ``config`` holds the architecture (:class:`PHAConfig`) alone; bundle 3: the weights
  file is ``pha_model.safetensors``, named by ``weights_file`` (bundles 1 and 2 used peft's file
  name ``adapter_model.safetensors`` for keys peft cannot read).
* configuration 1: flat ``model.*`` keys. Configuration 2 groups them (``model.arch.*``,
  ``model.loss.*``, ``model.optim.*``); a flat key is an error naming its new name, not guessed.

This module works on plain dicts and imports nothing of the model: a version-1 setting is an
architecture setting unless it is one of the version-1 training or linked settings listed here
(the version-1 system took exactly these, :data:`FLAT_TRAINING_SETTINGS`, :data:`FLAT_LINKED_SETTINGS`
and ``transfer``), and the caller that checks a configuration names the current architecture settings.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from pha_lightning.errors import ConfigError, PHAError
from pha_lightning.version import __version__

CHECKPOINT_VERSION = 2
CHECKPOINT_VERSION_KEY = "pha_checkpoint_version"
BUNDLE_VERSION = 3
#: the weights file of bundles 1 and 2 (peft's name; format 3 renamed it so peft does not take it for its own)
OLD_BUNDLE_WEIGHTS_NAME = "adapter_model.safetensors"

#: Settings added after the first checkpoints and bundles were written, with the values that
#: reproduce those (the released behaviour): a saved configuration that lacks a key gets its value.
LEGACY_SETTINGS: dict[str, Any] = {
    "hypernet_calibration": "none",
    "regression_target": "raw",
    "output_layer": "task_heads",
    "adapter_kind": "bottleneck",
    "lora_rank": 8,
    "lora_alpha": 16.0,
    "lora_dropout": 0.1,
    "lora_targets": None,
}
#: The version-1 (flat) training settings and the group each belongs to now; every other flat
#: ``model.*`` setting of version 1 is an architecture setting (``arch``).
FLAT_TRAINING_SETTINGS: dict[str, str] = {
    **dict.fromkeys(
        ("lambda_ir", "lambda_pro", "contrastive_temperature", "pro_denominator", "label_smoothing"), "loss"
    ),
    "regression_loss_weight": "loss",
    **dict.fromkeys(("learning_rate", "weight_decay", "warmup_steps", "adam_epsilon"), "optim"),
}
#: Version-1 link targets of the model and where their values come from now.
FLAT_LINKED_SETTINGS: dict[str, str] = {"tasks": "data.tasks", "portable_task_specs": "data.task_specs"}
#: Version-1 defaults of the loss weights (a version-1 bundle may lack them).
FLAT_LAMBDA_DEFAULT = 0.1


#: Version-1 settings that are neither architecture nor training: the linked task specs and the transfer.
FLAT_OTHER_SETTINGS = ("portable_task_specs", "transfer")


def legacy_architecture(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The ``PHAConfig`` dict of version-1 flat settings: every one but the training and other settings
    (keys they predate take their legacy values; an unknown one is refused when the config is built)."""
    settings = {**LEGACY_SETTINGS, **flat}
    skipped = {*FLAT_TRAINING_SETTINGS, *FLAT_OTHER_SETTINGS}
    arch = {key: value for key, value in settings.items() if key not in skipped and not key.startswith("_")}
    arch["task_specs"] = settings.get("portable_task_specs")
    arch["retriever"] = built_retriever(settings)
    return arch


def built_retriever(settings: Mapping[str, Any]) -> bool:
    """Whether a version-1 model built its retriever: a retrieval loss had a weight, and there was more
    than one task to contrast (the rule of that version, kept here as it was)."""
    lambdas = (settings.get("lambda_ir", FLAT_LAMBDA_DEFAULT), settings.get("lambda_pro", FLAT_LAMBDA_DEFAULT))
    return bool(any(lambdas)) and len(settings["tasks"]) > 1


# ---------------------------------------------------------------------------------------- checkpoints
def _checkpoint_1_to_2(checkpoint: dict[str, Any]) -> None:
    flat = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    grouped: dict[str, Any] = {"arch": legacy_architecture(flat), "loss": {}, "optim": {}}
    for key, group in FLAT_TRAINING_SETTINGS.items():
        if key in flat:
            grouped[group][key] = flat[key]
    grouped["transfer"] = flat.get("transfer")
    checkpoint["hyper_parameters"] = grouped
    state = checkpoint["state_dict"]
    if not any(key.startswith("model.") for key in state):  # written before the model/system split
        checkpoint["state_dict"] = {f"model.{key}": value for key, value in state.items()}


CHECKPOINT_STEPS: dict[int, Callable[[dict[str, Any]], None]] = {1: _checkpoint_1_to_2}


def upgrade_checkpoint(checkpoint: dict[str, Any], source: str = "the checkpoint") -> dict[str, Any]:
    """Upgrade a checkpoint dict in place to :data:`CHECKPOINT_VERSION` (idempotent) and return it."""
    version = checkpoint.get(CHECKPOINT_VERSION_KEY, 1)
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise PHAError(
            f"{source} has checkpoint format {version!r}; this pha-lightning reads formats 1 to {CHECKPOINT_VERSION}"
        )
    for step in range(version, CHECKPOINT_VERSION):
        CHECKPOINT_STEPS[step](checkpoint)
    checkpoint[CHECKPOINT_VERSION_KEY] = CHECKPOINT_VERSION
    return checkpoint


# ---------------------------------------------------------------------------------------- bundles
def _bundle_1_to_2(record: dict[str, Any]) -> None:
    record["config"] = legacy_architecture(record.pop("hyperparameters"))


def _bundle_2_to_3(record: dict[str, Any]) -> None:
    record["weights_file"] = OLD_BUNDLE_WEIGHTS_NAME


BUNDLE_STEPS: dict[int, Callable[[dict[str, Any]], None]] = {1: _bundle_1_to_2, 2: _bundle_2_to_3}


def upgrade_bundle_record(record: dict[str, Any], source: str, error: type[PHAError] = PHAError) -> dict[str, Any]:
    """Upgrade a bundle's ``config.json`` record in place to :data:`BUNDLE_VERSION` and return it;
    architecture keys a config predates take their legacy values. Problems raise ``error``."""
    version = record.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= BUNDLE_VERSION:
        raise error(
            f"{source} has format_version {version!r}; this pha-lightning {__version__} "
            f"reads versions up to {BUNDLE_VERSION}"
        )
    needed = "hyperparameters" if version == 1 else "config"
    missing = [key for key in ("backbone", needed, "tasks", "files") if key not in record]
    if missing:
        raise error(f"{source} lacks {missing}")
    for step in range(version, BUNDLE_VERSION):
        BUNDLE_STEPS[step](record)
    record["config"] = {**LEGACY_SETTINGS, **record["config"]}
    record["format_version"] = BUNDLE_VERSION
    return record


# ---------------------------------------------------------------------------------------- configurations
def renamed_model_setting(key: str, architecture: Collection[str]) -> str | None:
    """What a version-1 ``model.<key>`` setting is called now (``None``: not a version-1 flat key);
    ``architecture`` names the current architecture settings (``PHAConfig``'s fields)."""
    if key in FLAT_LINKED_SETTINGS:
        return f"linked from {FLAT_LINKED_SETTINGS[key]}: drop it"
    if key in FLAT_TRAINING_SETTINGS:
        return f"now model.{FLAT_TRAINING_SETTINGS[key]}.{key}"
    if key in set(architecture) - {"task_specs", "retriever"}:
        return f"now model.arch.{key}"
    return None


def check_model_section(section: object, where: str, architecture: Collection[str]) -> None:
    """A configuration's ``model`` mapping must use the grouped keys: a flat one is one error naming
    its new name (a configuration written for pha-lightning 0.1)."""
    if not isinstance(section, Mapping):
        return
    for key in section:
        renamed = renamed_model_setting(str(key), architecture)
        if renamed is not None:
            raise ConfigError(
                f"{where}: model.{key} is {renamed} (settings are grouped by concern since pha-lightning 0.2: "
                "model.arch, model.loss, model.optim; see docs/migration.md)"
            )
