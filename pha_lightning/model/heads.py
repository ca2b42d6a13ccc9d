"""Output layers of encoder-only backbones: one head per task, or one layer over shared label words.

On T5 every task writes its answer with the same output vocabulary, so a shared-adapter model has
no task-specific parameters at all. :class:`TaskHeads` (the default) gives each task its own
linear head instead, which already is task-specific capacity; :class:`LabelWordHead` is the
encoder analogue of text-to-text: one linear layer over the union of the tasks' label words (the
T5 target strings: ``"0"``, ``"1"``, … and, for a regression task, its grid of rounded values such
as STS-B's ``"0.0" … "5.0"``), of which each task scores only its own. See docs/method.md.

Each layer alone knows how its outputs become predictions and loss inputs (:class:`OutputLayer`),
so the model's predictions and the training loss never tell the three cases apart themselves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from pha_lightning.data.tasks import REGRESSION_TARGET_STEP, Task
from pha_lightning.errors import ConfigError


class TaskLoss(NamedTuple):
    """One task's share of the task loss: ``outputs`` against ``targets``, by cross-entropy over
    classes, or by MSE where ``regression``."""

    outputs: Tensor
    targets: Tensor
    regression: bool


class OutputLayer(ABC):
    """Predictions and loss inputs of a batch, from each present task's :meth:`outputs`."""

    @abstractmethod
    def outputs(self, pooled: Tensor, task_ids: Tensor) -> tuple[dict[int, tuple[Tensor, Tensor]], Tensor]:
        """``{task: (indices, outputs)}`` of the tasks present, and a zero for the loss to add."""

    @abstractmethod
    def values(self, task: int, outputs: Tensor) -> Tensor:
        """A task's predictions as floats: the class index, or the value on the task's own scale."""

    @abstractmethod
    def loss_input(self, task: int, outputs: Tensor, target: Tensor) -> TaskLoss:
        """What a task's outputs are trained towards, given its examples' targets."""

    def predictions(self, pooled: Tensor, task_ids: Tensor) -> Tensor:
        """Per-example predictions as floats (:meth:`values`)."""
        preds = torch.empty(len(task_ids), device=task_ids.device)
        for task, (idx, out) in self.outputs(pooled, task_ids)[0].items():
            preds[idx] = self.values(task, out)
        return preds

    def loss_inputs(self, pooled: Tensor, task_ids: Tensor, targets: Tensor) -> tuple[list[TaskLoss], Tensor]:
        """Each present task's :class:`TaskLoss`, and the zero of :meth:`outputs` (DDP wants it added)."""
        outputs, unused = self.outputs(pooled, task_ids)
        inputs = [self.loss_input(task, out, targets.index_select(0, idx)) for task, (idx, out) in outputs.items()]
        return inputs, unused


