"""Output layers of encoder-only backbones: one head per task, or one layer over shared label words.

On T5 every task writes its answer with the same output vocabulary, so a shared-adapter model has
no task-specific parameters at all. :class:`TaskHeads` (the default) gives each task its own
linear head instead, which already is task-specific capacity; :class:`LabelWordHead` is the
encoder analogue of text-to-text: one linear layer over the union of the tasks' label words (the
T5 target strings: ``"0"``, ``"1"``, … and, for a regression task, its grid of rounded values such
as STS-B's ``"0.0" … "5.0"``), of which each task scores only its own. See docs/method.md.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pha_lightning.data.tasks import REGRESSION_TARGET_STEP, Task


class TaskHeads(nn.ModuleList):
    """Dropout and a linear layer per task: ``num_labels`` logits, or one regression output."""

    def __init__(self, d_model: int, tasks: list[Task], dropout: float) -> None:
        super().__init__(_task_head(d_model, t, dropout) for t in tasks)

    def prepend(self, d_model: int, tasks: list[Task], dropout: float) -> None:
        """New heads for ``tasks``, in front of the existing ones (their task ids come first)."""
        for index, task in enumerate(tasks):
            self.insert(index, _task_head(d_model, task, dropout))

    def outputs(self, pooled: Tensor, task_ids: Tensor) -> tuple[dict[int, tuple[Tensor, Tensor]], Tensor]:
        """Each present task's head applied to its examples: ``{task: (indices, outputs)}``.

        Also returns a zero that depends on the heads of the tasks absent from the batch, for the
        loss to add: every trainable parameter then takes part in every step, which DDP requires.
        """
        outputs, unused = {}, pooled.new_zeros(())
        for task, head in enumerate(self):
            idx = (task_ids == task).nonzero(as_tuple=True)[0]
            if len(idx):
                outputs[task] = (idx, head(pooled.index_select(0, idx)))
            else:
                unused = unused + 0.0 * head(pooled[:1]).sum()
        return outputs, unused


def _task_head(d_model: int, task: Task, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, task.num_labels))


class LabelWordHead(nn.Module):
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
