"""``pha sweep``: bad search spaces are one line naming the value; processes join one study; a rerun resumes it."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from production_fixtures import PHA, TINY_RUN, pha_env, pha_env_with_tests, pha_error, run_pha

from pha_lightning.cli.sweep_space import make_storage

#: a trial in seconds (production_fixtures.TINY_RUN)
TINY_FIT = [*TINY_RUN, "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
#: a trial is stale when its last heartbeat is more than two intervals (1 s) old; SQLite stores
#: heartbeats to the second, so waiting 2.5 s is not always enough
STALE_S = 3.5


def sweep_file(tmp_path: Path, space: object, **settings: object) -> str:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"space": space, **settings}))
    return str(path)


@pytest.mark.parametrize(
    ("space", "settings", "message"),
    [
        (
            {"model.optim.learning_rate": {"low": 0.01, "high": 0.001}},
            {},
            "sweep.space['model.optim.learning_rate']: low 0.01 must be below high 0.001",
        ),
        (
            {"model.optim.learning_rate": {"low": 0, "high": 0.01, "log": True}},
            {},
            "sweep.space['model.optim.learning_rate']: a log range needs low > 0, got low 0",
        ),
        (
            {"model.optim.learning_rate": {"low": 1e-4, "hi": 0.01}},
            {},
            "sweep.space['model.optim.learning_rate'] has unknown keys ['hi']; valid: type, low, high, log, step, choices",
        ),
        ({"model.optim.learning_rate": 0.001}, {}, "sweep.space['model.optim.learning_rate'] must be a mapping"),
        ({"data.batch_size": {"choices": []}}, {}, "sweep.space['data.batch_size']: choices must be a non-empty list"),
        (
            {"data.temperature": {"choices": [2.0, 0]}},
            {},
            "sweep.space['data.temperature'] value 0: data.temperature must be",
        ),
        (
            {"model.optim.learnin_rate": {"low": 1e-4, "high": 1e-2}},
            {},
            "sweep.space['model.optim.learnin_rate'] is not a setting of pha fit; did you mean 'model.optim.learning_rate'?",
        ),
        (
            {"model.optim.learning_rate": {"low": 1e-4, "high": 1e-2}},
            {"sampler": {"name": "TPE"}},
            "sweep.sampler.name 'TPE' is not an Optuna sampler; valid: BruteForceSampler",
        ),
        (
            {"model.optim.learning_rate": {"low": 1e-4, "high": 1e-2}},
            {"sampler": {"name": "GridSampler"}},
            "GridSampler searches a grid: give model.optim.learning_rate choices, or list its values in sweep.sampler.search_space",
        ),
        (
            {"model.optim.learning_rate": {"low": 1e-4, "high": 1e-2}},
            {"pruner": {"name": "MedianPruner", "n_warmup_step": 3}},
            "sweep.pruner MedianPruner{'n_warmup_step': 3}:",
        ),
        ({}, {}, "sweep.space must map pha fit settings to ranges"),
    ],
)
def test_a_bad_search_space_is_one_line_naming_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny_bert: str, space: object, settings: dict, message: str
) -> None:
    err = pha_error(capsys, "sweep", "--sweep", sweep_file(tmp_path, space, **settings), *TINY_FIT,
                    f"--model.arch.backbone={tiny_bert}")  # fmt: skip
    assert err.startswith("pha: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "runs").exists()  # nothing opened or trained


def test_a_searched_setting_fixed_on_the_command_line_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny_bert: str
) -> None:
    space = {"model.optim.learning_rate": {"low": 1e-4, "high": 1e-2}}
    err = pha_error(capsys, "sweep", "--sweep", sweep_file(tmp_path, space), *TINY_FIT,
                    f"--model.arch.backbone={tiny_bert}", "--model.optim.learning_rate=0.1")  # fmt: skip
    assert (
        "sweep.space['model.optim.learning_rate'] is searched, but --model.optim.learning_rate=0.1 also sets it" in err
    )


def test_help_lists_the_sweep_settings(capsys: pytest.CaptureFixture) -> None:
    from pha_lightning.cli.sweep import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "--sweep.n_trials" in out and "--sweep.storage" in out and "pha fit" in out


def test_a_journal_file_is_one_study_for_every_process_that_opens_it(tmp_path: Path) -> None:
    """Optuna's journal file (for shared file systems): a second storage object on the same file sees
    the first one's trials, as another process would."""
    path = str(tmp_path / "study.journal")
    first = optuna.create_study(storage=make_storage(path), study_name="s", direction="maximize")
    first.add_trial(optuna.trial.create_trial(params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 2)}, value=3.0))  # fmt: skip
    second = optuna.load_study(storage=make_storage(path), study_name="s")
    assert [t.value for t in second.trials] == [3.0] and isinstance(make_storage(path), optuna.storages.JournalStorage)
    assert isinstance(make_storage(str(tmp_path / "s.db")), optuna.storages.RDBStorage)


