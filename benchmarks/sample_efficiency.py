"""The paper's sample-efficiency study: methods × n_train × seeds, each run through the ``pha`` CLI.

    python benchmarks/sample_efficiency.py --study configs/studies/converged.yaml \\
        --methods pha task_adapter -- --data.data_dir=<data dir>

A study config (configs/studies/, :mod:`studylib.study`) names the base config, the protocol
(configs/protocols/), the methods (each configs/methods/<name>.yaml; ``<method>+label_words``
composes label_words.yaml after it), sizes, seeds and candidate rates; ``--methods`` picks the
methods of one lane, and the flags below override the study's values. Without ``--study``,
``--config`` and the flags make the study.

Every run is its own ``pha fit … --test_after_fit true`` process; its per-task test metrics, the
resolved config, the git commit, trainable parameters and wall time are appended to
``runs.jsonl``. Runs already in that file are skipped, and an interrupted run resumes from its
``last.ckpt`` (written after every validation), so an interrupted grid resumes where it
stopped. Then ``table.md`` (mean ± std over seeds, per task and average) and ``plot.png``
(average test score against n_train per method, as the paper's Figure 2) are written from all
the runs in the file. Arguments after ``--`` go to every ``pha fit`` unchanged.

With candidate rates, each tuned method's learning rate is first chosen on the validation average
at the tuning cell (``chosen_lr.json``) by ``pha sweep``: one Optuna study per tuning cell
(``tuning/study.db``), a grid over the listed rates it has not tried yet, each a trial that never
sees test; the choice is the study's best trial, among every rate that cell was ever tuned at (an
edge check adds a candidate, never hides one; rows of ``runs.jsonl`` from before the studies join
them as finished trials). Every finished trial is also kept as a row of ``tuning/trials.jsonl``,
which holds no machine path and is committed with the results: a fresh checkout (another machine,
the study database gone) imports those rows and does not train those trials again. The chosen rate's grid cell is then trained and tested as every other
cell. A method with ``rate_of`` in the study takes that method's rate, ``<method>+label_words``
its base method's; a method with ``evaluates`` trains nothing (Arrow: each row evaluates the
task_lora run of its cell). Every row records the tested (best validation) checkpoint's step, its
validation average and the run's training-health summary, and ``table.md`` adds paired
differences (PHA − each baseline, same seeds; ``--pair-with`` pairs a chosen variant with every
method, ``--with-runs`` reports another folder's rows too) and a per-run table that marks
collapsed runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import optuna
import torch
import yaml
from studylib.grid_report import screening_table, write_plot, write_table
from studylib.records import append_row, finished, read_rows, run_missing, write_rows
from studylib.runs import best_checkpoint, git_commit, pha_command, run_logged
from studylib.study import Study, StudyMethod, load_study, method_configs

from pha_lightning.cli.sweep import counts
from pha_lightning.cli.sweep_space import make_storage
from pha_lightning.training.checkpoints import resolve_last_checkpoint


def method_args(method: str) -> list[str]:
    """A method's ``pha fit`` arguments: its override files of configs/methods/, nothing else."""
    return [f"--config={path}" for path in method_configs(method)]


def run_id(method: str, n_train: int, seed: int, lr: float | None = None) -> str:
    return f"{method}-n{n_train}-s{seed}" + ("" if lr is None else f"-lr{lr:g}")


def finished_runs(jsonl: Path) -> dict[str, dict]:
    return finished(jsonl)


