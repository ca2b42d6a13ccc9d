"""The benchmark scripts: their help, and a tiny sample-efficiency grid end to end on the offline suite."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from studylib.portable import portable_text

pytestmark = pytest.mark.slow  # runs the benchmark scripts end to end

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


def _run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # in this process, as ``python <script> --help`` runs it: a subprocess each cost ~15 s of imports
    monkeypatch.syspath_prepend(str(script.parent))
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code in (None, 0)
    assert "usage:" in capsys.readouterr().out


def test_tiny_sample_efficiency_grid_tunes_lr_writes_table_and_plot_and_resumes(tmp_path: Path) -> None:
    grid = [
        str(ROOT / "benchmarks/sample_efficiency.py"),
        "--config",
        "configs/demo.yaml",
        "--methods",
        "adapter",
        "pha",
        "--n-train",
        "24",
        "--seeds",
        "0",
        "--output-dir",
        str(tmp_path),
        "--tune-lr",
        "1e-3",
        "3e-3",
        "--tune-n-train",
        "24",
        "--",
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=2",
        "--data.tasks=[synth_polarity,synth_score]",
        "--data.eval_batch_size=50",
    ]
    _run(*grid)
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    chosen = json.loads((tmp_path / "chosen_lr.json").read_text())
    # tuning is a pha sweep per method (a grid over the rates, never tested); then the chosen cell runs
    assert [r["run_id"] for r in rows] == [f"{m}-n24-s0-lr{chosen[m]:g}" for m in ("adapter", "pha")]
    for method, row in zip(("adapter", "pha"), rows):
        study = optuna.load_study(
            storage=f"sqlite:///{tmp_path / 'tuning' / 'study.db'}", study_name=f"{method}-n24-s0"
        )
        trials = {t.params["model.optim.learning_rate"]: t for t in study.trials}
        assert sorted(trials) == [1e-3, 3e-3] and all(t.state.name == "COMPLETE" for t in trials.values())
        assert chosen[method] == max(trials, key=lambda lr: trials[lr].value)  # chosen on validation
        assert not list((tmp_path / "tuning").rglob("test_metrics.json"))
        # the sweep's objective is the quantity the rows record: the chosen cell, trained again, agrees
        assert row["best_val_avg"] == pytest.approx(trials[chosen[method]].value, abs=1e-3)
    pha = next(r for r in rows if r["method"] == "pha" and r["learning_rate"] == chosen["pha"])
    adapter = next(r for r in rows if r["method"] == "adapter" and r["learning_rate"] == chosen["adapter"])
    assert {"test/avg", "test/synth_polarity/accuracy", "test/synth_score/pearson"} <= pha["test"].keys()
    assert pha["trainable_params"] > adapter["trainable_params"] > 0
    assert pha["best_step"] in (2, 4) and pha["last_step"] == 4 and pha["health"]["max_top_axis_share"] > 0
    assert "method: pha" in pha["config"] and len(pha["git_commit"]) >= 7
    table = (tmp_path / "table.md").read_text()
    assert "| adapter | 24 | 1 |" in table and "| pha | 24 | 1 |" in table  # the chosen rate's runs only
    difference = pha["test"]["test/avg"] - adapter["test"]["test/avg"]
    assert (
        f"| 24 | pha | adapter | 1 | {difference:+.1f} | {difference:+.1f} | {int(difference >= 0.5)} / {int(abs(difference) < 0.5)} / {int(difference <= -0.5)} |"
        in table
    )
    assert f"| {pha['run_id']} | {chosen['pha']} | {pha['test']['test/avg']:.1f} | {pha['best_step']} / 4 |" in table
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = _run(str(ROOT / "benchmarks/curves.py"), str(tmp_path), "--runs", pha["run_id"]).stdout
    best_val = pha["best_val_avg"]
    assert f"### {pha['run_id']}" in curves and f"best validation average {best_val:.1f} at step" in curves
    # val avg, training loss (none logged in 4 steps of the demo config), health at that validation
    rows = re.findall(r"\| \d+ \| \d+\.\d \| (?:-?\d\.\d{3}|—) \| 0\.\d\d \| \d\.\d\d \|", curves)
    assert len(rows) == 2  # one per validation (steps 2 and 4)
    assert (tmp_path / "curves.png").exists()
    # a saved checkpoint's health, re-measured, equals the callback's report at that step
    run_dir = tmp_path / "runs" / pha["run_id"]
    end = json.loads(next(run_dir.rglob("health.json")).read_text())["end"]
    last = run_dir / "checkpoints" / "last.ckpt"
    _run(str(ROOT / "benchmarks/checkpoint_health.py"), str(last), "--output", str(tmp_path / "health.json"))
    measured = json.loads((tmp_path / "health.json").read_text())[portable_text(str(last))]  # no machine path
    assert measured["step"] == end["step"] == 4
    for key in ("adapter_to_residual", "top_axis_share", "prototype_shift", "generated_between_task_spread"):
        assert measured[key] == pytest.approx(end[key], rel=1e-4), key
    again = _run(*grid).stdout  # finished runs are skipped
    assert again.count("done already, skipped") == 2 and "tuning sweep" not in again  # every rate tried: no sweep
    # retest: the same checkpoint, tested again by the current code, gives the same metrics
    base = grid[: grid.index("--tune-lr")]
    _run(*base, "--retest", pha["run_id"])
    retested = {r["run_id"]: r for r in map(json.loads, (tmp_path / "runs.jsonl").read_text().splitlines())}
    assert retested[pha["run_id"]]["test"] == pytest.approx(pha["test"], abs=1e-4)
    assert (
        retested[pha["run_id"]]["wall_time_s"] == pha["wall_time_s"]
        and len(retested[pha["run_id"]]["retested_commit"]) >= 7
    )
    unknown = subprocess.run(
        [sys.executable, *base, "--retest", "pha-n99-s0"], cwd=ROOT, capture_output=True, text=True
    )
    assert unknown.returncode != 0 and "no finished run ['pha-n99-s0']" in unknown.stderr


def test_arrow_rows_evaluate_the_task_lora_run_of_their_cell(tmp_path: Path) -> None:
    """An arrow row trains nothing: the task_lora run of its cell is trained first, then validated and
    tested as arrow; the row keeps that run's step and size, its own metrics, and is skipped on rerun."""
    study = {  # as configs/studies/modern_*.yaml declare arrow
        "config": "configs/demo.yaml", "output_dir": str(tmp_path), "n_train": [24], "seeds": [0], "rates": [1e-3],
        "tune": {"n_train": 24, "seed": 0}, "methods": {"arrow": {"evaluates": "task_lora"}},
    }  # fmt: skip
    (tmp_path / "study.yaml").write_text(json.dumps(study))
    grid = [
        str(ROOT / "benchmarks/sample_efficiency.py"), "--study", str(tmp_path / "study.yaml"),
        "--", "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--data.eval_batch_size=50",
        "--data.tasks=[synth_polarity,synth_category,synth_score]",
    ]  # fmt: skip
    _run(*grid)
    rows = {r["run_id"]: r for r in map(json.loads, (tmp_path / "runs.jsonl").read_text().splitlines())}
    assert list(rows) == ["task_lora-n24-s0-lr0.001", "arrow-n24-s0-lr0.001"]
    trained, arrow = rows.values()
    assert arrow["evaluated_run"] == trained["run_id"] and arrow["best_step"] == trained["best_step"]
    assert arrow["trainable_params"] == trained["trainable_params"] and arrow["learning_rate"] == 1e-3
    assert {"test/avg", "test/synth_category/accuracy"} <= arrow["test"].keys()
    assert arrow["test"] != trained["test"]  # routed without task labels: not the task_lora model
    assert all("--config=<checkout>/configs/methods/arrow.yaml" in cmd for cmd in arrow["command"])  # portable
    assert json.loads((tmp_path / "chosen_lr.json").read_text())["arrow"] == 1e-3
    again = _run(*grid).stdout  # the tuning study has the rate and the arrow row exists: nothing runs
    assert again.count("done already, skipped") == 1 and "tuning sweep" not in again


