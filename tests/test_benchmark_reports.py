"""The benchmark scripts' report functions, on hand-made inputs (no training)."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from studylib import grid_report
from studylib.portable import machine_paths, portable_text
from studylib.records import append_row, read_rows
from studylib.runs import best_checkpoint
from studylib.study import known_methods, load_study

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(name: str):  # noqa: ANN202
    """A script of ``benchmarks/`` (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
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
    table = grid_report.paired_task_differences(rows)
    # rte: ((50 - 56) + (54 - 52)) / 2 = -2; stsb: ((61 - 51) + (70 - 62)) / 2 = +9; avg: (+2 + +5) / 2
    assert "| n_train | PHA variant | baseline | seeds | rte | stsb | avg |" in table
    assert "| 100 | pha | adapter | 2 | -2.0 | +9.0 | +3.5 |" in table


def test_each_baseline_is_paired_with_the_pha_variant_of_its_output_structure() -> None:
    rows = [
        _row("pha", 0, 60.0, (60.0, 60.0)),
        _row("adapter", 0, 50.0, (50.0, 50.0)),
        _row("pha_no_ir", 0, 58.0, (58.0, 58.0)),
        _row("pha+label_words", 0, 40.0, (40.0, 40.0)),
        _row("adapter+label_words", 0, 36.0, (36.0, 36.0)),
        _row("pha_lora", 0, 55.0, (55.0, 55.0)),
        _row("lora", 0, 52.0, (52.0, 52.0)),
    ]
    pairs = [(ref, base) for _, ref, base, _ in grid_report.paired_cells({(r["method"], 100, 0) for r in rows})]
    assert sorted(pairs) == [
        ("pha", "adapter"),
        ("pha", "lora"),
        ("pha", "pha_lora"),
        ("pha", "pha_no_ir"),
        ("pha+label_words", "adapter+label_words"),
        ("pha_lora", "adapter"),
        ("pha_lora", "lora"),
    ]
    table = grid_report.paired_differences(rows)
    assert "| 100 | pha+label_words | adapter+label_words | 1 | +4.0 | +4.0 | 1 / 0 / 0 |" in table
    assert "| 100 | pha_lora | lora | 1 | +3.0 | +3.0 | 1 / 0 / 0 |" in table
    assert "| 100 | pha | lora | 1 | +8.0 | +8.0 | 1 / 0 / 0 |" in table
    assert "| pha | pha+label_words |" not in table  # never across output structures


def test_a_candidate_is_paired_with_every_method_and_rows_of_two_folders_are_reported_once(tmp_path: Path) -> None:
    report = _benchmark("sample_efficiency")
    rows = [
        _row("pha_quiet", 0, 62.0, (60.0, 60.0)),
        _row("pha", 0, 60.0, (60.0, 60.0)),
        _row("pha_lora", 0, 55.0, (55.0, 55.0)),
        _row("adapter", 0, 50.0, (50.0, 50.0)),
    ]
    keys = {(r["method"], 100, 0) for r in rows}
    pairs = sorted((ref, base) for _, ref, base, _ in grid_report.paired_cells(keys, ("pha_quiet",)))
    assert [pair for pair in pairs if pair[0] == "pha_quiet"] == [
        ("pha_quiet", "adapter"),
        ("pha_quiet", "pha"),
        ("pha_quiet", "pha_lora"),
    ]
    assert ("pha", "pha_quiet") in pairs  # the usual pairs stay
    table = grid_report.paired_differences(rows, candidates=("pha_quiet",))
    assert "| 100 | pha_quiet | adapter | 1 | +11.0 | +11.0 | 1 / 0 / 0 |" in table
    assert "| 100 | pha_quiet | pha_lora | 1 | +6.0 | +6.0 | 1 / 0 / 0 |" in table

    ours, theirs = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    ours.write_text("".join(json.dumps({**r, "run_id": r["method"]}) + "\n" for r in rows[1:]))
    theirs.write_text(json.dumps({**rows[0], "run_id": "pha_quiet"}) + "\n")
    assert sorted(r["method"] for r in report.reported_rows(ours, [theirs])) == sorted(r["method"] for r in rows)
    with pytest.raises(SystemExit, match="run pha is in both"):
        report.reported_rows(ours, [ours])
    with pytest.raises(SystemExit, match="no file .*missing.jsonl"):
        report.reported_rows(ours, [tmp_path / "missing.jsonl"])


def test_a_rate_is_chosen_among_every_rate_tried_on_the_tuning_cell(tmp_path: Path) -> None:
    """Rows of the cell join its study as finished trials (those of other cells do not); the study's
    best trial is the choice, also after an edge check's new rate joins the same study."""
    report = _benchmark("sample_efficiency")

    def tuned(lr: float, val: float, n_train: int = 100, seed: int = 0, method: str = "task_adapter") -> dict:
        rid = report.run_id(method, n_train, seed, lr)
        return {
            "run_id": rid,
            "method": method,
            "n_train": n_train,
            "seed": seed,
            "learning_rate": lr,
            "best_val_avg": val,
        }

    rows = [
        tuned(1e-4, 53.4),  # tried in an earlier invocation (an edge check)
        tuned(3e-4, 52.9),
        tuned(1e-3, 51.5),
        tuned(3e-3, 60.0, n_train=500),  # another cell: not a tuning run
        tuned(3e-3, 61.0, seed=1),
        tuned(1e-3, 51.1, method="adapter"),
    ]
    storage = tmp_path / "tuning" / "study.db"
    study = report.tuning_study(storage, "task_adapter", 100, 0)
    report.import_rows(study, rows, "task_adapter", 100, 0)
    report.import_rows(study, rows, "task_adapter", 100, 0)  # a rerun adds nothing twice
    assert sorted(t.params[report.LR] for t in study.trials) == [1e-4, 3e-4, 1e-3]
    assert study.best_trial.params[report.LR] == 1e-4
    edge = optuna.trial.create_trial(
        params={report.LR: 3e-5},
        distributions={report.LR: optuna.distributions.FloatDistribution(**report.LR_RANGE)},
        value=53.5,
    )
    report.tuning_study(storage, "task_adapter", 100, 0).add_trial(edge)  # what a sweep's new trial adds
    assert report.tuning_study(storage, "task_adapter", 100, 0).best_trial.params[report.LR] == 3e-5


def test_finished_tuning_trials_outlive_the_study_database(tmp_path: Path) -> None:
    """A fresh checkout has no tuning/study.db, only the committed tuning/trials.jsonl: its rows join
    the new study as finished trials (no machine path in them), so the same rates are not trained again
    and the choice is the same; a second lane's save keeps the first lane's rows."""
    module = _benchmark("sample_efficiency")
    storage = tmp_path / "tuning" / "study.db"
    for method, results in {"poly": {3e-4: 50.0, 1e-3: 52.5}, "mhr": {3e-4: 53.0}}.items():
        study = module.tuning_study(storage, method, 100, 0)
        for lr, value in results.items():
            dist = optuna.distributions.FloatDistribution(**module.LR_RANGE)
            study.add_trial(
                optuna.trial.create_trial(params={module.LR: lr}, distributions={module.LR: dist}, value=value)
            )
    study_config = load_study(ROOT / "configs" / "studies" / "modern_glue100.yaml")

    def lane(*methods: str) -> argparse.Namespace:
        return argparse.Namespace(output_dir=tmp_path, study=study_config, methods=list(methods))

    module.save_trials(lane("poly"), 100, 0)
    module.save_trials(lane("mhr"), 100, 0)
    saved = module.read_rows(tmp_path / "tuning" / module.TRIALS)
    assert [(r["method"], r["learning_rate"], r["best_val_avg"]) for r in saved] == [
        ("mhr", 3e-4, 53.0), ("poly", 3e-4, 50.0), ("poly", 1e-3, 52.5)
    ]  # fmt: skip
    assert str(tmp_path) not in (tmp_path / "tuning" / module.TRIALS).read_text()
    fresh = module.tuning_study(tmp_path / "elsewhere" / "study.db", "poly", 100, 0)
    module.import_rows(fresh, saved, "poly", 100, 0)
    assert sorted(t.params[module.LR] for t in fresh.trials) == [3e-4, 1e-3]
    assert fresh.best_trial.params[module.LR] == 1e-3


def test_each_tuning_trial_is_saved_before_the_next_rate_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``pha sweep`` per new rate, and trials.jsonl holds every finished trial before the next rate
    starts: a grid killed during its second rate (a session's end) keeps the first."""
    module = _benchmark("sample_efficiency")
    study_config = load_study(ROOT / "configs" / "studies" / "modern_glue100.yaml")
    args = argparse.Namespace(output_dir=tmp_path, study=study_config, methods=["poly"], extra=[])
    seen_before: list[list[float]] = []

    def fake_sweep(cmd: list[str], log: Path, what: str) -> None:  # what `pha sweep` adds: one finished trial
        settings = yaml.safe_load(Path(next(a for a in cmd if a.startswith("--sweep=")).split("=", 1)[1]).read_text())
        (rate,) = settings["sampler"]["search_space"][module.LR]
        seen_before.append([r["learning_rate"] for r in module.read_rows(tmp_path / "tuning" / module.TRIALS)])
        dist = optuna.distributions.FloatDistribution(**module.LR_RANGE)
        study = module.tuning_study(tmp_path / "tuning" / "study.db", "poly", 100, 0)
        study.add_trial(
            optuna.trial.create_trial(params={module.LR: rate}, distributions={module.LR: dist}, value=rate * 1e4)
        )

    monkeypatch.setattr(module, "run_logged", fake_sweep)
    assert module.tune_cell("poly", 100, 0, args, [], [3e-4, 1e-3]) == 1e-3
    assert seen_before == [[], [3e-4]]
    assert module.tune_cell("poly", 100, 0, args, [], [3e-4, 1e-3]) == 1e-3 and len(seen_before) == 2  # nothing new


@pytest.mark.parametrize("folder", ["converged", "many_tasks"])
def test_the_tuning_studies_choose_the_recorded_rates(tmp_path: Path, folder: str) -> None:
    """The recorded cells (every rate's best validation average in runs.jsonl) in tuning studies:
    each study's best trial is the rate chosen_lr.json recorded for that method."""
    report = _benchmark("sample_efficiency")
    rows = list(report.finished_runs(ROOT / "results" / folder / "runs.jsonl").values())
    recorded = json.loads((ROOT / "results" / folder / "chosen_lr.json").read_text())
    storage = tmp_path / "study.db"
    chosen = {}
    for method in recorded:
        study = report.tuning_study(storage, method, 100, 0)
        report.import_rows(study, rows, method, 100, 0)
        assert len(study.trials) >= 2, method  # a choice among rates, not one rate
        chosen[method] = study.best_trial.params[report.LR]
    assert chosen == recorded


def test_edge_checks_step_beyond_a_choice_at_the_edge_until_it_is_bracketed() -> None:
    """--bracket: a best rate at the top (or bottom) of those tried gets the next grid rate beyond it;
    an interior choice, a single rate tried, or the grid's end gets none."""

    def tuned(method: str, lr: float, val: float) -> dict:
        return {"method": method, "n_train": 100, "seed": 0, "learning_rate": lr, "best_val_avg": val}

    module = _benchmark("sample_efficiency")
    rows = [
        tuned("poly", 3e-4, 50.0), tuned("poly", 1e-3, 52.0),  # best at the top: try 3e-3
        tuned("mhr", 3e-4, 53.0), tuned("mhr", 1e-3, 52.0),  # best at the bottom: try 1e-4
        tuned("pha", 3e-4, 50.0), tuned("pha", 1e-3, 55.0), tuned("pha", 3e-3, 54.0),  # bracketed
        tuned("adapter", 1e-3, 50.0),  # one rate: nothing to bracket
        tuned("lora", 3e-3, 40.0), tuned("lora", 1e-2, 41.0),  # the grid ends at 1e-2
    ]  # fmt: skip
    checks = module.edge_checks(rows, ["poly", "mhr", "pha", "adapter", "lora"], 100, 0)
    assert checks == [("poly", 100, 0, 3e-3), ("mhr", 100, 0, 1e-4)]


@pytest.mark.parametrize("setting", ["glue100", "glue500", "many100"])
def test_arrow_routes_over_the_library_task_lora_tuned_and_is_never_tuned_itself(setting: str) -> None:
    """Arrow's library is task_lora's runs at the rate task_lora chose (as a peft user builds one):
    tuning Arrow apart would repeat task_lora's tuning trainings at the same rates and seed."""
    module = _benchmark("sample_efficiency")
    study = load_study(ROOT / "configs" / "studies" / f"modern_{setting}.yaml")
    assert study.methods["arrow"].evaluates == "task_lora" and study.methods["arrow"].rate_of == "task_lora"
    assert module.lr_for("arrow", {"task_lora": 1e-3, "poly": 3e-3}, study) == 1e-3
    args = argparse.Namespace(study=study, methods=["task_lora", "arrow", "poly"])
    assert module.tuned_methods(args) == ["task_lora", "poly"]
    assert module.method_args("arrow") == [f"--config={ROOT / 'configs' / 'methods' / 'arrow.yaml'}"]


def test_pooled_spread_tells_collapsed_features_from_varied_ones() -> None:
    module = _benchmark("few_shot_transfer")

    class Pooled(torch.nn.Module):  # the batch is the pooled features
        def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"pooled": batch}

    gen = torch.Generator().manual_seed(0)
    steps = torch.linspace(-1, 1, 16).unsqueeze(1)
    direction, offset = torch.nn.functional.normalize(torch.randn(1, 8, generator=gen), dim=-1), torch.full((1, 8), 0.5)
    collapsed = offset + steps * direction  # every example on one line
    share, ratio = module.pooled_spread(Pooled(), [collapsed[:8], collapsed[8:]])
    assert share == pytest.approx(1.0) and ratio == pytest.approx(float(offset.norm() / steps.pow(2).mean().sqrt()))
    varied = torch.randn(400, 8, generator=gen)  # isotropic: each of 8 axes holds about 1/8
    share, ratio = module.pooled_spread(Pooled(), [varied])
    assert share < 0.25 and ratio < 0.2


def test_the_arms_report_rewrites_the_transfer_defaults_table_from_its_committed_rows(tmp_path: Path) -> None:
    study = ROOT / "results" / "transfer_defaults"
    for rows in study.glob("*/*/runs.jsonl"):
        copy = tmp_path / rows.relative_to(study)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(rows.read_text())
    module = _benchmark("few_shot_transfer")
    module.write_arms_report(tmp_path, [ROOT / "results" / "many_tasks" / "transfer" / "runs.jsonl"])
    assert (tmp_path / "table.md").read_text() == (study / "table.md").read_text()
    with pytest.raises(SystemExit, match="--held-out-runs: no file .*absent.jsonl"):
        module.write_arms_report(tmp_path, [tmp_path / "absent.jsonl"])
    with pytest.raises(SystemExit, match="--arms-report: no .*empty/<target>/<run folder>/runs.jsonl"):
        module.write_arms_report(tmp_path / "empty", [])
    longer = {**read_rows(rows)[0], "steps": 150}  # another budget in the same study: not comparable
    append_row(tmp_path / "stsb_genre" / "fresh" / "runs.jsonl", longer)
    with pytest.raises(SystemExit, match=r"mix \(steps, lr\) \[\(30, 0.001\), \(150, 0.001\)\]"):
        module.write_arms_report(tmp_path, [])


def test_debian_sections_drop_ambiguous_synopses_and_keep_each_once() -> None:
    module = _benchmark("debian_sections")
    dump = (
        "Package: a\nSection: games\nDescription: a puzzle game\n  long text: ignored\n\n"
        "Package: b\nSection: contrib/games\nDescription: a puzzle game\n\n"  # the same synopsis again
        "Package: c\nSection: games\nDescription: mail and games\n\n"
        "Package: d\nSection: mail\nDescription: mail and games\n\n"  # two sections: ambiguous, dropped
        "Package: e\nSection: libs\nDescription: a library\n\n"  # not one of the six sections
        "Package: f\nSection: sound\nDescription: an audio player\n"
    )
    records = module.records(dump)
    assert records[1] == {"section": "games", "synopsis": "a puzzle game"}  # the component is cut
    assert sorted(map(tuple, (r.values() for r in module.build(records)))) == [
        ("a puzzle game", "games"),
        ("an audio player", "sound"),
    ]


def test_best_checkpoint_is_the_one_monitored_file_and_two_are_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("last.ckpt", "last-v1.ckpt", "step000400.ckpt"):
        (folder / name).touch()
    assert best_checkpoint(tmp_path / "run") == folder / "step000400.ckpt"
    (folder / "step000100.ckpt").touch()  # a second record, e.g. a run folder resumed after a move
    with pytest.raises(SystemExit, match=r"expected one best checkpoint .*step000100.ckpt.*step000400.ckpt"):
        best_checkpoint(tmp_path / "run")


def test_phas_loss_variants_take_phas_rate_and_the_study_does_not_tune_them() -> None:
    report = _benchmark("sample_efficiency")
    args = report.parse_args(["--study", str(ROOT / "configs" / "studies" / "converged.yaml")])
    variants = ["pha_no_ir", "pha_no_pro", "pha_no_contrastive", "pha_pro_infonce"]
    chosen = {"pha": 1e-3, "adapter": 3e-4}
    assert [report.lr_for(m, chosen, args.study) for m in variants] == [1e-3] * len(variants)
    assert report.lr_for("adapter+label_words", chosen, args.study) == 3e-4
    assert report.lr_for("pha_lora", chosen, args.study) is None  # a method of its own: tuned, never PHA's rate
    untuned = set(args.methods) - set(report.tuned_methods(args))
    assert untuned == {*variants, "pha+label_words", "adapter+label_words"}
    assert {report.sizes(m, args)[0] for m in untuned} == {100} and report.sizes("pha", args) == [100, 500]
    # a method is its override file(s) of configs/methods/ and nothing else
    assert report.method_args("pha_no_ir+label_words") == [
        f"--config={ROOT / 'configs' / 'methods' / name}.yaml" for name in ("pha_no_ir", "label_words")
    ]


def test_every_method_in_the_plot_gets_its_own_colour_and_phas_family_its_own_line() -> None:
    methods = sorted(known_methods())[:20]  # the palette has 20 colours
    styles = grid_report.method_styles(methods)
    assert len({style["color"] for style in styles.values()}) == len(methods)
    assert {styles[m]["linestyle"] for m in methods if m.startswith("pha")} == {"-"}
    assert {styles[m]["linestyle"] for m in methods if not m.startswith("pha")} == {"--"}


def test_mechanism_screening_reads_validation_beside_phas_converged_rows() -> None:
    """The screening table shows each row's validation average, its difference to PHA's converged
    row at the same size and seed, and its health; test scores never appear in it."""
    module = _benchmark("sample_efficiency")
    args = module.parse_args(["--study", str(ROOT / "configs" / "studies" / "mechanisms.yaml")])
    assert args.study.reference_rates == ROOT / "results" / "converged" / "chosen_lr.json"
    assert args.screen_against == ROOT / "results" / "converged" and module.tuned_methods(args) == []
    converged = module.chosen_rates(ROOT / "results" / "mechanisms", args.study)["pha"]
    assert {module.lr_for(m, {"pha": converged}, args.study) for m in args.methods} == {converged}  # never tuned

    def row(method: str, n_train: int, val: float, seed: int = 0, **health) -> dict:
        test = {"test/avg": 12.345}
        return {"method": method, "n_train": n_train, "seed": seed, "best_val_avg": val, "test": test,
                "learning_rate": 1e-3, "best_step": 600, "last_step": 1000, "health": health, "git_commit": "abcdef123"}  # fmt: skip

    references = [row("pha", 100, 50.8, max_top_axis_share=0.55, max_adapter_to_residual=0.96),
                  row("pha_lora", 100, 51.5), row("adapter", 100, 51.1), row("pha", 100, 49.0, seed=1)]  # fmt: skip
    rows = [row("pha_zero_scale", 100, 52.3, between_task_spread=[0.41, 0.52, 0.6])]
    table = grid_report.screening_table(rows, references)
    assert "| 100 | pha_zero_scale | 0.001 | 52.3 | +1.5 | 600 / 1000 | — | — | 0.41 0.52 0.60 | abcdef12 |" in table
    assert "| 100 | pha | 0.001 | 50.8 | +0.0 | 600 / 1000 | 0.55 | 0.96 | — | abcdef12 |" in table
    assert "| 100 | pha_lora |" in table and "adapter |" not in table  # PHA's and PHA-LoRA's rows only
    assert "12.3" not in table and table.count("\n| 100 |") == 3  # no test score, seed 0 only


def test_health_summary_keeps_the_between_task_spread(tmp_path: Path) -> None:
    end = {"top_axis_share": {"rte": 0.3, "cola": 0.6}, "adapter_to_residual": [0.1, 1.2], "warnings": ["loud"]}
    path = tmp_path / "health.json"
    path.write_text(json.dumps({"end": {**end, "generated_between_task_spread": [0.4, 0.38]}}))
    summary = _benchmark("sample_efficiency").health_summary(path)
    assert summary == {"max_top_axis_share": 0.6, "max_adapter_to_residual": 1.2, "max_lora_to_base": None,
                       "between_task_spread": [0.4, 0.38], "warnings": ["loud"]}  # fmt: skip
    path.write_text(json.dumps({"end": end}))  # a report of a method without generated adapters
    assert _benchmark("sample_efficiency").health_summary(path)["between_task_spread"] is None


def test_peers_throughputs_count_real_tokens_and_ratios_pair_rounds() -> None:
    peers = _benchmark("peers")
    steps = [{"wall_s": 2.0, "cpu_s": 1.0, "real_tokens": 300, "padded_tokens": 1000}] * 2
    row = peers.derived({"steps": steps, "eval_examples": 50, "eval_s": 5.0, "eval_cpu_s": 2.0})
    assert row["train_tok_per_cpu_s"] == 300 and row["train_tok_per_s"] == 150 and row["real_share"] == 0.3
    assert row["eval_ex_per_cpu_s"] == 25 and row["eval_ex_per_s"] == 10
    rows = [
        {"variant": "ours", "round": 0, "x": 6.0},
        {"variant": "peer", "round": 0, "x": 2.0},
        {"variant": "ours", "round": 1, "x": 4.0},
        {"variant": "peer", "round": 1, "x": 4.0},
        {"variant": "ours", "round": 2, "x": 9.0},  # its peer did not run in round 2: not a ratio
    ]
    assert peers.ratio(rows, "ours", "peer", "x") == "2.00 (1.00–3.00)"
    assert peers.ratio(rows, "ours", "absent", "x") == "–"


def test_the_in_process_serving_report_gives_cpu_per_request_by_stage_and_the_ratio_to_peft(tmp_path: Path) -> None:
    report = _benchmark("serve_load")

    def row(server: str, predict: float) -> dict:  # 100 requests: 0.1 ms decoding each, ``predict`` s in all
        return {"server": server, "batch_size": 1, "requests": 100, "decode": 0.01, "predict": predict, "encode": 0.0}

    rows = [row("pha", 1.99), row("pha", 2.19), row("pha", 0.99), row("pha_named", 0.99), row("peft", 3.99)]
    rows += [row("peft", 3.99), row("peft", 5.99)]
    args = argparse.Namespace(
        batch_sizes=[1], backbone="b", tasks=["t"], note="", examples=100, repeats=3, accelerator="cpu"
    )
    args.output = tmp_path / "in_process.md"
    report.write_in_process_report(args, rows, (99, 100), (1.0, 2.0))
    table = args.output.read_text()
    assert "| 1 | pha | 20.00 [10.00–22.00] | 0.50 | 0.10 | 19.90 | 0.00 |" in table
    assert "| 1 | pha_named | 10.00 [10.00–10.00] | 0.25 | 0.10 | 9.90 | 0.00 |" in table
    assert "| 1 | peft | 40.00 [40.00–60.00] | 1.00 | 0.10 | 39.90 | 0.00 |" in table
    assert "equal the peft server's on 99 of 100 requests" in table
    records = args.output.with_suffix(".jsonl").read_text()
    assert len(records.splitlines()) == len(rows) + 1
    assert machine_paths(table + records) == []  # written portable (studylib.reports)


def test_the_process_report_sums_each_servers_memory_and_ranks_the_http_processes_own_cpu(tmp_path: Path) -> None:
    import cProfile

    report = _benchmark("serve_load")

    def check_body() -> int:  # what only pha's HTTP process runs
        return sum(range(20_000))

    for name, pid, work in (("pha", 1, check_body), ("peft", 2, lambda: None)):
        profile = cProfile.Profile()
        profile.runcall(work)
        profile.dump_stats(tmp_path / f"{name}.prof.{pid}")
    profile = report.profile_table(tmp_path, {"pha": 10, "peft": 10}, top=50)
    own = {row[0]: row[1:] for row in profile}
    assert [key for key in own if "check_body" in key] and float(own["all functions"][0]) > 0
    body = next(value for key, value in own.items() if "check_body" in key)
    assert float(body[0]) > 0 and body[1] == "0.000"  # ms per request; peft never ran it

    def role(server: str, role: str, pss: float) -> dict:
        return {
            "server": server,
            "concurrency": 8,
            "role": role,
            "processes": 1,
            "requests": 10,
            "rss_mb": 2 * pss,
            "pss_mb": pss,
            "uss_mb": pss / 2,
            "cpu_ms_per_request": 1.0,
        }

    rows = [role("pha", "main", 100), role("pha", "worker", 300), role("peft", "main", 90), role("peft", "worker", 350)]
    steps = [{"step": "import pha_lightning.cli.serve", "rss_mb": 24, "uss_mb": 17, "imported": ["jsonargparse"]}]
    args = argparse.Namespace(backbone="b", tasks=["t"], note="", seconds=20, warmup=3, concurrency=[8])
    args.output = tmp_path / "processes.md"
    report.write_processes_report(args, steps, rows, profile, (1.0, 2.0))
    table = args.output.read_text()
    assert "| import pha_lightning.cli.serve | 24 | 17 | jsonargparse |" in table
    assert "| 8 | pha | worker | 1 | 600 | 300 | 150 | 1.00 |" in table
    assert "Concurrency 8: PSS over all processes, pha 400 MB, peft 440 MB." in table
    assert machine_paths(table + args.output.with_suffix(".jsonl").read_text()) == []


def test_routing_measures_count_groups_abstentions_and_distinguishable_tasks_apart() -> None:
    from pha_lightning.model.calibration import Calibration

    rules = _benchmark("routing_rules")
    calibration = Calibration(["a", "b", "c"], 0.05, 0.9, 0.95, 0.2, [["b", "c"]])
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.1],  # a, routed right
            [0.9, 0.1, 0.1],  # true b, routed to a: wrong
            [0.1, 0.5, 0.9],  # true b, goes to the group {b, c}: abstained, right at the level of groups
            [0.1, 0.9, 0.5],  # true c, group: abstained, right for groups
            [0.1, 0.15, 0.1],  # true a, unlike every task (below 0.2): abstained, not covered
        ],
        dtype=torch.float64,
    )
    targets = torch.tensor([0, 1, 1, 2, 0])
    result = rules.measure(scores, targets, calibration)
    assert (result["all_precision"], result["all_coverage"]) == (0.5, 2 / 5)
    assert (result["distinguishable_precision"], result["distinguishable_coverage"]) == (1.0, 1 / 2)  # task a
    assert (result["group_precision"], result["group_coverage"]) == (3 / 4, 4 / 5)
    assert result["per_task"]["b"] == {"precision": 0.0, "coverage": 0.5}
    # a probe's scores, the floor on the prototype cosines (as shipped): example 0 is unlike every prototype
    similarity = scores.clone()
    similarity[0] = torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64)
    floored = rules.measure(scores, targets, calibration, similarity=similarity)
    assert (floored["all_precision"], floored["all_coverage"]) == (0.0, 1 / 5)


