"""The sample-efficiency report's paired tables, from hand-made rows (no training)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _report_module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("sample_efficiency", ROOT / "benchmarks/sample_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(method: str, seed: int, rte: float, stsb: tuple[float, float]) -> dict:
    test = {"test/rte/accuracy": rte, "test/stsb/pearson": stsb[0], "test/stsb/spearmanr": stsb[1]}
    test["test/avg"] = (rte + sum(stsb) / 2) / 2
    return {"method": method, "n_train": 100, "seed": seed, "test": test}


def test_per_task_paired_differences_average_each_tasks_metrics_over_shared_seeds() -> None:
    rows = [
        _row("pha", 0, 50.0, (60.0, 62.0)),
        _row("pha", 1, 54.0, (70.0, 70.0)),
        _row("adapter", 0, 56.0, (50.0, 52.0)),
        _row("adapter", 1, 52.0, (60.0, 64.0)),
        _row("adapter", 2, 99.0, (99.0, 99.0)),  # no PHA run with seed 2: not paired, left out
    ]
    table = _report_module().paired_task_differences(rows)
    # rte: ((50 - 56) + (54 - 52)) / 2 = -2; stsb: ((61 - 51) + (70 - 62)) / 2 = +9; avg: (+2 + +5) / 2
    assert "| n_train | baseline | seeds | rte | stsb | avg |" in table
    assert "| 100 | adapter | 2 | -2.0 | +9.0 | +3.5 |" in table