def finished_lines(output: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"\] trial (\d+) (finished|pruned)", output)}


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str) -> dict:
    """Two processes started together on one SQLite study of three trials."""
    root = tmp_path_factory.mktemp("sweep")
    space = {"model.optim.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}
    args = [
        "sweep",
        "--sweep",
        sweep_file(root, space, pruner={"name": "NopPruner"}),
        "--sweep.n_trials=3",
        f"--sweep.output_dir={root / 'out'}",
        *TINY_FIT,
        f"--model.arch.backbone={tiny_bert}",
    ]
    processes = [
        subprocess.Popen(
            [PHA, *args], cwd=root, env=pha_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=900)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    return {"root": root, "args": args, "outputs": outputs, "out": root / "out"}


def study_of(out: Path) -> optuna.Study:
    return optuna.load_study(storage=f"sqlite:///{out / 'study.db'}", study_name="search")


@pytest.mark.slow
def test_two_processes_join_one_study(joined: dict) -> None:
    study = study_of(joined["out"])
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in trials)
    ran = [finished_lines(output) for output in joined["outputs"]]
    assert all(ran) and not set(ran[0]) & set(ran[1]), ran  # each process ran trials, none ran one twice
    assert set(ran[0]) | set(ran[1]) == {0, 1, 2}
    folders = {t.user_attrs["run_dir"] for t in trials}
    assert len(folders) == 3 and all((Path(f) / "config.yaml").exists() for f in folders)
    for trial in trials:  # the objective is the best validation score the run's checkpointing saw
        assert trial.value == pytest.approx(max(trial.intermediate_values.values()))
        assert sorted(trial.intermediate_values) == [2, 4]
        config = yaml.safe_load((Path(trial.user_attrs["run_dir"]) / "config.yaml").read_text())
        assert config["model"]["optim"]["learning_rate"] == trial.params["model.optim.learning_rate"]
        assert config["test_after_fit"] is False
        assert not list(Path(trial.user_attrs["run_dir"]).glob("test_metrics.json"))
    best = study.best_trial
    text = (joined["out"] / "best.yaml").read_text()
    assert yaml.safe_load(text)["model"]["optim"]["learning_rate"] == best.params["model.optim.learning_rate"]
    table = (joined["out"] / "trials.md").read_text()
    assert all(f"| {n} | complete |" in table for n in range(3)) and "| ok |" in table or "WARNING" not in table
    assert (joined["out"] / "optimization_history.png").stat().st_size > 0


@pytest.mark.slow
def test_a_rerun_resumes_the_study_and_pruning_stops_a_trial(joined: dict) -> None:
    """Asking for four trials runs only the fourth; with a pruner that prunes everything it stops at
    the first validation; asking again runs none."""
    args = [a for a in joined["args"] if not a.startswith("--sweep.n_trials")]
    pruner = ["--sweep.pruner={name: ThresholdPruner, lower: 1000.0}"]
    result = run_pha(*args, "--sweep.n_trials=4", *pruner, cwd=joined["root"])
    assert "3 of 4 trials done or running" in result.stdout
    assert finished_lines(result.stdout) == {3: "pruned"}
    fourth = study_of(joined["out"]).trials[3]
    assert fourth.state.name == "PRUNED" and fourth.user_attrs["steps"] == 2 and list(fourth.intermediate_values) == [2]
    again = run_pha(*args, "--sweep.n_trials=4", cwd=joined["root"])
    assert "4 of 4 trials done or running" in again.stdout and not finished_lines(again.stdout)
    assert len(study_of(joined["out"]).trials) == 4
    assert "| 3 | pruned |" in (joined["out"] / "trials.md").read_text()


def test_a_killed_trial_is_retried_once_per_progress_and_a_diverged_one_never(tmp_path: Path) -> None:
    """The storage's callback for stale trials: a trial whose process died (heartbeats stopped) gets a
    waiting retry with its settings and reports; a diverged trial (failed with an error) gets none;
    a retry that died again before its next validation gets none."""
    from pha_lightning.cli.sweep import RetryKilledTrial

    study = optuna.create_study(storage=make_storage(str(tmp_path / "s.db"), 1, RetryKilledTrial()), study_name="s")

    def dies(attrs: dict, reports: dict[int, float]) -> object:
        def objective(trial: optuna.Trial) -> float:
            trial.suggest_float("x", 0, 1)
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            for step, value in reports.items():
                trial.report(value, step)
            raise SystemExit(9)  # no tell: the trial stays running, as under SIGKILL

        return objective

    with pytest.raises(SystemExit):
        study.optimize(dies({"start_step": 0}, {2: 0.5, 4: 0.6}), n_trials=1)
    study.enqueue_trial({"x": 0.5})  # a diverged trial: failed by its run, not by its heartbeats

    def diverges(trial: optuna.Trial) -> float:
        trial.set_user_attr("error", "the loss is NaN")  # as run_trial records a NonFiniteLossError
        raise FloatingPointError("the loss is NaN")

    study.optimize(diverges, n_trials=1, catch=(FloatingPointError,))
    time.sleep(STALE_S)
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING"]
    retry = trials[2]
    assert retry.user_attrs == {"resumes": 0} and retry.params == trials[0].params
    assert retry.intermediate_values == {2: 0.5, 4: 0.6}
    with pytest.raises(SystemExit):  # the retry dies again before its next validation
        study.optimize(dies({"start_step": 4}, {}), n_trials=1)
    time.sleep(STALE_S)
    optuna.storages.fail_stale_trials(study)
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "FAIL", "FAIL"]


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_trial_from_the_checkpoint(tmp_path: Path, tiny_bert: str) -> None:
    """A sweep process SIGKILLed mid-trial (step 5 of 8, its last.ckpt at step 4): the rerun's trial
    resumes that checkpoint and ends with the best score of an uninterrupted sweep."""
    space = {"model.optim.learning_rate": {"choices": [3e-3]}}
    search = sweep_file(tmp_path, space, sampler={"name": "GridSampler"}, pruner={"name": "NopPruner"})
    fit = [*TINY_FIT, "--trainer.max_steps=8", f"--model.arch.backbone={tiny_bert}"]

    def sweep(out: str, *extra: str) -> list[str]:
        return [PHA, "sweep", "--sweep", search, f"--sweep.output_dir={tmp_path / out}", "--sweep.heartbeat_s=1", *fit, *extra]  # fmt: skip

    kill = '--trainer.callbacks+={"class_path": "kill_callback.KillAtStep", "init_args": {"step": 5}}'
    env = pha_env_with_tests()
    started = [subprocess.Popen(sweep(out, *extra), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for out, extra in (("whole", ()), ("killed", (kill,)))]  # fmt: skip
    outputs = [process.communicate(timeout=900)[0] for process in started]
    assert [p.returncode for p in started] == [0, -signal.SIGKILL], "\n".join(o[-3000:] for o in outputs)
    time.sleep(STALE_S)  # the killed trial is stale
    rerun = run_pha(*sweep("killed")[1:], cwd=tmp_path)
    last = "trial_000/lightning_logs/version_0/checkpoints/last.ckpt"
    assert f"pha sweep: trial 1 resumes trial 0 (killed at step 4) from {last}" in rerun.stdout, rerun.stdout
    killed, resumed = study_of(tmp_path / "killed").get_trials()
    assert killed.state.name == "FAIL" and resumed.state.name == "COMPLETE"
    assert resumed.user_attrs["start_step"] == 4 and resumed.user_attrs["steps"] == 8
    assert resumed.params == killed.params and sorted(resumed.intermediate_values) == [2, 4, 6, 8]
    (whole,) = study_of(tmp_path / "whole").get_trials()
    assert resumed.value == pytest.approx(whole.value, abs=1e-4)
    assert resumed.intermediate_values == pytest.approx(whole.intermediate_values, abs=1e-4)
    table = (tmp_path / "killed" / "trials.md").read_text()
    assert "| 0 | fail (killed; resumed by trial 1) |" in table and "| 1 | complete (resumes trial 0) |" in table
    assert "ckpt_path" not in yaml.safe_load((tmp_path / "killed" / "best.yaml").read_text())


@pytest.mark.slow
def test_sigterm_ends_a_sweep_as_it_ends_pha_fit_and_the_rerun_resumes_at_once(tmp_path: Path, tiny_bert: str) -> None:
    """SIGTERM mid-trial: last.ckpt written, exit status 143, and the trial's retry queued then, so a
    rerun resumes it without waiting for its heartbeats to go stale (30 s)."""
    from pha_lightning.training.checkpoints import checkpoint_step

    space = {"model.optim.learning_rate": {"choices": [3e-3]}}
    search = sweep_file(tmp_path, space, sampler={"name": "GridSampler"}, pruner={"name": "NopPruner"})
    args = ["sweep", "--sweep", search, f"--sweep.output_dir={tmp_path / 'out'}", *TINY_FIT, "--trainer.max_steps=8",
            f"--model.arch.backbone={tiny_bert}"]  # fmt: skip
    mark = tmp_path / "at_step_5"
    marker = '--trainer.callbacks+={"class_path": "kill_callback.MarkAtStep", "init_args": {"step": 5, "path": "%s"}}'
    process = subprocess.Popen([PHA, *args, marker % mark], cwd=tmp_path, env=pha_env_with_tests(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    while not mark.exists() and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 143, output[-3000:]
    last = "trial_000/lightning_logs/version_0/checkpoints/last.ckpt"
    step = checkpoint_step(tmp_path / "out" / last)
    assert step is not None and step >= 5, step
    rerun = run_pha(*args, cwd=tmp_path)
    assert f"pha sweep: trial 1 resumes trial 0 (killed at step {step}) from {last}" in rerun.stdout, rerun.stdout
    assert [t.state.name for t in study_of(tmp_path / "out").get_trials()] == ["FAIL", "COMPLETE"]


@pytest.mark.slow
def test_one_rate_per_sweep_adds_that_rate_to_a_study_with_other_rates(tmp_path: Path, tiny_bert: str) -> None:
    """What the grid's tuning does (benchmarks/sample_efficiency.py, one sweep per new rate so each
    finished trial is saved at once): a one-point grid on a study that already holds another rate's
    trial trains that point only, once."""
    rate = "model.optim.learning_rate"
    space = {rate: {"low": 1e-6, "high": 1.0, "log": True}}

    def sweep_rate(value: float, n_trials: int) -> None:
        grid = {"name": "GridSampler", "search_space": {rate: [value]}}
        path = sweep_file(tmp_path, space, sampler=grid, pruner={"name": "NopPruner"}, n_trials=n_trials)
        args = ["sweep", "--sweep", path, f"--sweep.output_dir={tmp_path / 'out'}", *TINY_FIT]
        run_pha(*args, f"--model.arch.backbone={tiny_bert}", cwd=tmp_path)

    sweep_rate(1e-3, 1)
    sweep_rate(3e-4, 2)
    sweep_rate(3e-4, 2)  # asked again: nothing to do
    trials = study_of(tmp_path / "out").get_trials()
    assert [(t.params[rate], t.state.name) for t in trials] == [(1e-3, "COMPLETE"), (3e-4, "COMPLETE")]
