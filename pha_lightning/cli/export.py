"""``pha export``: the portable bundle of a training checkpoint.

    pha export --ckpt_path runs/demo/.../checkpoints/last.ckpt --output_dir bundles/demo [--precompute_adapters]

The bundle (:mod:`pha_lightning.model.bundle`) holds the model's architecture and weights, not
the training system: :meth:`PHAModel.from_pretrained` serves it without this package's training
code or the checkpoint. A model trained by few-shot transfer is exported as one plain model over
its new and source tasks, so its bundle does not need the source checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pha_lightning.cli.parsing import CommandParser
from pha_lightning.training.checkpoints import read_checkpoint
from pha_lightning.training.system import load_system


def export_checkpoint(
    ckpt_path: str | os.PathLike, output_dir: str | os.PathLike, *, precompute: bool = False, overwrite: bool = False
) -> Path:
    """Write the bundle of a training checkpoint, with its data settings, validation metrics and origin."""
    ckpt_path = str(ckpt_path)
    checkpoint = read_checkpoint(ckpt_path)
    system = load_system(checkpoint).eval()
    extra = {
        "source_checkpoint": {
            "path": os.path.abspath(ckpt_path),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
        },
        "val_metrics": checkpoint.get("pha_val_metrics", {}),
        "transfer": checkpoint["hyper_parameters"].get("transfer"),
    }
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    return system.model.save_pretrained(output_dir, precompute=precompute, overwrite=overwrite, data=data, extra=extra)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = CommandParser(
        prog="pha export",
        description="Write a portable adapter bundle (config.json + adapter_model.safetensors) from a checkpoint.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by pha fit")
    parser.add_argument("--output_dir", required=True, help="the bundle directory to create")
    parser.add_argument(
        "--precompute_adapters",
        action="store_true",
        help="also store every task's generated adapters (generated_adapters.safetensors): serving skips the hypernetwork",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace output_dir if it exists and is not empty")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path = export_checkpoint(
        args.ckpt_path, args.output_dir, precompute=args.precompute_adapters, overwrite=args.overwrite
    )
    sizes = {p.name: p.stat().st_size for p in sorted(path.iterdir())}
    print(
        f"wrote bundle {path}: " + ", ".join(f"{name} ({size / 1e6:.2f} MB)" for name, size in sizes.items()),
        flush=True,
    )


if __name__ == "__main__":
    main()