def test_knn_rule_scores_each_task_by_its_nearest_training_examples() -> None:
    rules = _benchmark("routing_rules")
    train = {"z": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), "task_ids": torch.tensor([0, 1, 1])}
    score = rules.knn_rule(train, 2, k=1, chunk=1)
    got = score({"z": torch.tensor([[0.8, 0.6], [0.0, 2.0]])})
    # y's nearest example to [0.8, 0.6] is [0.6, 0.8]; [0, 2] is [0, 1] itself (cosine, not dot product)
    torch.testing.assert_close(got, torch.tensor([[0.8, 0.96], [0.0, 1.0]]))
    two = rules.knn_rule(train, 2, k=2)({"z": torch.tensor([[0.8, 0.6]])})
    torch.testing.assert_close(two, torch.tensor([[0.8, (0.6 + 0.96) / 2]]))  # a task with one example: k=1


def test_an_unlabelled_bank_holds_the_draws_up_to_its_size() -> None:
    rules = _benchmark("routing_rules")
    emb = {"unlabelled": {"z": torch.arange(5.0)[:, None], "task_ids": torch.tensor([0, 1, 0, 1, 1])}}
    emb["unlabelled"]["bound"] = torch.tensor([2, 2, 5, 5, 5])
    assert rules.bank_of(emb, 2)["z"].flatten().tolist() == [0.0, 1.0]
    assert rules.bank_of(emb, 5)["task_ids"].tolist() == [0, 1, 0, 1, 1]
    assert rules.bank_of(emb | {"train": {"z": "labelled"}}, None) == {"z": "labelled"}