def trainable_parameters(checkpoint: Path) -> int:
    """Checkpoints hold exactly the trainable weights."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return sum(t.numel() for t in state.values())


def run_one(method: str, n_train: int, seed: int, args: argparse.Namespace, lr: float | None = None) -> dict:
    """Train and test one configuration in its own ``pha`` process; return its JSONL row.

    ``lr`` (when given) is the run's ``model.optim.learning_rate`` and part of its id.
    """
    entry = args.study.methods.get(method)
    if entry is not None and entry.evaluates is not None:
        return evaluate_on(method, entry.evaluates, n_train, seed, args, lr)
    rid = run_id(method, n_train, seed, lr)
    root = args.output_dir / "runs" / rid
    resume = resolve_last_checkpoint(root) if root.exists() else None
    if root.exists() and resume is None:
        shutil.rmtree(root)  # interrupted before its first validation: starts over
    cmd = [
        *pha_command(),
        "fit",
        *args.study.fit_configs(),
        *method_args(method),
        f"--data.n_train={n_train}",
        f"--seed_everything={seed}",
        "--test_after_fit=true",
        f"--trainer.default_root_dir={root}",
        f"--checkpoint.dirpath={root / 'checkpoints'}",  # one folder across resumes: the best stays ranked
        "--trainer.enable_progress_bar=false",
        *args.extra,
        *([] if lr is None else [f"--model.optim.learning_rate={lr}"]),
        *([] if resume is None else [f"--ckpt_path={resume}"]),
    ]
    start = time.time()
    run_logged(cmd, root.parent / f"{rid}.log", f"run {rid}")  # not with_suffix: "lr0.0003" has a dot
    log_dir = next(root.rglob("test_metrics.json")).parent
    best = best_checkpoint(root)
    return {
        "run_id": rid,
        "method": method,
        "n_train": n_train,
        "seed": seed,
        "learning_rate": lr,
        "test": json.loads((log_dir / "test_metrics.json").read_text()),
        **selection_record(best, root),
        "health": health_summary(log_dir / "health.json"),
        "trainable_params": trainable_parameters(best),
        "wall_time_s": round(time.time() - start, 1),  # of the last segment when resumed
        "resumed_from": resume,
        "git_commit": git_commit(),
        "command": cmd,
        "config": (log_dir / "config.yaml").read_text() if (log_dir / "config.yaml").exists() else None,
    }


def evaluate_on(
    method: str, trained_as: str, n_train: int, seed: int, args: argparse.Namespace, lr: float | None
) -> dict:
    """The row of a method without training of its own (the study's ``evaluates``): ``pha validate``
    and ``pha test`` of the ``trained_as`` run's best checkpoint of the same cell, run as ``method``."""
    jsonl = args.output_dir / "runs.jsonl"
    source = run_id(trained_as, n_train, seed, lr)
    if source not in finished_runs(jsonl):
        append_row(jsonl, run_one(trained_as, n_train, seed, args, lr))
    trained = finished_runs(jsonl)[source]
    root = args.output_dir / "runs" / source
    best = best_checkpoint(root)
    configs = sorted(root.rglob("config.yaml"))
    rid = run_id(method, n_train, seed, lr)
    out = args.output_dir / "runs" / rid
    shutil.rmtree(out, ignore_errors=True)  # an evaluation is short: an interrupted one starts over
    start, metrics, commands = time.time(), {}, []
    for stage, name in (("validate", "val"), ("test", "test")):
        cmd = [
            *pha_command(), stage, f"--config={configs[0]}", *method_args(method), f"--ckpt_path={best}",
            f"--trainer.default_root_dir={out / stage}", "--trainer.enable_progress_bar=false",
        ]  # fmt: skip
        run_logged(cmd, out.parent / f"{rid}.log", f"{stage} of {rid}")
        metrics[name] = json.loads(next((out / stage).rglob(f"{name}_metrics.json")).read_text())
        commands.append(cmd)
    return {
        **{key: trained[key] for key in ("n_train", "seed", "learning_rate", "best_step", "last_step", "health")},
        "run_id": rid,
        "method": method,
        "test": metrics["test"],
        "best_val_avg": metrics["val"]["val/avg"],
        "evaluated_run": source,
        "trainable_params": trained["trainable_params"],
        "wall_time_s": round(time.time() - start, 1),
        "resumed_from": None,
        "git_commit": git_commit(),
        "command": commands,
        "config": trained["config"],
    }


def selection_record(best: Path, root: Path) -> dict:
    """Which checkpoint was tested: its step and validation average, and the run's last step."""
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    last = next(root.rglob("last.ckpt"), None)
    last_step = torch.load(last, map_location="cpu", weights_only=False)["global_step"] if last else None
    return {
        "best_step": checkpoint["global_step"],
        "best_val_avg": checkpoint.get("pha_val_metrics", {}).get("val/avg"),
        "last_step": last_step,
    }


def health_summary(path: Path) -> dict | None:
    """The end-of-fit health numbers a table needs (docs/training_health.md)."""
    if not path.exists():
        return None
    end = json.loads(path.read_text())["end"]
    return {
        "max_top_axis_share": max(end["top_axis_share"].values(), default=None),
        "max_adapter_to_residual": max(end["adapter_to_residual"], default=None),
        "max_lora_to_base": max(end.get("lora_to_base", []), default=None),  # reports before it lack it
        "between_task_spread": end.get("generated_between_task_spread"),  # per generated layer or LoRA site
        "warnings": end["warnings"],
    }


def retest(row: dict, args: argparse.Namespace) -> dict:
    """Test a finished run's best checkpoint again with the current code (``pha test`` on the run's
    own resolved config), e.g. after a metric fix; the row keeps its training record and gains
    ``retested_commit``."""
    root = args.output_dir / "runs" / row["run_id"]
    out = root / "retest"
    shutil.rmtree(out, ignore_errors=True)
    configs = sorted(root.rglob("config.yaml"))
    if not configs:
        raise SystemExit(f"cannot retest {row['run_id']}: no config.yaml under {root}")
    cmd = [
        *pha_command(),
        "test",
        f"--config={configs[0]}",
        f"--ckpt_path={best_checkpoint(root)}",
        f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false",
    ]
    run_logged(cmd, root / "retest.log", f"retest of {row['run_id']}")
    metrics = json.loads(next(out.rglob("test_metrics.json")).read_text())
    return {**row, "test": metrics, "retested_commit": git_commit()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, help="a study config (configs/studies/); the flags below override it")
    parser.add_argument("--config", type=Path, help="without --study: the base pha config (task set, backbone, steps)")
    parser.add_argument("--protocol", type=Path, help="without --study: a protocol config (configs/protocols/)")
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help="the study's methods to run (one lane); without --study, names of configs/methods/ "
        "(default: adapter hyperformer hyperdecoder pha)",
    )
    parser.add_argument("--n-train", nargs="+", type=int, help="sizes (default: the study's, or 100 500 1000)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the study's, or 0 1 2)")
    parser.add_argument("--output-dir", type=Path, help="default: the study's, or results/sample_efficiency")
    parser.add_argument(
        "--tune-lr",
        nargs="+",
        type=float,
        metavar="LR",
        help="first run each method at these learning rates at --tune-n-train and --tune-seed, then "
        "choose the rate with the best validation average among every rate that cell has run at "
        "(never on test); written to chosen_lr.json and used by every run of the grid",
    )
    parser.add_argument(
        "--bracket",
        action="store_true",
        default=None,
        help="after --tune-lr, while a method's best rate is the lowest or highest it was tried at, try the "
        "next rate of RATE_GRID beyond it (edge checks until the choice is bracketed, or the grid ends)",
    )
    parser.add_argument("--tune-n-train", type=int, help="the tuning cell's size (default: the study's, or 100)")
    parser.add_argument("--tune-seed", type=int, help="the tuning cell's seed (default: the study's, or 0)")
    parser.add_argument(
        "--screen-against",
        type=Path,
        metavar="DIR",
        help="also write screening.md: this grid's rows on validation only, beside PHA's and PHA-LoRA's "
        "rows of the grid in DIR (e.g. results/converged)",
    )
    parser.add_argument("--report-only", action="store_true", help="only rewrite table.md and plot.png from runs.jsonl")
    parser.add_argument(
        "--pair-with",
        nargs="+",
        default=[],
        metavar="METHOD",
        help="in table.md, also pair these methods (e.g. a screening's winner) with every other method",
    )
    parser.add_argument(
        "--with-runs",
        nargs="+",
        type=Path,
        default=[],
        metavar="JSONL",
        help="also report the finished rows of these runs.jsonl files (e.g. a winner's seeds run into "
        "another folder); a run id in two files is an error",
    )
    parser.add_argument(
        "--retest",
        nargs="+",
        default=[],
        metavar="RUN_ID",
        help="test these finished runs' checkpoints again with the current code and update their rows",
    )
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    if (args.study is None) == (args.config is None):
        parser.error("give a study config (--study) or a base config (--config), not both")
    if args.study is not None and args.protocol is not None:
        parser.error("--protocol is the study's: give it in the study config")
    return resolve(args)


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the study: from its file, or made from the flags; a flag overrides the study's value."""
    if args.study is not None:
        study = load_study(args.study)
    else:
        methods = args.methods or ["adapter", "hyperformer", "hyperdecoder", "pha"]
        study = Study(
            config=args.config,
            protocol=args.protocol,
            methods={name: StudyMethod(name) for name in methods},
            output_dir=args.output_dir or Path("results/sample_efficiency"),
            n_train=tuple(args.n_train or (100, 500, 1000)),
            seeds=tuple(args.seeds or (0, 1, 2)),
            rates=tuple(args.tune_lr or ()),
        )
        for name in methods:
            method_configs(name)
    unknown = [m for m in args.methods or [] if m not in study.methods]
    if unknown:
        raise SystemExit(
            f"--methods: {unknown[0]!r} is not a method of the study {args.study}: {', '.join(study.methods)}"
        )
    args.study = study
    args.methods = args.methods or list(study.methods)
    args.output_dir = args.output_dir or study.output_dir
    args.seeds = args.seeds or list(study.seeds)
    args.tune_lr = args.tune_lr or list(study.rates)
    args.tune_n_train = study.tune["n_train"] if args.tune_n_train is None else args.tune_n_train
    args.tune_seed = study.tune["seed"] if args.tune_seed is None else args.tune_seed
    args.bracket = study.tune["bracket"] if args.bracket is None else args.bracket
    args.screen_against = args.screen_against or study.screen_against
    return args


