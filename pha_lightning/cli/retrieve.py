"""``pha retrieve``: which source tasks does a new task resemble, according to a trained PHA model?

    pha retrieve --ckpt_path model.ckpt --tasks cb copa --k 16 --data_dir <data dir> --output_dir retrieval/
    pha retrieve --ckpt_path model.ckpt --tasks my_task --task_specs my_tasks.yaml --data_dir <data dir>

Embeds ``k`` support examples of each new task with the checkpoint's retriever, scores their mean
normalised vector against every prototype (cosine) and prints the ranked source tasks. With
``--output_dir`` it also writes the per-example retrieval vectors and the prototypes
(``retrieval.safetensors``, ``retrieval.json``) and a 2-D picture of them (``retrieval.png``):
examples coloured by task, prototypes marked — the paper's visual argument that the retriever
separates tasks. ``--sources N`` adds N validation examples of each source task to the picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from pha_lightning.cli.parsing import CommandParser
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.errors import ConfigError
from pha_lightning.formats.bundle import is_bundle
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.model.pha import PHAModel
from pha_lightning.training.retrieval_picture import save_retrieval
from pha_lightning.training.system import load_system
from pha_lightning.training.transfer import format_rankings, prototype_scores, retrieval_vectors
from pha_lightning.validation import SEED, SIZE, Range, check_range, ensure_writable_dir


def load_model(ckpt_path: str) -> tuple[PHAModel, list[dict] | None]:
    """A trained PHA model from its checkpoint or bundle (the frozen backbone is rebuilt from its
    name), and the specs its spec tasks were read with (a bundle's have no files)."""
    if is_bundle(ckpt_path):
        model = PHAModel.from_pretrained(ckpt_path)
        specs = model.config.task_specs
    else:
        checkpoint = read_checkpoint(ckpt_path)
        model = load_system(checkpoint).model
        specs = (checkpoint.get("datamodule_hyper_parameters") or {}).get("task_specs")
    if model.retriever is None or model.prototypes is None:
        raise ConfigError(
            f"{ckpt_path} has no retriever and prototypes (method {model.config.method!r}); "
            "pha retrieve needs a model of a method with a retriever and prototypes, e.g. pha"
        )
    return model.eval(), specs


def embed_tasks(model: PHAModel, tasks: list[str], split: str, n: int | None, data_args: dict) -> tuple[Tensor, Tensor]:
    data = PHADataModule(
        tasks=tasks, backbone=model.config.backbone, n_train=n if split == "train" else None, **data_args
    )
    data.setup("fit")
    z, task_ids = retrieval_vectors(model, data.task_dataloaders(split))
    if split != "train" and n is not None:  # the first n of each task (loaders are length-sorted)
        keep = torch.cat([torch.nonzero(task_ids == t).squeeze(1)[:n] for t in task_ids.unique()])
        z, task_ids = z[keep], task_ids[keep]
    return z, task_ids


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = CommandParser(
        prog="pha retrieve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt_path", required=True, help="a trained PHA checkpoint")
    parser.add_argument(
        "--tasks", nargs="+", required=True, help="the new tasks (built-in, or declared in --task_specs)"
    )
    parser.add_argument(
        "--task_specs", help="new tasks declared in configuration: a YAML file holding their specs (as data.task_specs)"
    )
    parser.add_argument("--k", type=int, default=16, help="support examples per new task (from its train split)")
    parser.add_argument(
        "--sources", type=int, default=0, help="validation examples per source task to add to the picture"
    )
    parser.add_argument("--data_dir", help="local GLUE/SuperGLUE directory (else $PHA_DATA_DIR, else the hub)")
    parser.add_argument("--max_source_length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42, help="data seed of the support draw")
    parser.add_argument(
        "--train_from_validation",
        nargs="+",
        default=[],
        metavar="TASK",
        help="new tasks without a train set (BoolQ locally): draw their k examples from the validation half",
    )
    parser.add_argument("--output_dir", type=Path, help="write vectors, prototypes and retrieval.png here")
    args = parser.parse_args(argv)
    for name, valid in (("k", SIZE), ("sources", Range(0, integer=True)), ("max_source_length", SIZE), ("seed", SEED)):
        check_range(f"--{name}", getattr(args, name), valid)
    if args.output_dir is not None:
        ensure_writable_dir(args.output_dir, "output_dir")  # now, not after the embedding
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, source_specs = load_model(args.ckpt_path)
    data_args = {"max_source_length": args.max_source_length, "seed": args.seed}
    if args.data_dir:
        data_args["data_dir"] = args.data_dir
    sources = [t.name for t in model.task_objects]
    prototypes = model.prototypes.table().detach().float()
    new_args = {**data_args, "train_from_validation": args.train_from_validation, "task_specs": args.task_specs}
    z, task_ids = embed_tasks(model, args.tasks, "train", args.k, new_args)
    labels = [args.tasks[i] for i in task_ids.tolist()]
    rankings = {}
    for index, task in enumerate(args.tasks):
        scores = prototype_scores(z[task_ids == index], prototypes)
        order = scores.argsort(descending=True).tolist()
        rankings[task] = [(sources[i], round(float(scores[i]), 4)) for i in order]
    print(format_rankings(rankings))
    if args.output_dir is None:
        return
    if args.sources:
        source_z, source_ids = embed_tasks(
            model, sources, "validation", args.sources, {**data_args, "task_specs": source_specs}
        )
        z = torch.cat([z, source_z])
        labels += [sources[i] for i in source_ids.tolist()]
    save_retrieval(args.output_dir / "retrieval", z, labels, prototypes, sources, {"rankings": rankings})
    print(f"wrote {args.output_dir}/retrieval.{{safetensors,json,png}}")


if __name__ == "__main__":
    main()