def test_committed_results_hold_no_machine_path_and_no_lane_log() -> None:
    """Results are committed portable (``<data dir>``, ``<checkout>/…``), without lane logs or scripts."""
    listed = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = [ROOT / name for name in listed.stdout.splitlines()]
    assert len(files) > 100  # the index and every folder's records
    lane = [f.name for f in files if f.suffix in (".out", ".log", ".sh")]
    assert lane == [], f"lane logs or scripts committed: {lane}"
    text = [f for f in files if f.suffix in (".md", ".json", ".jsonl", ".yaml", ".txt", ".csv")]
    held = {str(f.relative_to(ROOT)): machine_paths(f.read_text())[:2] for f in text if machine_paths(f.read_text())}
    assert held == {}, f"machine paths in committed results (python benchmarks/portable_results.py): {held}"


def test_machine_paths_become_placeholders_and_rows_are_written_portable(tmp_path: Path) -> None:
    line = (
        '["/work/grid/.venv/bin/pha", "fit", "--config=/work/grid35/configs/methods/pha.yaml", '
        '"--data.data_dir=/srv/glue_data", "--trainer.default_root_dir=/tmp/tmpab12/runs/x", '
        '"/home/me/venv-adapters/bin/python", "data_dir: /work/shared/data\\nseed: 0", "/work/shared/data/glue/rte"]'
    )
    assert json.loads(portable_text(line)) == [
        "<checkout>/.venv/bin/pha", "fit", "--config=<checkout>/configs/methods/pha.yaml",
        "--data.data_dir=<data dir>", "--trainer.default_root_dir=<tmp>/tmpab12/runs/x",
        "<venv>/bin/python", "data_dir: <data dir>\nseed: 0", "<data dir>/glue/rte",
    ]  # fmt: skip
    assert portable_text("ran from `/work/wt-conv10` (e9d41ef)") == "ran from `<checkout>` (e9d41ef)"
    assert portable_text("a/b <checkout>/configs x.yaml") == "a/b <checkout>/configs x.yaml"  # already portable
    append_row(tmp_path / "runs.jsonl", {"run_id": "r", "command": ["pha", f"--ckpt_path={ROOT}/results/x.ckpt"]})
    assert read_rows(tmp_path / "runs.jsonl") == [
        {"run_id": "r", "command": ["pha", "--ckpt_path=<checkout>/results/x.ckpt"]}
    ]


