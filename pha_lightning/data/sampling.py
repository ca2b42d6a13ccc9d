"""Temperature-based multi-task batch sampling, DDP-aware and resumable.

Tasks are drawn with ``p_i ∝ n_i^(1/T)`` (T = 1: proportional to size; T → ∞: uniform), which
keeps small tasks from being drowned by large ones. PHA needs several tasks in one batch (its
instance contrast L_IR has no negatives otherwise), hence the default ``mixed`` mode in which
every example slot draws its own task; ``task`` mode fills each batch from one task, as
HyperFormer does.

Under DDP every rank draws the same task sequence but takes examples only from its own shard of
each task, so ranks never overlap, always have the same number of batches, and the global task
mix follows the temperature.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal, get_args

import numpy as np
from torch.utils.data import Sampler

from pha_lightning.errors import ConfigError

SamplingMode = Literal["mixed", "task"]
SAMPLING_MODES: tuple[str, ...] = get_args(SamplingMode)


def task_probabilities(task_sizes: Sequence[int], temperature: float) -> list[float]:
    """``p_i ∝ n_i^(1/T)``, computed in log space so huge sizes or small T cannot overflow."""
    _check_sizes(task_sizes)
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    logits = np.log(np.asarray(task_sizes, dtype=np.float64)) / temperature
    weights = np.exp(logits - logits.max())
    return (weights / weights.sum()).tolist()


def _check_sizes(task_sizes: Sequence[int]) -> None:
    if len(task_sizes) == 0:
        raise ConfigError("task_sizes is empty; give the number of examples of each task")
    empty = [index for index, size in enumerate(task_sizes) if size < 1]
    if empty:
        raise ConfigError(f"tasks {empty} have no examples: task_sizes={list(task_sizes)}")


class TemperatureBatchSampler(Sampler[list[int]]):
    """Yields batches of global indices into the concatenation of the tasks' datasets.

    Task ``i`` occupies indices ``[sum(n_<i), sum(n_<=i))``. Within each task a rank walks its
    shard in a per-epoch shuffled order without replacement, reshuffling when the shard runs
    out, so small tasks cycle while large ones are only partly seen in an epoch.

    Lightning does not call ``set_epoch`` on a custom batch sampler: the training loop must (the
    PHA module does so in ``on_train_epoch_start``). The epoch is read when iteration starts.
    """

    def __init__(
        self,
        task_sizes: Sequence[int],
        batch_size: int,
        temperature: float = 10.0,
        mode: SamplingMode = "mixed",
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__()
        self.probabilities = task_probabilities(task_sizes, temperature)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        if mode not in SAMPLING_MODES:
            raise ConfigError(f"unknown sampling mode {mode!r}; valid modes: {list(SAMPLING_MODES)}")
        if num_replicas < 1:
            raise ConfigError(f"num_replicas must be >= 1, got {num_replicas!r}")
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank must be in [0, {num_replicas}), got {rank!r}")
        too_small = [index for index, size in enumerate(task_sizes) if size < num_replicas]
        if too_small:
            raise ConfigError(
                f"tasks {too_small} have fewer examples than num_replicas={num_replicas} "
                f"(task_sizes={list(task_sizes)}), so some rank would own none of them"
            )
        if num_batches is not None and num_batches < 1:
            raise ConfigError(f"num_batches must be >= 1 or None, got {num_batches!r}")
        self.task_sizes = list(task_sizes)
        self.offsets = np.cumsum([0, *self.task_sizes[:-1]]).tolist()
        self.batch_size = batch_size
        self.temperature = temperature
        self.mode = mode
        self.num_batches = num_batches or math.ceil(sum(self.task_sizes) / (batch_size * num_replicas))
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._batches_yielded = 0
        self._resume_from = 0

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration produces."""
        if epoch != self.epoch:
            self._resume_from = 0
        self.epoch = epoch

    def settings(self) -> dict[str, Any]:
        """Everything the batch sequence depends on besides the epoch (and the rank, which a run keeps):
        a resumed run continues the interrupted run's sequence only if these are equal."""
        return {
            "task_sizes": list(self.task_sizes),
            "batch_size": self.batch_size,
            "temperature": self.temperature,
            "mode": self.mode,
            "num_batches": self.num_batches,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
        }

    def state_dict(self) -> dict[str, int]:
        """Position in the epoch: resuming skips the batches already yielded.

        Counts batches handed to the DataLoader; with worker prefetching these run ahead of the
        batches the training step has consumed.
        """
        return {"epoch": self.epoch, "batches_yielded": self._batches_yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        batches_yielded = int(state["batches_yielded"])
        if not 0 <= batches_yielded <= self.num_batches:
            raise ConfigError(f"batches_yielded must be in [0, {self.num_batches}], got {batches_yielded}")
        self.epoch = int(state["epoch"])
        self._batches_yielded = batches_yielded
        self._resume_from = batches_yielded

    def __iter__(self) -> Iterator[list[int]]:
        epoch, start = self.epoch, self._resume_from
        self._resume_from = 0
        batches = self._epoch_batches(epoch)
        self._batches_yielded = start
        for batch in batches[start:]:
            self._batches_yielded += 1
            yield batch.tolist()

    def _epoch_batches(self, epoch: int) -> np.ndarray:
        """All of this rank's batches of ``epoch``, shape ``(num_batches, batch_size)``."""
        tasks = self._task_sequence(epoch)
        batches = np.empty_like(tasks)
        for task in range(len(self.task_sizes)):
            slots = tasks == task
            if slots.any():
                batches[slots] = self.offsets[task] + self._shard_stream(epoch, task, int(slots.sum()))
        return batches

    def _task_sequence(self, epoch: int) -> np.ndarray:
        """Task of every example slot; seeded by (seed, epoch) only, so equal on every rank."""
        rng = np.random.default_rng([self.seed, epoch])
        num_tasks = len(self.task_sizes)
        if self.mode == "mixed":
            return rng.choice(num_tasks, size=(self.num_batches, self.batch_size), p=self.probabilities)
        per_batch = rng.choice(num_tasks, size=(self.num_batches, 1), p=self.probabilities)
        return np.repeat(per_batch, self.batch_size, axis=1)

    def _shard_stream(self, epoch: int, task: int, length: int) -> np.ndarray:
        """``length`` local indices of ``task`` from this rank's shard, reshuffled on each pass.

        The shard comes from a permutation shared by all ranks (seeded without the rank), so
        the ranks' shards partition the task.
        """
        shared = np.random.default_rng([self.seed, epoch, task + 1])
        shard = shared.permutation(self.task_sizes[task])[self.rank :: self.num_replicas]
        local = np.random.default_rng([self.seed, epoch, task + 1, self.rank + 1])
        passes = [local.permutation(shard) for _ in range(math.ceil(length / len(shard)))]
        return np.concatenate(passes)[:length]