def sizes(method: str, args: argparse.Namespace) -> list[int]:
    """A method's sizes: ``--n-train``, else its own in the study, else the study's."""
    entry = args.study.methods.get(method)
    return args.n_train or list((entry and entry.n_train) or args.study.n_train)


def tuned_methods(args: argparse.Namespace) -> list[str]:
    """The methods that choose their own rate: not ``+``-composed, not taking another's (``rate_of``)."""
    return [m for m in args.methods if "+" not in m and args.study.methods[m].rate_of is None]


CHOSEN_LR = "chosen_lr.json"


def run_cells(cells: list[tuple[str, int, int, float | None]], args: argparse.Namespace, jsonl: Path) -> None:
    """Run every (method, n_train, seed, lr) not yet in ``jsonl``, appending each finished row."""
    run_missing(
        [(run_id(*cell), lambda cell=cell: run_one(*cell[:3], args, cell[3])) for cell in cells],
        jsonl,
        lambda row: f"test/avg {row['test']['test/avg']:.2f} in {row['wall_time_s']:.0f} s",
    )


#: the tuning studies (``pha sweep``'s storage), one per tuning cell, under the output folder
TUNING = "tuning"
LR = "model.optim.learning_rate"
#: the rate's range in every tuning study: each invocation's grid lists values inside it, so an edge
#: check's new rate joins the cell's study (Optuna fixes a parameter's distribution per study)
LR_RANGE = {"low": 1e-6, "high": 1.0, "log": True}