def test_a_study_names_its_bad_keys_and_methods(tmp_path: Path) -> None:
    base = {"config": "configs/demo.yaml", "output_dir": str(tmp_path), "methods": ["pha"]}
    for change, message in (
        ({"seed": [0]}, "unknown key 'seed'; valid: config, methods"),
        ({"methods": ["pha", "pha_nope"]}, "method 'pha_nope': no configs/methods/pha_nope.yaml; methods: adapter"),
        ({"methods": {"pha_no_ir": {"rate_of": "pha"}}}, "takes the rate of 'pha', which is neither in the study"),
        ({"methods": {"pha": {"rate": 1}}}, "method 'pha': unknown key 'rate'"),
    ):
        path = tmp_path / "study.yaml"
        path.write_text(json.dumps({**base, **change}))
        with pytest.raises(SystemExit, match=message):
            load_study(path)


def _imports(path: Path) -> set[str]:
    """The top-level names of the modules ``path`` imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_benchmark_imports_another_and_the_library_needs_no_pha_lightning() -> None:
    """Scripts share code through studylib only; its core (runs, records, reports, …) stands alone."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    stems = {path.stem for path in scripts}
    crossing = {path.name: sorted(_imports(path) & stems) for path in scripts if _imports(path) & stems}
    assert crossing == {}
    assert [p.name for p in scripts if "sys.path" in p.read_text()] == []
    library = sorted((ROOT / "benchmarks" / "studylib").glob("*.py"))
    bound = {"checkpoints.py", "routing.py", "serving_model.py", "transfer.py", "workloads.py"}  # + transfer runs
    assert bound <= {p.name for p in library}
    assert [p.name for p in library if p.name not in bound and "pha_lightning" in _imports(p)] == []
    assert {p.name for p in library if _imports(p) & stems} == set()


