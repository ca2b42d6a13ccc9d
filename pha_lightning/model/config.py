"""``PHAConfig``: the architecture of a PHA model (or of a baseline built from its parts), nothing else.

Training settings (loss weights, learning rate, schedule) belong to the training system; a
bundle's ``config.json`` stores this dataclass alone. docs/method.md gives every constant's meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from pha_lightning.data.specs import parse_spec
from pha_lightning.errors import ConfigError
from pha_lightning.model.hypernetwork import CALIBRATIONS, Calibration
from pha_lightning.model.lora import DEFAULT_LORA_TARGETS, check_lora_targets
from pha_lightning.model.methods import ADAPTER_KINDS, METHODS, AdapterKind, Method
from pha_lightning.validation import FRACTION, NON_NEGATIVE, POSITIVE, SIZE, Range, check_ranges

#: The valid values of every string setting of the architecture.
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "backbone_init": ("pretrained", "random"),
    "hypernet_calibration": CALIBRATIONS,
    "regression_target": ("normalized", "raw"),
    "head_pooling": ("mean", "cls"),
    "output_layer": ("task_heads", "label_words"),
    "seq2seq_eval": ("generate", "rank"),
    "adapter_kind": ADAPTER_KINDS,
}
#: The valid range of every numeric setting of the architecture.
NUMERIC_RANGES: dict[str, Range] = {
    "adapter_dim": SIZE,
    "split_layer": Range(1, integer=True, optional=True),  # its upper bound depends on the backbone
    "retriever_hidden_dim": SIZE,
    "retrieval_dim": SIZE,
    "layer_embedding_dim": SIZE,
    "hypernet_hidden_dim": SIZE,
    "hypernet_out_dim": SIZE,
    "hypernet_init_scale": NON_NEGATIVE,
    "hypernet_layer_norm_eps": POSITIVE,
    "shared_adapter_init_gain": NON_NEGATIVE,
    "prototype_init_std": POSITIVE,
    "head_dropout": FRACTION,
    "generation_max_length": SIZE,
    "chunk_cost_tokens": Range(0, integer=True, optional=True),
    "lora_rank": SIZE,
    "lora_alpha": POSITIVE,
    "lora_dropout": FRACTION,
}
#: Settings that decide which weights a model has, their shapes and how they are read: a checkpoint
#: or bundle serves only a configuration that agrees on them; a transferred model takes them from its source.
ARCHITECTURE_KEYS: tuple[str, ...] = (
    "backbone_init",
    "adapter_dim",
    "split_layer",
    "retriever_hidden_dim",
    "retrieval_dim",
    "layer_embedding_dim",
    "hypernet_hidden_dim",
    "hypernet_out_dim",
    "hypernet_layer_norm_eps",
    "head_pooling",
    "hypernet_calibration",
    "regression_target",
    "output_layer",
    "adapter_kind",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
)
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


def with_legacy_settings(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Saved settings, completed with :data:`LEGACY_SETTINGS` for keys they predate."""
    return {**LEGACY_SETTINGS, **saved}


def trains_retriever(tasks: list[str], lambda_ir: float, lambda_pro: float) -> bool:
    """Whether PHA trains (and so builds) its retriever: L_IR or L_Pro has a weight, and there is
    more than one task for them to contrast (with one, L_IR has no negatives and L_Pro no other row)."""
    return bool(lambda_ir or lambda_pro) and len(tasks) > 1


def check_choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid: {list(valid)}")


@dataclass
class PHAConfig:
    """What a PHA model is made of (see docs/method.md, "The parts", for every value).

    ``tasks`` fixes the task ids (their order); ``task_specs`` holds the portable spec of every
    task declared in configuration (:meth:`~pha_lightning.data.specs.TaskSpec.portable`: fields,
    labels, template, metrics; no file paths), so a saved model needs no spec file; ``retriever`` says whether PHA builds its
    retriever (the training system turns it off when neither contrastive loss is trained). The
    other fields are the ``model.*`` settings of the same names (``pha fit --help``).
    """

    backbone: str = "pypi:all-MiniLM-L6-v2"
    tasks: list[str] = field(default_factory=list)
    task_specs: list[dict[str, Any]] | None = None
    method: Method = "pha"
    backbone_init: Literal["pretrained", "random"] = "pretrained"
    adapter_dim: int = 64
    split_layer: int | None = None
    retriever: bool = True
    retriever_hidden_dim: int = 128
    retrieval_dim: int = 64
    layer_embedding_dim: int = 64
    hypernet_hidden_dim: int = 128
    hypernet_out_dim: int = 64
    hypernet_init_scale: float = 1e-3
    hypernet_layer_norm_eps: float = 1e-6
    hypernet_calibration: Calibration = "width"
    shared_adapter_init_gain: float = 1e-4
    prototype_init_std: float = 1.0
    regression_target: Literal["normalized", "raw"] = "normalized"
    head_pooling: Literal["mean", "cls"] = "mean"
    output_layer: Literal["task_heads", "label_words"] = "task_heads"
    head_dropout: float = 0.1
    generation_max_length: int = 16
    seq2seq_eval: Literal["generate", "rank"] = "generate"
    chunk_cost_tokens: int | None = 64
    adapter_kind: AdapterKind = "bottleneck"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_targets: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("a PHA model needs at least one task (model.tasks, linked from data.tasks)")
        self.tasks = list(self.tasks)
        self.task_specs = [parse_spec(spec).portable() for spec in self.task_specs or ()] or None
        for name, valid in CHOICES.items():
            check_choice(name, getattr(self, name), valid)
        check_ranges("model", NUMERIC_RANGES, {name: getattr(self, name) for name in NUMERIC_RANGES})
        check_lora_targets(list(self.lora_targets or DEFAULT_LORA_TARGETS))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **overrides: Any) -> PHAConfig:
        """The architecture among a mapping of settings (a checkpoint's hyperparameters, an old
        bundle's config), completed with :data:`LEGACY_SETTINGS` for keys it predates."""
        saved = {**with_legacy_settings(settings), **overrides}
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