def test_tiny_few_shot_transfer_grid(tmp_path: Path) -> None:
    rows = [{"text": f"the {w} was {a}", "label": a} for w in ("cat", "car", "cake") for a in ("good", "bad")] * 8
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = {
        "name": "mine",
        "files": {"all": str(tmp_path / "mine.jsonl")},
        "inputs": ["text"],
        "labels": ["bad", "good"],
    }
    (tmp_path / "specs.yaml").write_text(json.dumps({"data": {"task_specs": [{**spec, "split": {"test": 12}}]}}))
    _run(
        str(ROOT / "benchmarks/few_shot_transfer.py"),
        "--source-config",
        "configs/demo.yaml",
        "--task-specs",
        str(tmp_path / "specs.yaml"),
        "--targets",
        "synth_polarity_heldout",
        "mine",
        "--k",
        "4",
        "--seeds",
        "0",
        "--steps",
        "2",
        "--max-source-length",
        "48",
        "--output-dir",
        str(tmp_path),
        "--",
        "--trainer.max_steps=6",
        "--trainer.val_check_interval=3",
        "--data.eval_batch_size=50",
    )
    every = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    variants = ["pha_top1", "pha_mix", "pha_mean", "pha_random", "adapter", "lora", "task_adapter", "hyperformer"]
    mine = [r for r in every if r["target"] == "mine"]
    assert sorted(r["variant"] for r in mine) == sorted(variants)  # a spec task as a target, from the config
    assert all(set(r["test"]) >= {"test/mine/accuracy", "test/avg"} for r in mine)
    rows = [r for r in every if r["target"] == "synth_polarity_heldout"]
    assert sorted(r["variant"] for r in rows) == sorted(variants)
    assert all("test/synth_polarity_heldout/accuracy" in r["test"] for r in rows)
    table = (tmp_path / "table.md").read_text()
    assert "| synth_polarity_heldout | 4 |" in table
    score = {(r["variant"], r["target"]): r["test"]["test/avg"] for r in every}
    diffs = [score[("pha_top1", t)] - score[("pha_random", t)] for t in ("synth_polarity_heldout", "mine")]
    won, tied = sum(d > 1e-6 for d in diffs), sum(abs(d) <= 1e-6 for d in diffs)
    mean = sum(diffs) / 2
    assert f"| 4 | pha_top1 − pha_random | {mean:+.1f} | {won} / {tied} / {2 - won - tied} | 2 |" in table
    assert "| 4 | pha_top1 − lora |" in table
    rankings = (tmp_path / "rankings.md").read_text()
    assert "**synth_polarity_heldout**, k=4: synth_polarity" in rankings
    assert re.search(r"\| synth_polarity_heldout( \| [01]\.\d\d \| \d+\.\d\d){2} \|", rankings)
    assert all(
        r["tune"] == ("all" if r["variant"] in ("adapter", "lora", "task_adapter") else "hypernetwork") for r in rows
    )
    assert "**mine**, k=4: " in rankings

    elsewhere = tmp_path / "report_only"  # the rows without their source models: a report trains nothing
    elsewhere.mkdir()
    (elsewhere / "runs.jsonl").write_text((tmp_path / "runs.jsonl").read_text())
    script = str(ROOT / "benchmarks/few_shot_transfer.py")
    report = _run(
        script, "--targets", "synth_polarity_heldout", "mine", "--output-dir", str(elsewhere), "--report-only"
    )
    assert "rankings.md not rewritten" in report.stdout and not (elsewhere / "source_pha").exists()
    assert (elsewhere / "table.md").read_text() == table