def test_label_free_predictions_of_misrouted_examples_count_as_wrong() -> None:
    from pha_lightning.data.catalog import get_task

    bench = _benchmark("routing_vs_arrow")
    values = torch.tensor([1.0, 0.0, 1.0, 1.0])
    got = bench.label_free(values, routed=torch.tensor([2, 2, 0, 1]), own=torch.tensor([2, 2, 2, 2]))
    assert got[:2].tolist() == [1.0, 0.0] and got[2:].isnan().all()
    task = get_task("sst2")  # binary, accuracy
    targets = torch.tensor([1.0, 0.0, 1.0, 1.0] * 5)
    # every prediction right, but half the examples routed elsewhere: 50 % accuracy
    assert bench.task_score(task, got.repeat(5), targets, torch.full((20,), -1)) == pytest.approx(50.0)
    assert bench.task_score(task, got[:2], targets[:2], torch.full((2,), -1)) is None  # too few to score


@pytest.mark.slow
def test_arrow_weights_are_each_examples_token_weights_averaged_in_length_chunks(
    pretrained_tiny: dict[str, str],
) -> None:
    """The weights the benchmark records per example and site are Arrow's coefficients of the
    example's own (unpadded) tokens, averaged, whichever length chunk the example ran in."""
    from lightning.pytorch import seed_everything

    from pha_lightning.model.config import PHAConfig
    from pha_lightning.model.pha import PHAModel
    from tests.model.test_peft_export import TASKS, mixed_batch

    bench = _benchmark("routing_vs_arrow")
    seed_everything(0)
    config = PHAConfig(backbone=pretrained_tiny["bert"], tasks=TASKS, method="arrow", lora_rank=4, chunk_cost_tokens=1)
    model = PHAModel(config).double().eval()
    with torch.no_grad():
        for p in model.lora_bank.b:
            p.normal_(0.0, 0.3)
    batch = mixed_batch(pretrained_tiny["bert"])
    weights = bench.ArrowWeights(model)
    seen: list[torch.Tensor] = []  # the first site's whole-batch input, unchunked
    site = bench.arrow_sites(model)[0]
    assert (site.shape_set, site.index) == (0, 0) and len(weights.sites) == 2 * model.backbone.config.num_hidden_layers
    with torch.no_grad():
        weights.start(len(batch["task_ids"]))
        model({**batch, "row": torch.arange(len(batch["task_ids"]))})  # chunked
        chunked = weights.mean.clone()
        hook = site.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
        model({**batch, "row": torch.arange(len(batch["task_ids"]))}, chunked=False)
        hook.remove()
    weights.remove()
    torch.testing.assert_close(chunked, weights.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked.sum(-1), torch.ones(chunked.shape[:2], dtype=chunked.dtype))
    x, mask = seen[0], batch["attention_mask"]
    coeff = model.lora_bank.arrow(config.arrow_top_k, 1.0, len(x)).coefficients(x, 0, 0).reshape(*x.shape[:2], -1)
    for i in range(len(x)):
        expected = coeff[i, mask[i].bool()].mean(0).float()
        torch.testing.assert_close(chunked[i, weights.sites.index(site)], expected, rtol=1e-5, atol=1e-6)