class TaskHeads(nn.ModuleList, OutputLayer):
    """Dropout and a linear layer per task: ``num_labels`` logits, or one regression output.

    A regression head predicts its target mapped from the task's ``target_range`` to [-1, 1]
    (``regression_target: normalized``, an MSE on a par with a classification CE at init) or the
    ``raw`` value; :meth:`values` maps it back.
    """

    def __init__(
        self, d_model: int, tasks: list[Task], dropout: float, regression_target: Literal["normalized", "raw"]
    ) -> None:
        super().__init__(_task_head(d_model, t, dropout) for t in tasks)
        self.tasks = list(tasks)
        self.regression_target = regression_target

    def prepend(self, d_model: int, tasks: list[Task], dropout: float) -> None:
        """New heads for ``tasks``, in front of the existing ones (their task ids come first)."""
        for index, task in enumerate(tasks):
            self.insert(index, _task_head(d_model, task, dropout))
        self.tasks = [*tasks, *self.tasks]

    def outputs(self, pooled: Tensor, task_ids: Tensor) -> tuple[dict[int, tuple[Tensor, Tensor]], Tensor]:
        """Each present task's head applied to its examples: ``{task: (indices, outputs)}``.

        Also returns a zero that depends on the parameters of the heads of the tasks absent from
        the batch, for the loss to add: every trainable parameter then takes part in every step
        (with a zero gradient), which DDP requires. Only the present tasks' heads run, so a step's
        cost does not grow with the number of tasks.
        """
        present = torch.unique(task_ids).tolist()
        outputs = {}
        for task in present:
            idx = (task_ids == task).nonzero(as_tuple=True)[0]
            outputs[task] = (idx, self[task](pooled.index_select(0, idx)))
        absent = [p for task in sorted(set(range(len(self))) - set(present)) for p in self[task].parameters()]
        unused = 0.0 * torch.stack([p.sum() for p in absent]).sum() if absent else pooled.new_zeros(())
        return outputs, unused

    def regression_scale(self, task: int) -> tuple[float, float]:
        """``(center, half-width)`` of the task's ``target_range``: the head predicts
        ``(y - center) / half-width``; ``(0, 1)`` (the raw value) with ``regression_target: raw``."""
        if self.regression_target == "raw":
            return 0.0, 1.0
        spec = self.tasks[task]
        if spec.target_range is None:
            raise ConfigError(f"regression task {spec.name!r} has no target_range to normalise its targets by")
        low, high = spec.target_range
        return (low + high) / 2, (high - low) / 2

    def values(self, task: int, outputs: Tensor) -> Tensor:
        if not self.tasks[task].is_regression:
            return outputs.argmax(-1).float()
        center, half = self.regression_scale(task)
        return outputs.squeeze(-1).float() * half + center

    def loss_input(self, task: int, outputs: Tensor, target: Tensor) -> TaskLoss:
        if not self.tasks[task].is_regression:
            return TaskLoss(outputs, target.long(), regression=False)
        center, half = self.regression_scale(task)
        return TaskLoss(outputs.squeeze(-1).float(), (target.float() - center) / half, regression=True)


def _task_head(d_model: int, task: Task, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, task.num_labels))


class LabelWordHead(nn.Module, OutputLayer):
    """One output layer over the union of the tasks' label words; each task scores only its own.

    A regression task is classified into its grid of values (step ``REGRESSION_TARGET_STEP``
    over its ``target_range``), trained on the grid point nearest the target and predicting the
    value of the best-scoring point, as T5 does with STS-B.
    """

    def __init__(self, d_model: int, tasks: list[Task], dropout: float) -> None:
        super().__init__()
        candidates = [t.rank_candidates() for t in tasks]
        #: the shared output vocabulary, in order of first appearance over the tasks
        self.words: tuple[str, ...] = tuple(dict.fromkeys(word for words in candidates for word in words))
        position = {word: i for i, word in enumerate(self.words)}
        self.layer = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, len(self.words)))
        self.task_words = [torch.tensor([position[w] for w in words]) for words in candidates]
        self.tasks = tasks

    def outputs(self, pooled: Tensor, task_ids: Tensor) -> tuple[dict[int, tuple[Tensor, Tensor]], Tensor]:
        """Each present task's scores over its own label words: ``{task: (indices, logits)}``
        (the shared layer always takes part, so no extra zero term is needed)."""
        logits = self.layer(pooled)
        outputs = {}
        for task in torch.unique(task_ids).tolist():
            idx = (task_ids == task).nonzero(as_tuple=True)[0]
            words = self.task_words[task].to(logits.device)
            outputs[task] = (idx, logits.index_select(0, idx).index_select(1, words))
        return outputs, logits.new_zeros(())

    def classes(self, task: int, target: Tensor) -> Tensor:
        """Target indices among the task's label words: the class, or the nearest grid point."""
        spec = self.tasks[task]
        if not spec.is_regression:
            return target.long()
        low = spec.target_range[0]  # type: ignore[index]
        steps = torch.round((target.float() - low) / REGRESSION_TARGET_STEP).long()
        return steps.clamp(0, len(self.task_words[task]) - 1)

    def values(self, task: int, logits: Tensor) -> Tensor:
        """Predictions as floats: the best class index, or the value of the best grid point."""
        best = logits.argmax(-1)
        spec = self.tasks[task]
        if not spec.is_regression:
            return best.float()
        low = spec.target_range[0]  # type: ignore[index]
        return low + best.float() * REGRESSION_TARGET_STEP

    def loss_input(self, task: int, outputs: Tensor, target: Tensor) -> TaskLoss:
        """Classification over the task's label words, a regression task's included (:meth:`classes`)."""
        return TaskLoss(outputs, self.classes(task, target), regression=False)
