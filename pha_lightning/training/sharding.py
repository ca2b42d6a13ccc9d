"""``--trainer.strategy=pha_fsdp``: FSDP2 per transformer block, with PHA's checkpoint format.

Lightning's :class:`~lightning.pytorch.strategies.ModelParallelStrategy` runs ``fully_shard`` (on
GPUs with NCCL, on CPUs with gloo) and calls :meth:`PHAModule.configure_model`, which shards the
model (:mod:`pha_lightning.model.sharding`). This subclass only changes what a checkpoint holds:
one file with the whole tensors of the weights PHA saves (not the frozen backbone) instead of a
folder of every rank's shards of everything, so ``pha test``, ``pha export``, transfer and resume
read it like any other checkpoint (docs/production.md, "Big backbones").
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import Tensor

from pha_lightning.model.sharding import full_tensor

#: the name ``--trainer.strategy`` takes
STRATEGY_NAME = "pha_fsdp"


class PHAShardedStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` writing full, PHA-only checkpoints (see the module docstring).

    Args:
        kwargs: ``ModelParallelStrategy``'s (``data_parallel_size`` and ``tensor_parallel_size``
            only shape its device mesh: PHA shards over all of its ranks).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(save_distributed_checkpoint=False, **kwargs)

    def lightning_module_state_dict(self) -> dict[str, Tensor]:
        """The whole tensors of what PHA saves, gathered on every rank (rank 0 writes them); the
        frozen backbone is never gathered."""
        module = self.lightning_module
        keep = {f"model.{name}" for name in module.model.saved_state_keys()}
        return {name: full_tensor(p.detach()).cpu() for name, p in module.named_parameters() if name in keep}


StrategyRegistry.register(
    STRATEGY_NAME,
    PHAShardedStrategy,
    description="FSDP2 per transformer block (ModelParallelStrategy) with PHA's checkpoint format",
)
