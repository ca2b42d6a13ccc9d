"""``pha export``: the portable bundle of a training checkpoint, or per-task peft / AdapterHub adapters.

    pha export --ckpt_path runs/demo/.../checkpoints/last.ckpt --output_dir bundles/demo [--precompute_adapters]
    pha export --ckpt_path <checkpoint or bundle> --output_dir served/ --format peft [--tasks a b] [--merge]
    pha export --ckpt_path <checkpoint or bundle> --output_dir served/ --format adapterhub [--tasks a b]

The bundle (:mod:`pha_lightning.formats.bundle`) holds the model's architecture and weights, not
the training system: :meth:`PHAModel.from_pretrained` serves it without this package's training
code or the checkpoint. A model trained by few-shot transfer is exported as one plain model over
its new and source tasks, so its bundle does not need the source checkpoint. ``--format peft``
writes one peft LoRA adapter per task (LoRA models only), and with ``--merge`` a plain
transformers checkpoint per task (:mod:`pha_lightning.formats.peft`); ``--format adapterhub``
one AdapterHub parallel bottleneck adapter per task (bottleneck models on BERT,
:mod:`pha_lightning.formats.adapterhub`); the model hands their weights over
(:mod:`pha_lightning.model.exports`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pha_lightning.cli.parsing import CommandParser
from pha_lightning.errors import ConfigError
from pha_lightning.formats.bundle import is_bundle
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.formats.task_export import INDEX_NAME
from pha_lightning.model.exports import write_adapterhub_export, write_peft_export
from pha_lightning.model.pha import PHAModel
from pha_lightning.training.system import load_system

FORMATS = ("bundle", "peft", "adapterhub")


def load_trained(ckpt_path: str | os.PathLike) -> tuple[PHAModel, dict, dict]:
    """The model of a training checkpoint (or of a bundle), its data settings, and where it came from."""
    ckpt_path = str(ckpt_path)
    if is_bundle(ckpt_path):
        model = PHAModel.from_pretrained(ckpt_path)
        return model, dict((model.bundle_config or {}).get("data", {})), {"source_bundle": os.path.abspath(ckpt_path)}
    checkpoint = read_checkpoint(ckpt_path)
    transfer = checkpoint["hyper_parameters"].get("transfer")
    model = load_system(checkpoint).eval().model
    extra = {
        "source_checkpoint": {
            "path": os.path.abspath(ckpt_path),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
        },
        "val_metrics": checkpoint.get("pha_val_metrics", {}),
        "transfer": transfer,
    }
    return model, checkpoint.get("datamodule_hyper_parameters") or {}, extra


def export_checkpoint(
    ckpt_path: str | os.PathLike, output_dir: str | os.PathLike, *, precompute: bool = False, overwrite: bool = False
) -> Path:
    """Write the bundle of a training checkpoint, with its data settings, validation metrics and origin."""
    model, data, extra = load_trained(ckpt_path)
    return model.save_pretrained(output_dir, precompute=precompute, overwrite=overwrite, data=data, extra=extra)


def export_peft(
    ckpt_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    tasks: list[str] | None = None,
    merge: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write one peft adapter (and with ``merge``, one merged checkpoint) per task of a LoRA model."""
    model, data, extra = load_trained(ckpt_path)
    return write_peft_export(model, output_dir, tasks=tasks, merge=merge, overwrite=overwrite, data=data, extra=extra)


def export_adapterhub(
    ckpt_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    tasks: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one AdapterHub parallel bottleneck adapter per task of a bottleneck model on BERT."""
    model, data, extra = load_trained(ckpt_path)
    return write_adapterhub_export(model, output_dir, tasks=tasks, overwrite=overwrite, data=data, extra=extra)


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="pha export",
        description="Write a portable adapter bundle (config.json + pha_model.safetensors) from a checkpoint, "
        "or one adapter per task: --format peft (LoRA models; --merge adds merged transformers checkpoints) "
        "or --format adapterhub (bottleneck models on BERT).",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by pha fit, or a bundle")
    parser.add_argument("--output_dir", required=True, help="the directory to create")
    parser.add_argument(
        "--format",
        default="bundle",
        help="bundle (PHAModel.from_pretrained); peft: peft/<task>/ adapters of a LoRA model; "
        "adapterhub: adapterhub/<task>/ parallel bottleneck adapters of a bottleneck model on BERT",
    )
    parser.add_argument(
        "--precompute_adapters",
        action="store_true",
        help="bundle: also store every task's generated adapters (generated_adapters.safetensors): serving skips the hypernetwork",
    )
    parser.add_argument("--tasks", nargs="+", help="peft, adapterhub: the tasks to export (default: all)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="peft: also write merged/<task>/, the backbone with the task's LoRA merged in (plain transformers)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace output_dir if it exists and is not empty")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_format_options(args)
    return args


def check_format_options(args: argparse.Namespace) -> None:
    """Each option belongs to one format; one given with the other is an error, not ignored."""
    if args.format not in FORMATS:
        raise ConfigError(f"--format must be one of {list(FORMATS)}, got {args.format!r}")
    if args.format == "bundle" and args.tasks:
        raise ConfigError("--tasks belongs to --format peft or adapterhub (a bundle holds every task)")
    if args.format != "peft" and args.merge:
        raise ConfigError(
            f"--merge belongs to --format peft (LoRA updates merge into the weights), not {args.format!r}"
        )
    if args.format != "bundle" and args.precompute_adapters:
        raise ConfigError(
            f"--precompute_adapters belongs to --format bundle; a {args.format} export always holds each task's "
            "generated weights"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.format == "peft":
        path = export_peft(
            args.ckpt_path, args.output_dir, tasks=args.tasks, merge=args.merge, overwrite=args.overwrite
        )
        print(f"wrote {path}: {describe_task_export(path)}", flush=True)
        return
    if args.format == "adapterhub":
        path = export_adapterhub(args.ckpt_path, args.output_dir, tasks=args.tasks, overwrite=args.overwrite)
        print(f"wrote {path}: {describe_task_export(path)}", flush=True)
        return
    path = export_checkpoint(
        args.ckpt_path, args.output_dir, precompute=args.precompute_adapters, overwrite=args.overwrite
    )
    sizes = {p.name: p.stat().st_size for p in sorted(path.iterdir())}
    print(
        f"wrote bundle {path}: " + ", ".join(f"{name} ({size / 1e6:.2f} MB)" for name, size in sizes.items()),
        flush=True,
    )


def describe_task_export(path: Path) -> str:
    """``peft/<task> (0.15 MB), merged/<task> (90.9 MB), …``: each task directory and its size."""
    parts = []
    for kind in ("peft", "merged", "adapterhub"):
        for directory in sorted((path / kind).iterdir()) if (path / kind).is_dir() else ():
            size = sum(f.stat().st_size for f in directory.iterdir())
            parts.append(f"{kind}/{directory.name} ({size / 1e6:.2f} MB)")
    if (path / "router").is_dir():
        parts.append(f"router ({sum(f.stat().st_size for f in (path / 'router').iterdir()) / 1e6:.2f} MB)")
    elif (path / INDEX_NAME).is_file() and "router" in (index := json.loads((path / INDEX_NAME).read_text())):
        parts.append(f"no router: {index['router']}")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
