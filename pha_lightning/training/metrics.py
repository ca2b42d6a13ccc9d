"""Per-task evaluation metrics (data.md, "Metrics"), reported ×100.

Every metric takes float tensors ``(B,)``: predictions are class indices (or regression values)
and targets are class indices (or regression values). A text-to-text model can generate a string
that is no label at all; it marks such a prediction with :data:`INVALID` and the metrics count it
as wrong:

* classification: any prediction that is not a label index (``INVALID``/NaN, ``-1``, out of
  range, non-integer) is replaced by ``(target + 1) % num_labels`` — always a wrong class, and for
  binary tasks exactly the opposite of the target, as data.md asks for F1 and Matthews;
* regression: NaN is replaced by the end of the task's ``target_range`` farthest from the target
  (for STS-B: 5 when the target is below 2.5, else 0), the regression analogue of "the opposite
  of the target". Every finite value is a real prediction, even outside the range.

``INVALID`` is NaN rather than ``-1.0`` because ``-1.0`` is a legitimate regression output.

Metric names a task may ask for (``Task.metric_names``):

* ``accuracy``; ``matthews``; ``f1`` (binary: F1 of the positive class, index 1; more classes:
  macro-averaged); ``macro_f1`` (always macro-averaged, CB);
* ``f1a`` (MultiRC: binary F1 over all answer options) and ``em`` (MultiRC: exact match per
  question — a question counts only if every one of its answer options is right). ``em`` needs
  the question id of every example: its ``update(preds, target, groups)`` takes a long tensor
  ``groups``; a ``MetricCollection`` passes ``groups=`` only to the metrics whose ``update``
  accepts it, so one call ``collection.update(preds, target, groups=…)`` serves every metric;
* regression: ``pearson``, ``spearman``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
)
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from pha_lightning.data.tasks import Task
from pha_lightning.errors import ConfigError

CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "f1", "macro_f1", "matthews", "f1a", "em")
#: Metrics defined for binary tasks only.
BINARY_METRICS: tuple[str, ...] = ("f1a", "em")
REGRESSION_METRICS: tuple[str, ...] = ("pearson", "spearman")


def invalid_classes(preds: Tensor, num_labels: int) -> Tensor:
    """Which class predictions are no valid label index (NaN, negative, too large, fractional)."""
    in_range = (preds >= 0) & (preds < num_labels) & (preds == torch.round(preds))
    return ~in_range  # NaN compares False everywhere, so it lands here too


def class_predictions(preds: Tensor, target: Tensor, num_labels: int) -> tuple[Tensor, Tensor]:
    """Integer class predictions and targets, invalid predictions replaced by a wrong class."""
    target = target.long()
    wrong = (target + 1) % num_labels
    preds = torch.where(invalid_classes(preds, num_labels), wrong, torch.nan_to_num(preds, nan=-1.0).long())
    return preds, target


def regression_predictions(preds: Tensor, target: Tensor, target_range: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """Float predictions and targets, NaN predictions replaced by the farthest end of the range."""
    low, high = target_range
    target = target.float()
    farthest = torch.where(target < (low + high) / 2, torch.full_like(target, high), torch.full_like(target, low))
    return torch.where(torch.isnan(preds), farthest, preds.float()), target


class _Percent:
    """Mixin: inputs pass through ``_prepare``, the value is reported ×100.

    Subclassing the stock torchmetrics classes (rather than wrapping them) keeps their own
    states, so DDP sync, ``forward`` and ``MetricCollection`` behave exactly as usual, and the
    classes live at module level so a module holding them can be pickled (``ddp_spawn``).
    """

    def _prepare(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def update(self, preds: Tensor, target: Tensor) -> None:
        super().update(*self._prepare(preds, target))  # type: ignore[misc]

    def compute(self) -> Tensor:
        return super().compute() * 100  # type: ignore[misc]


class _ClassPercent(_Percent):
    num_classes: int

    def _prepare(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return class_predictions(preds, target, self.num_classes)


class TaskAccuracy(_ClassPercent, MulticlassAccuracy):
    """Accuracy ×100 with invalid predictions counted as wrong."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes=num_classes, average="micro")


class TaskMatthews(_ClassPercent, MulticlassMatthewsCorrCoef):
    """Matthews correlation ×100 with invalid predictions counted as wrong.

    When every prediction (or every target) is one class the coefficient is undefined; GLUE's
    scorer (scikit-learn) reports 0 there, while torchmetrics returns a small non-zero value
    (0.0367 for a constant predictor on CoLA's test half), so that case is set to 0 here.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes=num_classes)

    def compute(self) -> Tensor:
        confmat = self.confmat.float()
        total = confmat.sum()
        predicted, actual = confmat.sum(0), confmat.sum(1)
        if (total**2 - (predicted**2).sum()) * (total**2 - (actual**2).sum()) == 0:
            return torch.zeros((), device=confmat.device)
        return super().compute()


class TaskMacroF1(_ClassPercent, MulticlassF1Score):
    """Macro-averaged F1 ×100 (CB) with invalid predictions counted as a wrong class."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes=num_classes, average="macro")