#: the finished tuning trials as portable rows (method, cell, rate, best_val_avg), one per trial
TRIALS = "trials.jsonl"


def save_trials(args: argparse.Namespace, n_train: int, seed: int) -> None:
    """Merge the finished trials of this lane's studies into ``tuning/trials.jsonl`` (the other lane's
    rows stay), written whole and renamed into place so a reader never sees half a file."""
    path = args.output_dir / TUNING / TRIALS
    rows = {trial_key(row): row for row in read_rows(path) + tuned_rows(args, n_train, seed)}
    partial = path.with_suffix(".partial")
    write_rows(partial, sorted(rows.values(), key=trial_key))
    partial.replace(path)


def trial_key(row: dict) -> tuple[str, int, int, float]:
    return row["method"], row["n_train"], row["seed"], row["learning_rate"]


def choose_learning_rates(args: argparse.Namespace, jsonl: Path) -> dict[str, float]:
    """Each method's learning rate: the best validation score of its tuning study (never test)."""
    n_train, seed = args.tune_n_train, args.tune_seed
    rows = list(finished_runs(jsonl).values()) + read_rows(args.output_dir / TUNING / TRIALS)
    methods = tuned_methods(args)
    for method in methods:
        entry = args.study.methods[method]
        tune_cell(method, n_train, seed, args, rows, list(entry.rates) if entry.rates else args.tune_lr)
    while args.bracket and (edges := edge_checks(tuned_rows(args, n_train, seed), methods, n_train, seed)):
        print(f"edge checks (a choice at the edge of the rates tried): {edges}", flush=True)
        for method, _, _, rate in edges:
            tune_cell(method, n_train, seed, args, rows, [rate])
    chosen = best_rates(tuned_rows(args, n_train, seed), methods, n_train, seed)
    path = args.output_dir / CHOSEN_LR
    saved = read_chosen(path)
    saved.update(chosen)
    path.write_text(json.dumps(saved, indent=1) + "\n")
    print(f"learning rates chosen on the validation average (n_train {n_train}, seed {seed}): {chosen}", flush=True)
    return chosen


