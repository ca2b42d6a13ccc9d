from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from pha_lightning.data.catalog import get_task
from pha_lightning.data.synthetic import SyntheticTask, draw_polarity
from pha_lightning.data.tasks import INVALID
from pha_lightning.training.metrics import build_task_metrics

SIZES = {"train": 1, "validation": 1, "test": 1}


def _classification_task(num_labels: int, metric_names: tuple[str, ...]) -> SyntheticTask:
    labels = tuple(str(i) for i in range(num_labels))
    return SyntheticTask("cls", draw_polarity, ("sentence",), labels, metric_names, SIZES)


def _random_classification(num_labels: int, n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets and predictions with ~20 % invalid predictions: NaN, -1 and out-of-range."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_labels, n).astype(float)
    preds = np.where(rng.random(n) < 0.6, target, rng.integers(0, num_labels, n)).astype(float)
    invalid = rng.random(n) < 0.2
    preds[invalid] = rng.choice([INVALID, -1.0, float(num_labels)], invalid.sum())
    return preds, target


def _reference_classes(preds: np.ndarray, target: np.ndarray, num_labels: int) -> np.ndarray:
    """data.md: an invalid prediction is wrong; for binary tasks it is the opposite of the target."""
    valid = np.isin(preds, np.arange(num_labels))
    return np.where(valid, preds, (target + 1) % num_labels).astype(int)


def _compute(task, preds: np.ndarray, target: np.ndarray, chunks: int = 3) -> dict[str, float]:
    metrics = build_task_metrics(task)
    for p, t in zip(np.array_split(preds, chunks), np.array_split(target, chunks)):
        metrics.update(torch.tensor(p, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    return {name: float(value) for name, value in metrics.compute().items()}


def test_binary_f1_and_accuracy_match_sklearn_with_invalid_as_opposite() -> None:
    preds, target = _random_classification(2)
    result = _compute(get_task("synth_match"), preds, target)
    reference = _reference_classes(preds, target, 2)
    assert set(result) == {"f1", "accuracy"}
    assert result["f1"] == pytest.approx(100 * f1_score(target, reference), abs=1e-3)
    assert result["accuracy"] == pytest.approx(100 * accuracy_score(target, reference), abs=1e-3)
    # Invalid predictions must not be scored as if the model had predicted a label by chance.
    assert result["accuracy"] < 100 * accuracy_score(target, np.nan_to_num(preds, nan=0.0).clip(0, 1))


@pytest.mark.parametrize("num_labels", [2, 3])
def test_matthews_matches_sklearn(num_labels: int) -> None:
    preds, target = _random_classification(num_labels, seed=num_labels)
    result = _compute(_classification_task(num_labels, ("matthews",)), preds, target)
    reference = _reference_classes(preds, target, num_labels)
    assert result["matthews"] == pytest.approx(100 * matthews_corrcoef(target, reference), abs=1e-3)


def test_multiclass_accuracy_and_macro_f1_match_sklearn() -> None:
    preds, target = _random_classification(3, seed=5)
    result = _compute(_classification_task(3, ("accuracy", "f1")), preds, target)
    reference = _reference_classes(preds, target, 3)
    assert result["accuracy"] == pytest.approx(100 * accuracy_score(target, reference), abs=1e-3)
    assert result["f1"] == pytest.approx(100 * f1_score(target, reference, average="macro"), abs=1e-3)


def test_all_invalid_predictions_score_zero_accuracy() -> None:
    target = np.array([0.0, 1.0, 1.0, 0.0])
    result = _compute(get_task("synth_polarity"), np.full(4, INVALID), target, chunks=1)
    assert result == {"accuracy": 0.0}


def test_regression_matches_scipy_with_nan_as_farthest_end_of_range() -> None:
    rng = np.random.default_rng(1)
    target = rng.uniform(0, 5, 200)
    preds = np.clip(target + rng.normal(0, 1.0, 200), -1, 6)
    preds[rng.random(200) < 0.15] = INVALID
    result = _compute(get_task("synth_score"), preds, target)
    reference = np.where(np.isnan(preds), np.where(target < 2.5, 5.0, 0.0), preds)
    assert set(result) == {"pearson", "spearman"}
    assert result["pearson"] == pytest.approx(100 * pearsonr(target, reference)[0], abs=1e-2)
    assert result["spearman"] == pytest.approx(100 * spearmanr(target, reference)[0], abs=1e-2)


def test_negative_regression_predictions_are_real_predictions() -> None:
    # -1.0 is no invalid marker for regression: a head may output it.
    target = np.array([0.0, 1.0, 2.0, 3.0])
    result = _compute(get_task("synth_score"), np.array([-1.0, 0.0, 1.0, 2.0]), target, chunks=1)
    assert result["pearson"] == pytest.approx(100.0)


def test_reset_starts_a_new_evaluation() -> None:
    metrics = build_task_metrics(get_task("synth_polarity"))
    metrics.update(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    metrics.reset()
    metrics.update(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert float(metrics.compute()["accuracy"]) == pytest.approx(100.0)


def test_unknown_metric_name_is_rejected_with_valid_names() -> None:
    task = _classification_task(2, ("accuracy", "bleu"))
    with pytest.raises(
        ValueError,
        match=r"'bleu'.*valid classification metrics: \['accuracy', 'f1', 'macro_f1', 'matthews', 'f1a', 'em'\]",
    ):
        build_task_metrics(task)


def test_regression_task_without_range_is_rejected() -> None:
    task = SyntheticTask("reg", draw_polarity, ("sentence",), (), ("pearson",), SIZES)
    with pytest.raises(ValueError, match="regression task 'reg' needs a target_range"):
        build_task_metrics(task)


def test_matthews_of_a_constant_predictor_is_zero_as_in_scikit_learn() -> None:
    """torchmetrics gives 3.67 (×100) here; GLUE's scikit-learn scorer gives 0."""
    from sklearn.metrics import matthews_corrcoef

    from pha_lightning.training.metrics import TaskMatthews

    target = torch.tensor([0.0] * 160 + [1.0] * 362)
    metric = TaskMatthews(num_classes=2)
    metric.update(torch.ones(522), target)
    assert metric.compute().item() == 0.0 == matthews_corrcoef(target.numpy(), torch.ones(522).numpy())
