"""``PHAConfig``: the architecture of a PHA model (or of a baseline built from its parts), nothing else.

Every setting is declared once, here: its type, default, valid values (``setting(default, valid)``)
and the help text ``pha fit --help`` shows (the docstring under it). Training settings (losses,
optimisation, transfer) are the training system's; a bundle's ``config.json`` stores this
dataclass alone. docs/method.md gives every constant's meaning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from pha_lightning.data.catalog import parsed
from pha_lightning.errors import ConfigError
from pha_lightning.model.hypernetwork import CALIBRATIONS, OUTPUT_SCALES, Calibration, OutputScaleMode
from pha_lightning.model.lora import DEFAULT_LORA_TARGETS, check_lora_targets
from pha_lightning.model.methods import (
    ADAPTER_KINDS,
    METHODS,
    AdapterKind,
    Method,
    generates_bottleneck_adapters,
    trains_backbone,
)
from pha_lightning.validation import (
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    SIZE,
    Choice,
    Range,
    check_settings,
    field_flag,
    setting,
)

#: ``mhr``'s heads per skill LoRA when ``poly_splits`` is unset
MHR_SPLITS = 4
#: the dtypes a frozen backbone can be held in (``model.arch.backbone_dtype``)
BackboneDtype = Literal["float32", "bfloat16", "float16"]
BACKBONE_DTYPES: tuple[str, ...] = get_args(BackboneDtype)
BackboneInit = Literal["pretrained", "random"]
RegressionTarget = Literal["normalized", "raw"]
HeadPooling = Literal["mean", "cls"]
OutputLayer = Literal["task_heads", "label_words"]
Seq2SeqEval = Literal["generate", "rank"]


def trains_retriever(tasks: list[str], lambda_ir: float, lambda_pro: float) -> bool:
    """Whether PHA trains (and so builds) its retriever: L_IR or L_Pro has a weight, and there is
    more than one task for them to contrast (with one, L_IR has no negatives and L_Pro no other row)."""
    return bool(lambda_ir or lambda_pro) and len(tasks) > 1


@dataclass
class PHAConfig:
    """The architecture (``model.arch``): backbone, method, adapters, retriever, hypernetwork, heads."""

    backbone: str = "pypi:all-MiniLM-L6-v2"
    """Hub id, local directory, or ``pypi:all-MiniLM-L6-v2`` (a model shipped in a package)."""
    tasks: list[str] = setting(factory=list)
    """Task names in the order of their task ids (linked from ``data.tasks``)."""
    task_specs: list[dict[str, Any]] | None = None
    """The portable specs of the tasks declared in configuration (linked from ``data.task_specs``,
    without file paths): a saved model serves them without the spec file."""
    method: Method = setting("pha", Choice(METHODS))
    """``pha`` or a baseline built from its parts (docs/method.md, "Baselines")."""
    backbone_dtype: BackboneDtype = setting("float32", Choice(BACKBONE_DTYPES))
    """The dtype the frozen backbone's weights are held in: ``bfloat16`` or ``float16`` halve its
    memory; the trainable parts (adapters, LoRA, hypernetwork, heads) stay float32 and compute in
    float32 (docs/production.md, "Big backbones")."""
    activation_checkpointing: bool = False
    """Recompute each backbone block's activations in the backward pass instead of keeping them:
    less memory for a longer step; generated adapters keep their weights for the recomputation."""
    backbone_init: BackboneInit = setting("pretrained", Choice.of(BackboneInit), structural=True)
    """``pretrained`` weights, or ``random`` init from the backbone's config (tests, cost studies)."""
    adapter_dim: int = setting(64, SIZE, structural=True)
    """Adapter bottleneck ``r``."""
    split_layer: int | None = setting(None, Range(1, integer=True, optional=True), structural=True)
    """Encoder-only backbones: ``k``, blocks ``[0, k)`` get shared adapters and the retriever reads
    block ``k-1``'s output; default ``N // 2``. Ignored for T5."""
    retriever: bool = True
    """Whether PHA builds its retriever: set by the training system from the loss weights
    (a retriever no loss trains is not built); not a command-line setting."""
    retriever_hidden_dim: int = setting(128, SIZE, structural=True)
    """Hidden width of the retriever MLP ``d_model → 128 → 64``."""
    retrieval_dim: int = setting(64, SIZE, structural=True)
    """Width of the retrieval vectors ``z`` and of the prototypes."""
    layer_embedding_dim: int = setting(64, SIZE, structural=True)
    """Width of the hypernetwork's layer embeddings."""
    hypernet_hidden_dim: int = setting(128, SIZE, structural=True)
    """Hidden width of the hypernetwork."""
    hypernet_out_dim: int = setting(64, SIZE, structural=True)
    """Width of the hypernetwork's shared output before the weight heads."""
    hypernet_init_scale: float = setting(1e-3, NON_NEGATIVE)
    """Standard deviation scale of the hypernetwork's weight heads at init."""
    hypernet_layer_norm_eps: float = setting(1e-6, POSITIVE, structural=True)
    """ε of the hypernetwork's layer norm."""
    hypernet_calibration: Calibration = setting("width", Choice(CALIBRATIONS), structural=True)
    """``width`` scales the generator's heads so one optimiser step moves a generated adapter as much
    as a shared one; ``none`` is the released parametrisation (docs/method.md)."""
    generated_output_scale: OutputScaleMode = setting("none", Choice(OUTPUT_SCALES), structural=True)
    """Multiply each generated bottleneck adapter's output by a scale that starts at exactly 0: one
    learned per ``layer``, or generated per ``task_layer`` (HyperDecoder: per example and layer);
    ``none`` is the released adapters (docs/method.md, "Zero-started output scale")."""
    shared_adapter_init_gain: float = setting(1e-4, NON_NEGATIVE)
    """Xavier gain of the shared adapters (1e-4: they start near zero)."""
    prototype_init_std: float = setting(1.0, POSITIVE)
    """σ of the N(0, σ²) prototype initialisation."""
    regression_target: RegressionTarget = setting("normalized", Choice.of(RegressionTarget), structural=True)
    """Encoder regression heads predict the target mapped from the task's range to [-1, 1]
    (``normalized``) or on the ``raw`` scale (the released behaviour)."""
    head_pooling: HeadPooling = setting("mean", Choice.of(HeadPooling), structural=True)
    """Encoder task heads read the ``mean`` of the final hidden states over real tokens, or ``cls``."""
    output_layer: OutputLayer = setting("task_heads", Choice.of(OutputLayer), structural=True)
    """Encoder-only backbones: one head per task, or one layer over the union of the tasks' label words."""
    head_dropout: float = setting(0.1, FRACTION)
    """Dropout before the task heads."""
    generation_max_length: int = setting(16, SIZE)
    """T5: the most tokens generated at evaluation (linked from ``data.max_target_length``)."""
    seq2seq_eval: Seq2SeqEval = setting("generate", Choice.of(Seq2SeqEval))
    """T5: greedy ``generate`` (the paper), or ``rank`` the task's candidate targets by likelihood."""
    chunk_cost_tokens: int | None = setting(64, Range(0, integer=True, optional=True))
    """Length-aware execution: a chunk boundary where it saves more padded tokens than this (the cost of
    one more backbone call; ~64 on a CPU, thousands on a GPU); ``None`` runs each batch whole."""
    adapter_kind: AdapterKind = setting("bottleneck", Choice(ADAPTER_KINDS), structural=True)
    """``bottleneck`` adapters, or ``lora`` on the attention projections (``method: lora`` always uses LoRA)."""
    lora_rank: int = setting(8, SIZE, structural=True)
    """LoRA's ``r``."""
    lora_alpha: float = setting(16.0, POSITIVE, structural=True)
    """LoRA's ``alpha``: the update is scaled by ``alpha / r``."""
    lora_dropout: float = setting(0.1, FRACTION)
    """Dropout on the LoRA sites' input."""
    lora_targets: list[str] | None = setting(None, structural=True)
    """The linear layers of each block LoRA adapts (default ``query`` and ``value``; also ``key``,
    ``output``, ``ffn_in``, ``ffn_out``), as peft's ``LoraConfig`` means them."""
    poly_skills: int = setting(4, SIZE, structural=True)
    """``poly`` and ``mhr``: the skill LoRAs per site each task's LoRA mixes (peft's ``n_skills``)."""
    poly_splits: int | None = setting(None, Range(1, integer=True, optional=True), structural=True)
    """``mhr``: the heads each skill LoRA is cut into, mixed apart (peft's ``n_splits``; default
    ``4``; it must divide every site's width); ``poly`` has one (default ``None``: the method's)."""
    mtl_up_projections: int = setting(3, SIZE, structural=True)
    """``mtl_lora``: the shared up-projections each task mixes (AdapterHub's ``n_up_projection``)."""
    mtl_sharpness: float = setting(0.05, POSITIVE)
    """``mtl_lora``: the temperature of each task's softmax over them (AdapterHub's ``weights_sharpness``)."""
    arrow_top_k: int = setting(3, SIZE)
    """``arrow``: the task LoRAs each token mixes, those its top singular vectors align with best."""
    arrow_temperature: float = setting(1.0, POSITIVE)
    """``arrow``: the temperature of the softmax over the kept LoRAs' scores."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("a PHA model needs at least one task (model.arch.tasks, linked from data.tasks)")
        self.tasks = list(self.tasks)
        self.task_specs = [parsed(spec).portable() for spec in self.task_specs or ()] or None
        check_settings("model.arch", PHAConfig, self.to_dict())
        check_lora_targets(list(self.lora_targets or DEFAULT_LORA_TARGETS))
        if self.generated_output_scale != "none" and not generates_bottleneck_adapters(self.method, self.adapter_kind):
            raise ConfigError(
                f"generated_output_scale {self.generated_output_scale!r} scales generated bottleneck adapters, but "
                f"method {self.method!r} with adapter_kind {self.adapter_kind!r} generates none (generated LoRA "
                "already starts at B = 0); use 'none', or method pha, hyperformer or hyperdecoder with adapter_kind "
                "'bottleneck'"
            )
        self._check_multi_lora()
        if self.backbone_dtype != "float32" and trains_backbone(self.method):
            raise ConfigError(
                f"backbone_dtype {self.backbone_dtype!r} holds the frozen backbone in half precision, but method "
                f"{self.method!r} trains the backbone; use backbone_dtype 'float32' (with trainer.precision "
                "bf16-mixed for half-precision compute)"
            )

    @property
    def skill_splits(self) -> int:
        """The heads of ``poly`` / ``mhr``'s skill LoRAs (``poly_splits``, or the method's default)."""
        if self.method != "mhr":
            return 1
        return self.poly_splits or MHR_SPLITS

    def _check_multi_lora(self) -> None:
        """Settings the multi-task LoRA methods cannot honour, named with what would work."""
        if self.method == "poly" and self.poly_splits not in (None, 1):
            raise ConfigError(
                f"poly_splits {self.poly_splits} cuts Poly's skills into heads, which is method 'mhr'; "
                "use method 'mhr', or poly_splits 1 (or unset) for 'poly'"
            )
        if self.method == "mhr" and self.poly_splits == 1:
            raise ConfigError("poly_splits 1 makes MHR Poly; use method 'poly', or poly_splits >= 2 for 'mhr'")
        if self.method == "arrow" and self.arrow_top_k > len(self.tasks):
            raise ConfigError(
                f"arrow_top_k {self.arrow_top_k} is more than the {len(self.tasks)} task LoRAs Arrow routes over; "
                f"use 1 to {len(self.tasks)}"
            )

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> PHAConfig:
        """A config from its :meth:`to_dict` (a current-format checkpoint or bundle); an unknown key is an error."""
        unknown = sorted(set(settings) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown architecture settings {unknown}; valid: {[f.name for f in fields(cls)]}")
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Settings that decide which weights a model has, their shapes and how they are read: a checkpoint
#: or bundle serves only a configuration that agrees on them; a transferred model takes them from its source.
ARCHITECTURE_KEYS: tuple[str, ...] = field_flag(PHAConfig, "structural")