def tuning_study(storage: Path, method: str, n_train: int, seed: int) -> optuna.Study:
    """The tuning cell's study (created on first use): ``pha sweep`` runs its trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        storage=make_storage(str(storage)),
        study_name=run_id(method, n_train, seed),
        direction="maximize",
        load_if_exists=True,
    )


def import_rows(study: optuna.Study, rows: list[dict], method: str, n_train: int, seed: int) -> None:
    """Rows of the cell in ``runs.jsonl`` (tuned before the studies existed) join its study as
    finished trials, valued by the same quantity a sweep's trial is: the best checkpoint's val/avg."""
    tried = {trial.params.get(LR) for trial in study.get_trials(deepcopy=False)}
    for row in rows:
        cell = (row["method"], row["n_train"], row["seed"]) == (method, n_train, seed)
        if cell and row.get("learning_rate") is not None and row["learning_rate"] not in tried:
            study.add_trial(
                optuna.trial.create_trial(
                    params={LR: row["learning_rate"]},
                    distributions={LR: optuna.distributions.FloatDistribution(**LR_RANGE)},
                    value=row["best_val_avg"],
                    user_attrs={"run_id": row["run_id"], "from": "runs.jsonl or tuning/trials.jsonl"},
                )
            )
            tried.add(row["learning_rate"])


def tuned_rows(args: argparse.Namespace, n_train: int, seed: int) -> list[dict]:
    """Every finished trial of the methods' tuning studies as a row (method, cell, rate, best_val_avg)."""
    rows = []
    for method in tuned_methods(args):
        study = tuning_study(args.output_dir / TUNING / "study.db", method, n_train, seed)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            rows.append(
                {
                    "run_id": run_id(method, n_train, seed, trial.params[LR]),
                    "method": method,
                    "n_train": n_train,
                    "seed": seed,
                    "learning_rate": trial.params[LR],
                    "best_val_avg": trial.value,
                }
            )
    return rows


