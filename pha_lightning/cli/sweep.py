"""``pha sweep``: search ``pha fit`` settings with Optuna.

    pha sweep --sweep configs/sweeps/demo_lr.yaml --config configs/demo.yaml [--sweep.n_trials 8] [fit options]

The ``--sweep`` file (and ``--sweep.*`` options) declare the search (:class:`SweepConfig`); every
other option is ``pha fit``'s, shared by all trials. Each trial is a normal ``pha fit`` run in its
own folder (``<output_dir>/trial_NNN``), never tested; its objective is the best validation score
its checkpointing selected on (``checkpoint.monitor``, ``val/avg``), and the pruner reads that
metric at every validation. Processes given the same storage join one study, and a rerun
resumes it; a trial whose process was killed is retried with its settings from its ``last.ckpt``
(:class:`RetryKilledTrial`). At the end: ``best.yaml`` (the best trial's resolved config, for ``pha fit``),
``trials.md`` (every trial with its training-health summary) and Optuna's plots.
docs/usage.md, "Sweeps".
"""

from __future__ import annotations

from pha_lightning.errors import SIGTERM_EXIT, PHAError

try:
    import optuna
except ModuleNotFoundError:  # an optional extra
    raise PHAError("pha sweep needs Optuna: pip install 'pha-lightning[sweep]' (or pip install optuna)") from None

import difflib
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from optuna.trial import FrozenTrial, TrialState

from pha_lightning.cli.app import PHAArgumentParser
from pha_lightning.cli.sweep_space import (
    Parameter,
    SweepConfig,
    grid_size,
    make_pruner,
    make_sampler,
    make_storage,
    parse_space,
)
from pha_lightning.errors import ConfigError
from pha_lightning.files import atomic_replacement, atomic_write_text
from pha_lightning.training.callbacks.non_finite import NonFiniteLossError
from pha_lightning.training.callbacks.trial_pruning import TrialPruning
from pha_lightning.training.checkpoints import checkpoint_step, resolve_last_checkpoint
from pha_lightning.training.outputs import run_folder

#: trials run when neither the sweep nor a grid says how many
DEFAULT_TRIALS = 10


@dataclass(frozen=True)
class Sweep:
    """A sweep ready to run: its settings resolved, its space checked against ``pha fit``."""

    settings: SweepConfig
    parameters: list[Parameter]
    fit_args: list[str]
    base: Namespace  # the fit configuration every trial starts from
    output_dir: Path
    study_name: str
    storage: str
    n_trials: int

    @property
    def monitor(self) -> str:
        return self.base.checkpoint.monitor

    @property
    def direction(self) -> str:
        return "maximize" if self.base.checkpoint.mode == "max" else "minimize"


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--sweep`` / ``--sweep.*`` options (with their values) apart from ``pha fit``'s."""
    sweep, fit = [], []
    index = 0
    while index < len(argv):
        token = argv[index]
        is_sweep = token.split("=", 1)[0] == "--sweep" or token.startswith("--sweep.")
        takes_next = "=" not in token and index + 1 < len(argv) and not argv[index + 1].startswith("--")
        width = 2 if takes_next and token.startswith("--") else 1
        (sweep if is_sweep else fit).extend(argv[index : index + width])
        index += width
    return sweep, fit


def sweep_parser() -> PHAArgumentParser:
    parser = PHAArgumentParser(
        prog="pha sweep",
        description="Search pha fit settings with Optuna: --sweep FILE (or --sweep.* options) declares the "
        "search; every other option is pha fit's, shared by all trials (e.g. --config configs/demo.yaml). "
        "docs/usage.md, 'Sweeps'.",
    )
    parser.add_class_arguments(SweepConfig, "sweep")
    return parser


def option(name: str, value: Any) -> str:
    """``--name=value`` as ``pha fit`` reads it."""
    if isinstance(value, bool) or value is None:
        return f"--{name}={json.dumps(value)}"
    return f"--{name}={value!r}" if isinstance(value, float) else f"--{name}={value}"


