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

The position means the same batches only under the same batch settings (the sampler's
:meth:`~pha_lightning.data.sampling.TemperatureBatchSampler.settings`: task sizes, batch size,
temperature, mode, batches per epoch, seed, number of processes), which the state records too. A
resume with other settings is allowed (a requeued job may get another GPU count) but warned about,
naming each change; it continues at the same share of the epoch and the log stops claiming exactness.
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from pha_lightning.data.sampling import TemperatureBatchSampler

#: The user's settings behind each of :meth:`TemperatureBatchSampler.settings`, for messages.
SETTING_NAMES: dict[str, str] = {
    "task_sizes": "training examples per task (data.tasks, data.n_train, data.percent_train, the data files)",
    "batch_size": "data.batch_size",
    "temperature": "data.temperature",
    "mode": "data.sampling",
    "num_batches": "batches per epoch (data.num_batches_per_epoch, or the data size over the global batch)",
    "seed": "data.seed",
    "num_replicas": "training processes (trainer.devices x trainer.num_nodes)",
}


def changed_batch_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"<setting> <saved> -> <now>"`` for every sampler setting that differs from the checkpoint's."""
    return [
        f"{SETTING_NAMES[key]} {saved.get(key)!r} -> {value!r}" for key, value in now.items() if saved.get(key) != value
    ]


def resume_message(epoch: int, batch: int, changed: list[str], recorded: bool) -> str:
    """What the log says about the restored position: exact only when the batch settings are known equal."""
    position = f"epoch {epoch}, batch {batch}"
    if changed:
        return (
            f"resuming with changed batch settings ({'; '.join(changed)}): the training batches differ from the "
            f"interrupted run's from here on, not an exact continuation; continuing at the same share of the epoch, {position}"
        )
    if not recorded:
        return f"resuming the training batches at {position}; the checkpoint does not record its batch settings, so this is exact only if they are unchanged"
    return f"resuming the training batches exactly: {position}"


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
            saved = state.get("settings")
            changed = changed_batch_settings(saved, sampler.settings()) if saved else []
            if changed:  # another sequence: continue at the same share of the epoch
                consumed = round(consumed * len(sampler) / saved["num_batches"])
            if consumed >= len(sampler):  # saved at the end of an epoch: the next one starts
                epoch, consumed = epoch + 1, 0
            sampler.load_state_dict({"epoch": epoch, "batches_yielded": consumed})
            self._consumed_epoch, self._consumed = epoch, consumed
            (rank_zero_warn if changed else rank_zero_info)(resume_message(epoch, consumed, changed, bool(saved)))
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
        position = {"epoch": self._consumed_epoch, "batches_consumed": self._consumed}
        return {"train_sampler": {**position, "settings": self._train_sampler.settings()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_sampler" in state_dict:
            self._pending_sampler_state = dict(state_dict["train_sampler"])