def tune_cell(
    method: str, n_train: int, seed: int, args: argparse.Namespace, rows: list[dict], rates: list[float]
) -> float:
    """``pha sweep`` over the ``rates`` the cell's study lacks, one rate per sweep so that each finished
    trial is saved (:func:`save_trials`) before the next starts, then the rate of its best trial,
    among every rate the cell was ever tuned at (an edge check adds a candidate, never hides one)."""
    storage = args.output_dir / TUNING / "study.db"
    study = tuning_study(storage, method, n_train, seed)
    import_rows(study, rows, method, n_train, seed)
    done = [trial for trial in study.get_trials(deepcopy=False) if counts(trial)]  # a diverged rate too
    name = run_id(method, n_train, seed)
    for rate in [lr for lr in rates if lr not in {trial.params[LR] for trial in done}]:
        settings = {
            "space": {LR: LR_RANGE},
            "sampler": {"name": "GridSampler", "search_space": {LR: [rate]}},
            "pruner": {"name": "NopPruner"},  # every rate trains to the end, as the grid's runs do
            "study_name": name,
            "storage": str(storage),
            "output_dir": str(args.output_dir / TUNING / name),
            "n_trials": len(done) + 1,
        }
        sweep_file = args.output_dir / TUNING / f"{name}.yaml"
        sweep_file.write_text(yaml.safe_dump(settings, sort_keys=False))
        cmd = [
            *pha_command(),
            "sweep",
            f"--sweep={sweep_file}",
            *args.study.fit_configs(),
            *method_args(method),
            f"--data.n_train={n_train}",
            f"--seed_everything={seed}",
            "--trainer.enable_progress_bar=false",
            *args.extra,
        ]
        log = args.output_dir / TUNING / f"{name}.log"
        print(f"tuning sweep {name}: rate {rate} ({log})", flush=True)
        run_logged(cmd, log, f"tuning sweep {name}")
        save_trials(args, n_train, seed)
        study = tuning_study(storage, method, n_train, seed)
        done = [trial for trial in study.get_trials(deepcopy=False) if counts(trial)]
    return study.best_trial.params[LR]


def best_rates(rows: list[dict], methods: list[str], n_train: int, seed: int) -> dict[str, float]:
    """Each method's rate with the best validation average among **every** rate it was tuned at
    on that cell, not only this invocation's ``--tune-lr``: an edge check run alone cannot
    un-choose a better rate tried before."""
    chosen = {}
    for method in methods:
        tried = [
            row
            for row in rows
            if (row["method"], row["n_train"], row["seed"]) == (method, n_train, seed)
            and row.get("learning_rate") is not None
        ]
        chosen[method] = max(tried, key=lambda row: row["best_val_avg"])["learning_rate"]
    return chosen


#: the rates edge checks step along (half decades)
RATE_GRID: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def edge_checks(rows: list[dict], methods: list[str], n_train: int, seed: int) -> list[tuple[str, int, int, float]]:
    """For each method whose best rate is the lowest or highest it was tried at on the tuning cell,
    the next :data:`RATE_GRID` rate beyond it, untried (none when the grid ends there)."""
    cells = []
    for method, best in best_rates(rows, methods, n_train, seed).items():
        cell = [r for r in rows if (r["method"], r["n_train"], r["seed"]) == (method, n_train, seed)]
        tried = {r["learning_rate"] for r in cell if r.get("learning_rate") is not None}
        beyond = [r for r in RATE_GRID if r > best * 1.01] if best >= max(tried) else []
        below = [r for r in RATE_GRID if r < best / 1.01] if best <= min(tried) else []
        for rate in (beyond[:1] + below[-1:]) if len(tried) > 1 else []:
            if rate not in tried:
                cells.append((method, n_train, seed, rate))
    return cells


