"""The ``pha`` command: a LightningCLI over :class:`PHAModule` and :class:`PHADataModule`.

``pha fit|validate|test|predict --config configs/<name>.yaml``. The task list is configured once
(``data.tasks``) and linked into the model; the backbone is configured once (``model.backbone``)
and linked into the data module, which needs its tokenizer. Checkpointing selects on ``val/avg``.
After ``validate`` and ``test`` the per-task metrics are printed as a table and written to
``<log_dir>/<stage>_metrics.json``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from pha_lightning.datamodule import PHADataModule
from pha_lightning.errors import PHAError
from pha_lightning.module import PHAModule


def format_metrics_table(metrics: dict[str, float], stage: str) -> str:
    """Render ``<stage>/<task>/<metric>`` values as one row per task, with the average last."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == stage:
            rows.setdefault(parts[1], {})[parts[2]] = value
    width = max(len(name) for name in [*rows, "average"]) + 1
    lines = [f"{'task':<{width}} metrics ({stage}, ×100)"]
    for task, values in rows.items():
        lines.append(f"{task:<{width}} " + "  ".join(f"{name}={value:6.2f}" for name, value in values.items()))
    if f"{stage}/avg" in metrics:
        lines.append(f"{'average':<{width}} {metrics[f'{stage}/avg']:6.2f}")
    return "\n".join(lines)


class PHACLI(LightningCLI):
    """LightningCLI with PHA's links, checkpoint defaults and per-task metric reports."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.tasks", "model.tasks")
        parser.link_arguments("model.backbone", "data.backbone")
        parser.link_arguments("data.max_target_length", "model.generation_max_length")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/avg",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "step{step:06d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, evaluate the best checkpoint on the test split (fit only).",
        )

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best", verbose=False)
            self._report("test")

    def before_validate(self) -> None:
        self._quiet_lightning_table()

    def before_test(self) -> None:
        self._quiet_lightning_table()

    def _quiet_lightning_table(self) -> None:
        # Lightning repeats epoch-level metrics in one column per dataloader (one per task here);
        # the per-task table printed after the run replaces it.
        self.config_init[self.subcommand]["verbose"] = False

    def after_validate(self) -> None:
        self._report("val")

    def after_test(self) -> None:
        self._report("test")

    @rank_zero_only
    def _report(self, stage: str) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
        print(format_metrics_table(metrics, stage), flush=True)
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        os.makedirs(log_dir, exist_ok=True)
        path = Path(log_dir) / f"{stage}_metrics.json"
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        print(f"wrote {path}", flush=True)


#: Commands beside LightningCLI's fit/validate/test/predict: name -> module whose ``main(argv)`` runs it.
EXTRA_COMMANDS: dict[str, str] = {"retrieve": "pha_lightning.retrieve"}


def main(args: list[str] | None = None) -> None:
    """Console entry point of ``pha``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            importlib.import_module(EXTRA_COMMANDS[argv[0]]).main(argv[1:])
        else:
            _run_cli(args)
    except PHAError as err:
        print(f"pha: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _run_cli(args: list[str] | None) -> None:
    PHACLI(
        PHAModule,
        PHADataModule,
        args=args,
        seed_everything_default=42,
        trainer_defaults={
            # the temperature batch sampler shards data across ranks itself
            "use_distributed_sampler": False,
            "callbacks": [LearningRateMonitor(logging_interval="step")],
        },
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "description": "PHA: Prototype-based HyperAdapter multi-task tuning of frozen transformers. "
            f"Other commands: {', '.join(f'pha {name} --help' for name in EXTRA_COMMANDS)}."
        },
    )


if __name__ == "__main__":
    main()
