"""Every GLUE/SuperGLUE task's metrics against a direct scikit-learn / scipy computation on random
predictions, invalid generations included (data.md "Metrics")."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from pha_lightning.data.catalog import benchmark_tasks, get_task
from pha_lightning.data.tasks import INVALID
from pha_lightning.training.metrics import build_task_metrics

GLUE_TASKS, SUPERGLUE_TASKS = benchmark_tasks("glue"), benchmark_tasks("superglue")

CLASSIFICATION = [name for name in (*GLUE_TASKS, *SUPERGLUE_TASKS) if name not in ("stsb", "multirc")]


def _reference(name: str, target: np.ndarray, preds: np.ndarray, num_labels: int) -> float:
    if name == "accuracy":
        return accuracy_score(target, preds)
    if name == "matthews":
        return matthews_corrcoef(target, preds)
    if name == "macro_f1" or (name == "f1" and num_labels > 2):
        return f1_score(target, preds, average="macro")
    return f1_score(target, preds)  # binary: F1 of the positive class


def _generations(task, target: np.ndarray, rng: np.random.Generator) -> list[str]:
    """What a T5 model might generate: mostly label strings, ~25 % garbage."""
    labels = task.label_names
    out = []
    for t in target:
        roll = rng.random()
        if roll < 0.5:
            out.append(labels[int(t)])
        elif roll < 0.75:
            out.append(labels[rng.integers(len(labels))])
        else:
            out.append(rng.choice(["", "yes", "entailment", "2.5", " 1", str(len(labels))]))
    return out


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_metrics_match_sklearn_with_invalid_generations(name: str) -> None:
    task = get_task(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    n = 240
    target = rng.integers(0, task.num_labels, n)
    texts = _generations(task, target, rng)
    parsed = [task.parse_generation(text) for text in texts]
    preds = np.array([INVALID if value is None else value for value in parsed])
    assert np.isnan(preds).any() and not np.isnan(preds).all()
    # data.md: an invalid generation is wrong; for F1 (and Matthews) it is the opposite of the target
    valid = ~np.isnan(preds)
    reference_preds = np.where(valid, np.nan_to_num(preds), (target + 1) % task.num_labels).astype(int)

    metrics = build_task_metrics(task)
    for chunk in np.array_split(np.arange(n), 4):
        metrics.update(
            torch.tensor(preds[chunk], dtype=torch.float32), torch.tensor(target[chunk], dtype=torch.float32)
        )
    result = {key: float(value) for key, value in metrics.compute().items()}
    assert set(result) == set(task.metric_names)
    for metric in task.metric_names:
        expected = 100 * _reference(metric, target, reference_preds, task.num_labels)
        assert result[metric] == pytest.approx(expected, abs=1e-3), metric


def test_stsb_pearson_spearman_match_scipy_with_invalid_generations() -> None:
    task = get_task("stsb")
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 5, 300)
    texts = [f"{min(5, max(0, t + rng.normal(0, 1))):.1f}" for t in target]
    for index in rng.choice(300, 40, replace=False):
        texts[index] = rng.choice(["", "five", "3.2.1", "nan", "inf"])
    parsed = [task.parse_generation(text) for text in texts]
    preds = np.array([INVALID if value is None else value for value in parsed])
    assert np.isnan(preds).sum() == 40
    reference = np.where(np.isnan(preds), np.where(target < 2.5, 5.0, 0.0), preds)
    metrics = build_task_metrics(task)
    metrics.update(torch.tensor(preds, dtype=torch.float32), torch.tensor(target, dtype=torch.float32))
    result = {key: float(value) for key, value in metrics.compute().items()}
    assert result["pearson"] == pytest.approx(100 * pearsonr(target, reference)[0], abs=1e-2)
    assert result["spearman"] == pytest.approx(100 * spearmanr(target, reference)[0], abs=1e-2)


def _multirc_reference(target: np.ndarray, preds: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    valid = np.isin(preds, [0, 1])
    answer_preds = np.where(valid, preds, 1 - target).astype(int)
    f1a = f1_score(target, answer_preds)
    exact = [np.all(answer_preds[groups == g] == target[groups == g]) for g in np.unique(groups)]
    return 100 * f1a, 100 * float(np.mean(exact))


def test_multirc_f1_over_answers_and_exact_match_per_question() -> None:
    task = get_task("multirc")
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 6, 120)  # answer options per question
    groups = np.repeat(np.arange(120) * 7 + 3, sizes)  # arbitrary, non-contiguous question ids
    n = len(groups)
    target = rng.integers(0, 2, n)
    preds = np.where(rng.random(n) < 0.8, target, 1 - target).astype(float)
    preds[rng.random(n) < 0.1] = INVALID
    order = rng.permutation(n)  # a question's answers may arrive in different batches
    metrics = build_task_metrics(task)
    for chunk in np.array_split(order, 5):
        metrics.update(
            torch.tensor(preds[chunk], dtype=torch.float32),
            torch.tensor(target[chunk], dtype=torch.float32),
            groups=torch.tensor(groups[chunk]),
        )
    result = {key: float(value) for key, value in metrics.compute().items()}
    f1a, em = _multirc_reference(target, preds, groups)
    assert result == pytest.approx({"f1a": f1a, "em": em}, abs=1e-3)
    assert 0 < result["em"] < result["f1a"]


def test_exact_match_without_groups_is_an_error() -> None:
    metrics = build_task_metrics(get_task("multirc"))
    with pytest.raises(ValueError, match="exact match per group needs groups="):
        metrics.update(torch.tensor([1.0]), torch.tensor([1.0]))


def test_groups_keyword_reaches_only_the_metrics_that_take_it() -> None:
    # The module passes groups= to every collection of a batch that has groups; others ignore it.
    metrics = build_task_metrics(get_task("cb"))
    metrics.update(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 1.0]), groups=torch.tensor([0, 1]))
    assert float(metrics.compute()["accuracy"]) == pytest.approx(50.0)


def test_cb_f1_is_macro_averaged_over_three_classes() -> None:
    metrics = build_task_metrics(get_task("cb"))
    target = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    preds = torch.tensor([0.0, 0.0, 1.0, 0.0, 2.0, INVALID])
    metrics.update(preds, target)
    reference = f1_score(target.int().numpy(), [0, 0, 1, 0, 2, 0], average="macro")
    assert float(metrics.compute()["macro_f1"]) == pytest.approx(100 * reference, abs=1e-3)