def parse_fit(fit_args: list[str]) -> tuple[Namespace, Any]:
    """The fit configuration of ``fit_args``, checked as ``pha fit`` checks it, and its parser."""
    from pha_lightning.cli.app import TasksCLI
    from pha_lightning.cli.checks import check_run_settings
    from pha_lightning.data.datamodule import PHADataModule
    from pha_lightning.training.system import PHAModule

    cli = TasksCLI(
        PHAModule,
        PHADataModule,
        args=fit_args,
        run=False,
        seed_everything_default=False,
        parser_class=PHAArgumentParser,
        parser_kwargs={"prog": "pha sweep"},
    )
    check_run_settings(cli.config)
    return cli.config, cli.parser


def check_parameters(parameters: list[Parameter], fit_args: list[str], base: Namespace, parser: Any) -> None:
    """Every searched setting is a ``pha fit`` setting, not also fixed on the command line, and the
    ends of its range (or each choice) are valid values of it."""
    from pha_lightning.cli.checks import check_run_settings

    for parameter in parameters:
        if parameter.name not in base:
            close = difflib.get_close_matches(parameter.name, list(base.keys()), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (`pha fit --help` lists them)"
            raise ConfigError(f"sweep.space[{parameter.name!r}] is not a setting of pha fit{hint}")
        fixed = [t for t in fit_args if t.split("=", 1)[0] == f"--{parameter.name}"]
        if fixed:
            raise ConfigError(
                f"sweep.space[{parameter.name!r}] is searched, but {fixed[0]} also sets it: drop one of them"
            )
        for value in parameter.values_to_check():
            try:
                check_run_settings(parser.parse_args([*fit_args, option(parameter.name, value)]))
            except ConfigError as err:
                raise ConfigError(f"sweep.space[{parameter.name!r}] value {value!r}: {err}") from None


def prepare(argv: Sequence[str]) -> Sweep:
    """Parse and check everything before a study is opened or a trial starts."""
    sweep_args, fit_args = split_arguments(argv)
    if {"-h", "--help"} & set(argv):  # the sweep's own options; pha fit --help lists the others
        sweep_parser().parse_args(["--help"])
    parsed = sweep_parser().parse_args(sweep_args)
    settings = SweepConfig(**{k: v for k, v in parsed.sweep.as_dict().items() if not k.startswith("__")})
    parameters = parse_space(settings.space)
    base, parser = parse_fit(fit_args)
    if not str(base.checkpoint.monitor).startswith("val/"):
        raise ConfigError(
            f"a sweep's objective is a validation score: checkpoint.monitor must be a val/ metric, got {base.checkpoint.monitor!r}"
        )
    check_parameters(parameters, fit_args, base, parser)
    source = parsed.sweep.get("__path__")
    study_name = settings.study_name or (Path(str(source)).stem if source else "sweep")
    output_dir = Path(settings.output_dir or Path("runs") / "sweeps" / study_name).absolute()
    sampler = make_sampler(settings.sampler, parameters, 0)  # its settings' errors now, not after the first trial
    make_pruner(settings.pruner)
    grid = isinstance(sampler, optuna.samplers.GridSampler)
    n_trials = settings.n_trials or (grid_size(parameters, settings.sampler) if grid else DEFAULT_TRIALS)
    if n_trials < 1:
        raise ConfigError(f"sweep.n_trials must be >= 1, got {n_trials}")
    storage = settings.storage or str(output_dir / "study.db")
    return Sweep(settings, parameters, fit_args, base, output_dir, study_name, storage, n_trials)


def suggest(trial: optuna.Trial, parameter: Parameter) -> Any:
    """The trial's value of one parameter, through the public ``suggest_*`` of its distribution."""
    dist = parameter.distribution
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(parameter.name, dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(parameter.name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(parameter.name, dist.low, dist.high, step=dist.step, log=dist.log)


def health_warnings(log_dir: Path) -> list[str]:
    """The end-of-fit warnings of a run's ``health.json`` (training/health.py)."""
    path = log_dir / "health.json"
    return json.loads(path.read_text())["end"]["warnings"] if path.exists() else []


class RetryKilledTrial:
    """The storage's callback for a trial whose process was killed (its heartbeats stopped) or
    stopped: a waiting trial with the same settings and validation reports, ``resumes`` naming it,
    which :func:`resume_options` starts from the killed trial's latest checkpoint. A retry killed
    again before its next validation (no progress) is not retried again."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reported = max(trial.intermediate_values, default=-1)
        if "resumes" in trial.user_attrs and reported <= trial.user_attrs.get("start_step", 0):
            print(
                f"pha sweep: trial {trial.number} was killed again before its next validation: "
                "its settings are not tried again",
                flush=True,
            )
            return
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={"resumes": trial.number},
                intermediate_values=trial.intermediate_values,  # the pruner reads the whole curve
            )
        )


def resume_options(trial: optuna.Trial, sweep: Sweep) -> list[str]:
    """``--ckpt_path`` of the latest checkpoint of the killed trial this trial retries (none when it
    retries none, or the killed one saved none), said in one line."""
    number = trial.user_attrs.get("resumes")
    if number is None:
        return []
    killed = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == number)
    run_dir, checkpoint_dir = killed.user_attrs.get("run_dir"), killed.user_attrs.get("checkpoint_dir")
    latest = resolve_last_checkpoint(run_dir, checkpoint_dir) if run_dir else None
    if latest is None:
        print(f"pha sweep: trial {trial.number} retries trial {number} (killed before its first checkpoint) from the start", flush=True)  # fmt: skip
        return []
    step = checkpoint_step(Path(latest))
    print(f"pha sweep: trial {trial.number} resumes trial {number} (killed at step {step}) from {_relative(latest, sweep.output_dir)}", flush=True)  # fmt: skip
    return [f"--ckpt_path={latest}"]


def run_trial(trial: optuna.Trial, sweep: Sweep) -> float:
    """One ``pha fit`` of the trial's settings in its own folder; its best validation score."""
    from pha_lightning.cli.app import run_cli

    values = {parameter.name: suggest(trial, parameter) for parameter in sweep.parameters}
    root = sweep.output_dir / f"trial_{trial.number:03d}"
    args = [
        "fit",
        *sweep.fit_args,
        *(option(name, value) for name, value in values.items()),
        "--test_after_fit=false",  # a sweep never sees test
        f"--trainer.default_root_dir={root}",
        "--checkpoint.dirpath=null",  # each trial's checkpoints in its own run folder
        *resume_options(trial, sweep),
    ]
    pruning = TrialPruning(trial, sweep.monitor)
    command_line, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when given args beside sys.argv's
    try:
        cli = run_cli(args, callbacks=[pruning])
    except NonFiniteLossError as err:
        trial.set_user_attr("error", str(err))
        raise
    finally:
        sys.argv = command_line
    log_dir = Path(run_folder(cli.trainer))
    trial.set_user_attr("steps", cli.trainer.global_step)
    trial.set_user_attr("health", health_warnings(log_dir))
    if pruning.pruned_at is not None:
        raise optuna.TrialPruned(f"pruned at step {pruning.pruned_at}")
    best = cli.trainer.checkpoint_callback.best_model_score
    if best is None:
        raise ConfigError(f"trial {trial.number}: no validation ran, so there is no {sweep.monitor} to optimise")
    return float(best)


def health_summary(warnings_: list[str]) -> str:
    """Each warning's headline (before its first colon), or ``ok``."""
    return "; ".join(w.split(":", 1)[0] for w in warnings_) or "ok"


def trial_scores(trial: FrozenTrial, sweep: Sweep) -> tuple[float | None, int | None]:
    """(best validation score, the step of it) of a trial, from the scores reported at each
    validation (a pruned trial has no value of its own)."""
    reports = trial.intermediate_values
    if not reports:
        return trial.value, None
    step = (max if sweep.direction == "maximize" else min)(reports, key=reports.__getitem__)
    return reports[step], step


def describe(trial: FrozenTrial, sweep: Sweep) -> str:
    """One progress line for a finished trial."""
    settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    score, step = trial_scores(trial, sweep)
    state = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(
        trial.state, trial.state.name.lower()
    )
    result = f"{sweep.monitor} {score:.2f}" if score is not None else trial.user_attrs.get("error", "no score")
    where = f" at step {step}" if step is not None else ""
    return f"trial {trial.number} {state}: {result}{where} ({settings}); health: {health_summary(trial.user_attrs.get('health', []))}"


def progress(sweep: Sweep):  # noqa: ANN201 (an Optuna callback)
    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        line = describe(trial, sweep)
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if done:
            best = study.best_trial
            line += f" | best so far: trial {best.number}, {sweep.monitor} {best.value:.2f}"
        print(f"[{counted(study)}/{sweep.n_trials}] {line}", flush=True)

    return report


#: the states a study's trial count includes (a FAIL counts only when the run diverged, see :func:`counted`)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards ``n_trials``: finished, pruned, diverged (a NaN loss) or
    running. In a database a killed process's trial stops counting once its heartbeats stop (it is
    failed and its settings tried again); in a journal file it stays running."""
    return trial.state in COUNTED and (trial.state != TrialState.FAIL or "error" in trial.user_attrs)


def counted(study: optuna.Study) -> int:
    return sum(counts(trial) for trial in study.get_trials(deepcopy=False))


def run_sweep(sweep: Sweep) -> optuna.Study:
    """Join (or create) the study and run trials until it holds ``n_trials``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    retry = RetryKilledTrial()
    storage = make_storage(sweep.storage, sweep.settings.heartbeat_s, retry)
    study = optuna.create_study(
        storage=storage,
        study_name=sweep.study_name,
        direction=sweep.direction,
        pruner=make_pruner(sweep.settings.pruner),
        load_if_exists=True,
    )
    joined = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(sweep.settings.sampler, sweep.parameters, joined)
    print(
        f"study {sweep.study_name!r} ({sweep.storage}): {counted(study)} of {sweep.n_trials} trials "
        f"done or running; {sweep.direction} the best {sweep.monitor}; trials under {sweep.output_dir}",
        flush=True,
    )
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a killed process's trial: failed, its settings retried
        if counted(study) >= sweep.n_trials:
            break
        running: list[optuna.Trial] = []

        def objective(trial: optuna.Trial) -> float:
            running.append(trial)
            return run_trial(trial, sweep)

        try:
            study.optimize(
                objective,
                n_trials=1,
                catch=(NonFiniteLossError,),
                callbacks=[progress(sweep)],
                gc_after_trial=True,
            )
        except SystemExit as stop:  # pha fit's SIGTERM exit (last.ckpt written): failed and retried now
            if stop.code == SIGTERM_EXIT and running:  # not a heartbeat grace period later
                # told through a study without its sampler: a GridSampler would stop the study here
                bare = optuna.load_study(study_name=sweep.study_name, storage=storage, sampler=optuna.samplers.RandomSampler())  # fmt: skip
                bare.tell(running[0].number, state=TrialState.FAIL)
                retry(study, next(t for t in study.get_trials() if t.number == running[0].number))
                print(f"pha sweep: trial {running[0].number} stopped; run the same pha sweep command again "
                      "to resume it from its last.ckpt", file=sys.stderr, flush=True)  # fmt: skip
            raise
    return study


def trials_table(study: optuna.Study, sweep: Sweep) -> str:
    """Every trial: state, settings, best validation score and its step, steps run, health, folder."""
    names = [parameter.name for parameter in sweep.parameters]
    lines = [
        f"| trial | state | {' | '.join(names)} | best {sweep.monitor} | at step | steps | health | run folder |",
        "|" + "---|" * (len(names) + 7),
    ]
    trials = study.get_trials(deepcopy=False)
    resumed_by = {t.user_attrs["resumes"]: t.number for t in trials if "resumes" in t.user_attrs}
    for trial in trials:
        score, step = trial_scores(trial, sweep)
        cells = [
            str(trial.number),
            trial_state(trial, resumed_by.get(trial.number)),
            *(_value(trial.params.get(name)) for name in names),
            "" if score is None else f"{score:.2f}",
            "" if step is None else str(step),
            str(trial.user_attrs.get("steps", "")),
            health_summary(trial.user_attrs.get("health", [])) if "health" in trial.user_attrs else "",
            _relative(trial.user_attrs.get("run_dir", ""), sweep.output_dir),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def trial_state(trial: FrozenTrial, resumed_by: int | None) -> str:
    """A trial's state, a killed one's (failed without an error) and a resuming one's said so."""
    state = trial.state.name.lower()
    if trial.state == TrialState.FAIL and "error" not in trial.user_attrs:
        state += " (killed" + (f"; resumed by trial {resumed_by})" if resumed_by is not None else ")")
    return state + (f" (resumes trial {trial.user_attrs['resumes']})" if "resumes" in trial.user_attrs else "")


def _value(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _relative(path: str, root: Path) -> str:
    return str(Path(path).relative_to(root)) if path and Path(path).is_relative_to(root) else path


def best_config(study: optuna.Study, sweep: Sweep) -> str | None:
    """The best trial's resolved config as a ``pha fit`` config file: its own run folder's
    ``config.yaml``, writing to ``<output_dir>/best`` and testing after fit as the base config says."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    config = yaml.safe_load((Path(best.user_attrs["run_dir"]) / "config.yaml").read_text())
    config["trainer"]["default_root_dir"] = str(sweep.output_dir / "best")
    config["test_after_fit"] = bool(sweep.base.get("test_after_fit"))
    config.pop("ckpt_path", None)  # a trial that resumed a killed one: best.yaml trains from the start
    header = (
        f"# pha sweep {sweep.study_name}: trial {best.number} of {len(study.trials)}, best {sweep.monitor} "
        f"{best.value:.4f}\n# settings searched: {json.dumps(best.params)}\n"
        f"#   pha fit --config {sweep.output_dir / 'best.yaml'}\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def write_plots(study: optuna.Study, output_dir: Path) -> list[Path]:
    """Optuna's matplotlib plots where they say something: the history, each parameter against the
    score (two finished trials or more), and the validation curves the pruner read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    wanted = {"optimization_history": plots.plot_optimization_history}
    if len(finished) >= 2:
        wanted["slice"] = plots.plot_slice
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        wanted["intermediate_values"] = plots.plot_intermediate_values
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in wanted.items():
            plot(study)
            figure = plt.gcf()
            figure.set_size_inches(max(6.4, figure.get_size_inches()[0]), 4.8)
            figure.tight_layout()
            with atomic_replacement(output_dir / f"{name}.png") as temporary:
                figure.savefig(temporary, format="png", dpi=110)
            plt.close("all")
            written.append(output_dir / f"{name}.png")
    return written


def write_results(study: optuna.Study, sweep: Sweep) -> None:
    table = trials_table(study, sweep)
    print(table, flush=True)
    written = [
        atomic_write_text(sweep.output_dir / "trials.md", f"# Sweep {sweep.study_name}\n\n{table}\n", "trials table")
    ]
    config = best_config(study, sweep)
    if config is None:
        print("no trial has completed yet: no best.yaml", flush=True)
    else:
        best = study.best_trial
        print(f"best: trial {best.number}, {sweep.monitor} {best.value:.2f}, {best.params}", flush=True)
        for warning in best.user_attrs.get("health", []):
            print(f"  health warning of the best trial: {warning}", flush=True)
        written.append(atomic_write_text(sweep.output_dir / "best.yaml", config, "best trial's config"))
        written += write_plots(study, sweep.output_dir)
    print("wrote " + ", ".join(str(path) for path in written), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[2:] if argv is None else argv)
    sweep = prepare(argv)
    write_results(run_sweep(sweep), sweep)
