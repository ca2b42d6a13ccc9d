"""``pha calibrate``: refit the routing calibration of a trained checkpoint (docs/routing.md).

    pha calibrate --ckpt_path <run dir>/checkpoints/<best>.ckpt --unlabelled_per_task 1000 [--data_dir <data dir>]
    pha calibrate --ckpt_path <best>.ckpt --unlabelled_per_task 0 --output <best>.released.ckpt

Fits the routing of examples without a task on the checkpoint's validation split, with the
checkpoint's ``model.routing`` settings, each option given replacing one:
``--unlabelled_per_task N`` > 0 fits a linear probe on up to N unlabelled training texts per task
(what ``pha fit`` does at its end with that setting), 0 returns to the nearest-prototype rule.
Writes the checkpoint with its new calibration and settings (in place, or to ``--output``); export it
(``pha export``) to carry the routing into a bundle or a router.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from pha_lightning.cli.parsing import CommandParser
from pha_lightning.model.calibration import RoutingConfig
from pha_lightning.training.routing_probe import calibrate_checkpoint
from pha_lightning.validation import check_settings

#: the ``model.routing`` settings this command takes as options
OPTIONS = ("unlabelled_per_task", "probe_weight_decay", "probe_seed", "probe_steps", "target_precision")


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="pha calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by pha fit")
    parser.add_argument("--data_dir", help="the data directory, instead of the one the checkpoint recorded")
    parser.add_argument("--output", help="write the recalibrated checkpoint here (default: replace --ckpt_path)")
    types = {f.name: f.type for f in fields(RoutingConfig)}
    for name in OPTIONS:
        kind = float if types[name] == "float" else int
        parser.add_argument(f"--{name}", type=kind, help=f"model.routing.{name} (default: the checkpoint's)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    given = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
    check_settings("model.routing", RoutingConfig, given)  # before the checkpoint is read
    calibration = calibrate_checkpoint(args.ckpt_path, given, data_dir=args.data_dir, output=args.output)
    print(calibration.describe(), flush=True)
    print(f"wrote {args.output or args.ckpt_path}", flush=True)


if __name__ == "__main__":
    main()
