"""The training-health report (docs/training_health.md) of saved checkpoints.

    python benchmarks/checkpoint_health.py RUN/checkpoints/step000300.ckpt [CKPT ...] [--data-dir DIR]

A run's ``health.json`` holds the report at its start and at its last step; the grid tests the
best-validation checkpoint, which may be hundreds of steps earlier, and runs from before a
number existed (the LoRA update/frozen ratio) lack it. This re-measures any checkpoint the way
the ``TrainingHealth`` callback does: on the first ``--probe-examples`` examples of each task's
validation loader, rebuilt from the data module settings saved in the checkpoint (``--data-dir``
replaces a local data folder that has moved), with the prototypes' initial values the callback
saved. It prints each report and, with ``--output``, writes them as JSON keyed by path.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from studylib.reports import write_portable

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.training.callbacks import TrainingHealth
from pha_lightning.training.health import format_health, health_report, probe_batches
from pha_lightning.training.system import load_system


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data-dir", help="replaces the checkpoint's data.data_dir")
    parser.add_argument("--probe-examples", type=int, default=TrainingHealth().probe_examples)
    parser.add_argument("--output", type=Path, help="write the reports here as JSON")
    return parser.parse_args(argv)


def saved_data_module(checkpoint: dict[str, Any], data_dir: str | None) -> PHADataModule:
    """The run's data module, from the settings Lightning saved with its checkpoint."""
    settings = checkpoint.get("datamodule_hyper_parameters")
    if settings is None:
        raise SystemExit("the checkpoint has no saved data module settings (was it written by `pha fit`?)")
    settings = {k: v for k, v in settings.items() if not k.startswith("_")}
    if data_dir is not None:
        settings["data_dir"] = data_dir
    return PHADataModule(**settings)


def measure(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    checkpoint = read_checkpoint(str(path))
    system = load_system(checkpoint).eval()
    data = saved_data_module(checkpoint, args.data_dir)
    data.setup("validate")
    batches = probe_batches(data.val_dataloader(), args.probe_examples, system.device)
    health_state = next((v for k, v in checkpoint["callbacks"].items() if k.startswith("TrainingHealth")), {})
    report = health_report(system.model, batches, health_state.get("initial_prototypes"))
    report["step"] = checkpoint["global_step"]
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reports = {}
    for path in args.checkpoints:
        reports[str(path)] = measure(path, args)
        print(f"{path} (step {reports[str(path)]['step']}):\n{format_health(reports[str(path)])}\n", flush=True)
    if args.output:
        write_portable(args.output, json.dumps(reports, indent=1) + "\n")


if __name__ == "__main__":
    main()
