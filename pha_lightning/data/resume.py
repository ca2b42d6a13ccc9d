"""Exact resume of training: the sampler's position travels in the checkpoint.

A run killed mid-epoch (SIGKILL, preemption) and resumed with ``--ckpt_path last`` must see the
same batches in the same order with the same dropout masks as a run that was never interrupted.
Lightning restores the weights, optimizer, scheduler, loop counters and callback states; three
more things are needed, and this module provides the first:

1. **The sampler position.** :class:`ResumableTrainBatches` (a mixin of
   :class:`~pha_lightning.data.datamodule.PHADataModule`) counts the training batches the loop has
   *consumed* — counted when a batch is handed to the training step, so batches that the
   DataLoader's workers (``prefetch_factor × num_workers``) have drawn ahead are not counted — and
   saves ``{"epoch", "batches_consumed"}`` as the data module's state in every checkpoint. On
   restore the next train loader's :class:`~pha_lightning.data.sampling.TemperatureBatchSampler`
   starts at that position before its first batch is drawn. This holds for any ``num_workers``.
2. **The sampler epoch.** Lightning never calls ``set_epoch`` on a custom batch sampler and does
   not call ``on_train_epoch_start`` when it resumes mid-epoch; the restored state carries the
   epoch (an end-of-epoch position becomes the start of the next epoch).
3. **Randomness.** Dropout masks are drawn from a generator reseeded per batch from (seed, epoch,
   batch, rank) by :class:`pha_lightning.training.callbacks.StepSeed`, so what evaluation or a restart
   drew before does not matter.
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from pha_lightning.data.sampling import TemperatureBatchSampler


class ResumableTrainBatches:
    """Mixin for a LightningDataModule whose ``train_dataloader`` passes its batch sampler through
    :meth:`track_train_sampler`. Adds ``state_dict``/``load_state_dict`` (which Lightning saves in
    and restores from checkpoints) and counts consumed batches in ``on_after_batch_transfer``.
    """

    _train_sampler: TemperatureBatchSampler | None = None
    _pending_sampler_state: dict[str, int] | None = None
    _consumed_epoch: int = 0
    _consumed: int = 0

    def track_train_sampler(self, sampler: TemperatureBatchSampler) -> TemperatureBatchSampler:
        """Remember the training sampler; put it at the restored position if a checkpoint gave one."""
        self._train_sampler = sampler
        state = self._pending_sampler_state
        self._pending_sampler_state = None
        if state is not None:
            epoch, consumed = int(state["epoch"]), int(state["batches_consumed"])
            if consumed >= len(sampler):  # saved at the end of an epoch: the next one starts
                epoch, consumed = epoch + 1, 0
            sampler.load_state_dict({"epoch": epoch, "batches_yielded": consumed})
            self._consumed_epoch, self._consumed = epoch, consumed
            rank_zero_info(f"resuming the training batches exactly: epoch {epoch}, batch {consumed}")
            # Lightning looks for the position in the DataLoader, not here, and would warn that a
            # mid-epoch resume "can cause unreliable results"; it cannot here, so say it once, correctly
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        return sampler

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        sampler = self._train_sampler
        if trainer is not None and trainer.training and sampler is not None:
            if sampler.epoch != self._consumed_epoch:
                self._consumed_epoch, self._consumed = sampler.epoch, 0
            self._consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self._train_sampler is None:
            return {}
        return {"train_sampler": {"epoch": self._consumed_epoch, "batches_consumed": self._consumed}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_sampler" in state_dict:
            self._pending_sampler_state = dict(state_dict["train_sampler"])
