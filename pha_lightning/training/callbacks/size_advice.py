"""``pha fit`` says once when the data size falls where the other PHA adapter kind was measured ahead."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from pha_lightning.model.config import PHAConfig
from pha_lightning.training.size_advice import SizeRule, size_advice


class DataSizeAdvice(Callback):
    """At the start of a fit on a data module, print :func:`~pha_lightning.training.size_advice.size_advice`
    for its training sizes, once (rank zero); silent when there is nothing to advise."""

    def __init__(self, rule: SizeRule = SizeRule()) -> None:
        self.rule = rule

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sizes = getattr(trainer.datamodule, "train_sizes", None)
        config = getattr(getattr(pl_module, "model", None), "config", None)
        if sizes is None or not isinstance(config, PHAConfig):
            return  # plain dataloaders or another module: no per-task sizes to read
        advice = size_advice(config, sizes(), self.rule)
        if advice:
            rank_zero_info(advice)