def test_routing_vs_arrow_scores_routing_and_predictions_per_task() -> None:
    """Arrow's example is routed to the task with the largest mean weight over sites; a misrouted
    example's label-free prediction is wrong although its labelled one is right."""
    from pha_lightning.data.catalog import get_task
    from pha_lightning.model.calibration import RoutingConfig

    bench = _benchmark("routing_vs_arrow")
    tasks = [get_task("sst2"), get_task("rte")]
    own = torch.tensor([0] * 40 + [1] * 40)
    targets = torch.arange(80).remainder(2).float()
    weights = torch.nn.functional.one_hot(own, 2).float()[:, None].repeat(1, 3, 1) * 0.8 + 0.1  # (80, 3 sites, 2)
    weights[:10] = torch.tensor([0.3, 0.7])  # the first 10 sst2 examples lean to rte at every site
    split = {"task_ids": own, "weights": weights, "top1": weights.round()}
    test = split | {"targets": targets, "groups": torch.full((80,), -1), "labelled": targets}
    test |= {"routed_adapters": targets, "label_free": bench.label_free(targets, weights.mean(1).argmax(-1), own)}
    result = bench.evaluate(tasks, "arrow", {"validation": split, "test": test}, RoutingConfig())
    sst2, rte = result["per_task"]["sst2"], result["per_task"]["rte"]
    assert (sst2["routed_right"], rte["routed_right"]) == (0.75, 1.0)
    assert sst2["own_weight"] == pytest.approx((30 * 0.9 + 10 * 0.3) / 40)
    assert (sst2["labelled"], sst2["label_free"], rte["label_free"]) == (100.0, 75.0, 100.0)
    assert result["overall"]["label_free"] == pytest.approx(87.5)
    # calibrated on the same examples: the misrouted ones are the least sure, so abstained; the rest right
    assert sst2["calibrated"]["precision"] == 1.0 and sst2["calibrated"]["label_free"] == 100.0