def read_chosen(path: Path) -> dict[str, float]:
    return json.loads(path.read_text()) if path.exists() else {}


def lr_for(method: str, chosen: dict[str, float], study: Study) -> float | None:
    """A method's chosen learning rate: its own, else that of the method whose rate it takes in the
    study (``rate_of``), else, for ``<method>+<extra>``, that of ``<method>``."""
    if method in chosen:
        return chosen[method]
    entry = study.methods.get(method)
    if entry is not None and entry.rate_of is not None:
        return lr_for(entry.rate_of, chosen, study)
    return lr_for(method.split("+")[0], chosen, study) if "+" in method else None


def chosen_rates(output_dir: Path, study: Study) -> dict[str, float]:
    """The rates chosen in ``output_dir``, over those of the study's ``reference_rates`` (never tuned here)."""
    reference = read_chosen(study.reference_rates) if study.reference_rates else {}
    return {**reference, **read_chosen(output_dir / CHOSEN_LR)}


def reported_rows(jsonl: Path, others: list[Path]) -> list[dict]:
    """The finished rows of ``jsonl`` and of ``others`` (``--with-runs``), each run once."""
    rows = finished_runs(jsonl)
    for other in others:
        if not other.is_file():
            raise SystemExit(f"--with-runs: no file {other}; give the runs.jsonl of another output folder")
        for rid, row in finished_runs(other).items():
            if rid in rows:
                raise SystemExit(f"--with-runs: run {rid} is in both {other} and an earlier file; report each run once")
            rows[rid] = row
    return list(rows.values())


def grid_rows(rows: list[dict], chosen: dict[str, float], study: Study) -> list[dict]:
    """The rows the report is about: without tuning, all; with it, each method's chosen rate only."""
    if not chosen:
        return rows
    return [
        row
        for row in rows
        if row.get("learning_rate") is None or lr_for(row["method"], chosen, study) == row["learning_rate"]
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    jsonl = args.output_dir / "runs.jsonl"
    if args.retest:
        rows = finished_runs(jsonl)
        unknown = [rid for rid in args.retest if rid not in rows]
        if unknown:
            raise SystemExit(f"--retest: no finished run {unknown} in {jsonl}; finished runs: {sorted(rows)}")
        for rid in args.retest:
            rows[rid] = retest(rows[rid], args)
            print(f"{rid}: retested, test/avg {rows[rid]['test']['test/avg']:.2f}", flush=True)
        write_rows(jsonl, rows.values())
    elif not args.report_only:
        if args.tune_lr and tuned_methods(args):
            choose_learning_rates(args, jsonl)
        chosen = chosen_rates(args.output_dir, args.study)
        # seed outermost: an interrupted grid still has every method and size for the first seeds
        every_size = sorted({n for m in args.methods for n in sizes(m, args)})
        cells = [
            (m, n, s, lr_for(m, chosen, args.study))
            for s in args.seeds
            for n in every_size
            for m in args.methods
            if n in sizes(m, args)
        ]
        run_cells(cells, args, jsonl)
    rows = grid_rows(reported_rows(jsonl, args.with_runs), chosen_rates(args.output_dir, args.study), args.study)
    if not rows:
        raise SystemExit(f"no finished runs in {jsonl}")
    print(write_table(rows, args.output_dir / "table.md", candidates=tuple(args.pair_with)))
    write_plot(rows, args.output_dir / "plot.png")
    if args.screen_against:
        references = grid_rows(list(finished_runs(args.screen_against / "runs.jsonl").values()),
                               read_chosen(args.screen_against / CHOSEN_LR), args.study)  # fmt: skip
        screening = screening_table(rows, references)
        (args.output_dir / "screening.md").write_text(screening + "\n")
        print(screening)
    print(f"wrote {args.output_dir / 'table.md'} and {args.output_dir / 'plot.png'}")


if __name__ == "__main__":
    main()