class TaskBinaryF1(_ClassPercent, BinaryF1Score):
    """F1 of the positive class (index 1) ×100; an invalid prediction counts as the opposite."""

    num_classes = 2


class TaskGroupExactMatch(Metric):
    """Exact match per group ×100 (MultiRC: per question): a group scores 1 if every one of its
    examples is predicted right. Invalid predictions are wrong.

    Keeps every (prediction, target, group) until ``compute``; evaluation splits are small
    (MultiRC's dev half: about 2 400 answer options). Under DDP the lists are concatenated over
    ranks; a group seen on several ranks is still scored once, as all of its examples together.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("correct", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, groups: Tensor | None = None) -> None:
        if groups is None:
            raise ValueError(
                "exact match per group needs groups= (one group id per example, e.g. MultiRC's question); "
                "pass the batch's 'groups' tensor to update"
            )
        if groups.shape != target.shape:
            raise ValueError(f"groups has shape {tuple(groups.shape)}, target {tuple(target.shape)}; they must match")
        preds, target = class_predictions(preds, target, self.num_classes)
        self.correct.append(preds == target)
        self.groups.append(groups.long())

    def compute(self) -> Tensor:
        correct, groups = self.correct, self.groups
        if isinstance(correct, list):  # not synced: still a list of batch tensors
            if not correct:
                return torch.tensor(float("nan"))
            correct, groups = torch.cat(correct), torch.cat(groups)
        _, group_index = torch.unique(groups, return_inverse=True)
        wrong = torch.zeros(int(group_index.max()) + 1, dtype=torch.long, device=correct.device)
        wrong.scatter_add_(0, group_index, (~correct).long())
        return (wrong == 0).float().mean() * 100


class _RegressionPercent(_Percent):
    def __init__(self, target_range: tuple[float, float]) -> None:
        super().__init__()
        self.target_range = target_range

    def _prepare(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return regression_predictions(preds, target, self.target_range)


class TaskPearson(_RegressionPercent, PearsonCorrCoef):
    """Pearson correlation ×100; a NaN prediction becomes the farthest end of the range."""


class TaskSpearman(_RegressionPercent, SpearmanCorrCoef):
    """Spearman correlation ×100; a NaN prediction becomes the farthest end of the range."""

    def __init__(self, target_range: tuple[float, float]) -> None:
        # Ranks need every prediction, so torchmetrics warns about buffering them all; evaluation
        # splits here are small (STS-B validation: 1 500), so the warning is only noise.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Metric `SpearmanCorrcoef` will save all targets")
            super().__init__(target_range)


def _build_metric(name: str, task: Task) -> Metric:
    if task.is_regression:
        regression = TaskPearson if name == "pearson" else TaskSpearman
        return regression(task.target_range)  # type: ignore[arg-type]
    if name == "accuracy":
        return TaskAccuracy(task.num_labels)
    if name == "matthews":
        return TaskMatthews(task.num_labels)
    if name == "macro_f1":
        return TaskMacroF1(task.num_labels)
    if name == "em":
        return TaskGroupExactMatch(task.num_labels)
    return TaskBinaryF1() if task.num_labels == 2 else TaskMacroF1(task.num_labels)


def build_task_metrics(task: Task) -> MetricCollection:
    """``task.metric_names`` as one collection; ``compute()`` gives ``{name: value × 100}``.

    Binary F1 (``f1``, ``f1a``) scores the positive class (label index 1); multi-class ``f1`` and
    ``macro_f1`` are macro-averaged (CB); ``em`` needs ``groups=`` in ``update``.
    The collection orders its keys by name, not as in ``metric_names``.
    """
    valid = REGRESSION_METRICS if task.is_regression else CLASSIFICATION_METRICS
    unknown = [name for name in task.metric_names if name not in valid]
    if unknown or not task.metric_names:
        kind = "regression" if task.is_regression else "classification"
        raise ConfigError(
            f"task {task.name!r} asks for metrics {list(task.metric_names)}; valid {kind} metrics: {list(valid)}"
        )
    binary_only = [name for name in task.metric_names if name in BINARY_METRICS]
    if binary_only and task.num_labels != 2:
        raise ConfigError(
            f"task {task.name!r}: metrics {binary_only} need a binary task, it has {task.num_labels} labels"
        )
    if task.is_regression and task.target_range is None:
        raise ConfigError(f"regression task {task.name!r} needs a target_range to score invalid predictions")
    return MetricCollection({name: _build_metric(name, task) for name in task.metric_names}, compute_groups=False)
