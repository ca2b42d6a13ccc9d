"""The training system's settings, one dataclass per concern (``model.loss.*``, ``model.optim.*``).

Each setting is declared once: type, default, valid values and the help text (the docstring under
it) that ``pha fit --help`` shows. The architecture is :class:`~pha_lightning.model.config.PHAConfig`
(``model.arch.*``); few-shot transfer is :class:`~pha_lightning.training.transfer.TransferConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from pha_lightning.model.config import trains_retriever
from pha_lightning.training.losses import PRO_DENOMINATORS, ProDenominator
from pha_lightning.validation import FRACTION, NON_NEGATIVE, POSITIVE, Choice, Range, check_settings, setting


@dataclass(frozen=True)
class LossConfig:
    """The training loss ``CE_ls + λ_IR·L_IR + λ_Pro·L_Pro (+ λ_ratio·L_ratio + λ_apart·L_apart)`` (``model.loss``; docs/method.md, "Losses")."""

    lambda_ir: float = setting(0.1, NON_NEGATIVE)
    """λ_IR, the weight of the instance contrastive loss L_IR."""
    lambda_pro: float = setting(0.1, NON_NEGATIVE)
    """λ_Pro, the weight of the prototype contrastive loss L_Pro."""
    contrastive_temperature: float = setting(0.1, POSITIVE)
    """τ of L_IR and L_Pro."""
    pro_denominator: ProDenominator = setting("exclude_positive", Choice(PRO_DENOMINATORS))
    """L_Pro's denominator: ``exclude_positive`` (the released code) or ``include_positive`` (InfoNCE)."""
    label_smoothing: float = setting(0.1, FRACTION)
    """ε of the label-smoothed cross-entropy."""
    regression_loss_weight: float = setting(1.0, NON_NEGATIVE)
    """Multiplies the MSE of encoder regression heads in the task loss (1.0: the plain sum)."""
    lambda_adapter_ratio: float = setting(0.0, NON_NEGATIVE)
    """λ_ratio, the weight of L_ratio: the mean over generated blocks of the squared
    ‖generated adapter output‖ / ‖residual stream‖ the health report measures (LoRA: update / frozen
    output), which keeps generated adapters quiet; 0 (off) is the paper (docs/method.md, "Bounding
    the generated weights")."""
    lambda_apart: float = setting(0.0, NON_NEGATIVE)
    """λ_apart, the weight of L_apart: the mean pairwise cosine similarity between tasks' generated
    adapters per generated layer, floored at 0, which keeps them apart; 0 (off) is the paper
    (docs/method.md, "Keeping tasks' adapters apart")."""

    def __post_init__(self) -> None:
        check_settings("model.loss", LossConfig, asdict(self))

    def trains_retriever(self, tasks: list[str]) -> bool:
        """Whether these losses train a retriever on ``tasks`` (the model builds one only then)."""
        return trains_retriever(tasks, self.lambda_ir, self.lambda_pro)


#: torch's AdamW implementations (``torch.optim.AdamW``'s ``foreach`` and ``fused`` switches)
AdamWKernel = Literal["default", "foreach", "fused"]
ADAMW_KERNELS: tuple[str, ...] = get_args(AdamWKernel)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a linear warm-up and a linear decay to zero (``model.optim``)."""

    learning_rate: float = setting(3e-4, POSITIVE)
    """Peak learning rate."""
    weight_decay: float = setting(0.0, NON_NEGATIVE)
    """AdamW's decoupled weight decay."""
    hypernet_head_weight_decay: float | None = setting(None, Range(0, optional=True))
    """AdamW's decoupled weight decay on the hypernetwork's output heads alone, which bounds the
    generated weights' size; ``None``: ``weight_decay`` like every other parameter, the paper
    (docs/method.md, "Bounding the generated weights")."""
    warmup_steps: int = setting(500, Range(0, integer=True))
    """Steps of linear warm-up (at most the run's length)."""
    adam_epsilon: float = setting(1e-8, POSITIVE)
    """AdamW's ε."""
    adamw_kernel: AdamWKernel = setting("default", Choice(ADAMW_KERNELS))
    """AdamW's implementation: ``default`` (torch's choice: a per-tensor loop on CPU), ``foreach``
    (the same arithmetic, bit for bit, in multi-tensor kernels) or ``fused`` (one kernel per step;
    the last bit may round differently)."""

    def __post_init__(self) -> None:
        check_settings("model.optim", OptimConfig, asdict(self))


def as_settings(cls: type, value: Any) -> Any:
    """``value`` as an instance of the settings dataclass ``cls``: itself, from a dict (a checkpoint's
    hyperparameters), or the defaults for ``None``."""
    if value is None:
        return cls()
    return value if isinstance(value, cls) else cls(**value)
