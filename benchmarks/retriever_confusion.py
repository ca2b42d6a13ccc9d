"""Which task does the retriever pick for each task's validation examples? (nearest prototype)

    python benchmarks/retriever_confusion.py --ckpt_path <checkpoint>

Reads the checkpoint's data settings (tasks, specs, data_dir, seeds), embeds every validation
example at the retrieval point (unchunked) and prints, per task, the share retrieved as itself and
the three tasks retrieved most often: the per-task view behind ``retriever/val_task_accuracy``.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.nn import functional as F

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.training.checkpoints import read_checkpoint
from pha_lightning.training.system import load_system


def confusion(ckpt_path: str) -> tuple[list[str], dict[int, Counter]]:
    checkpoint = read_checkpoint(ckpt_path)
    model = load_system(checkpoint).eval().model
    settings = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    data = PHADataModule(**settings)
    data.setup("validate")
    prototypes = model.prototypes.normalized().float()
    picked: dict[int, Counter] = {}
    with torch.no_grad():
        for loader in data.val_dataloader():
            for batch in loader:
                nearest = (F.normalize(model.retrieval_forward(batch).float(), dim=-1) @ prototypes.T).argmax(-1)
                for task, choice in zip(batch["task_ids"].tolist(), nearest.tolist()):
                    picked.setdefault(task, Counter())[choice] += 1
    return data.tasks, picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    names, picked = confusion(parser.parse_args().ckpt_path)
    print(f"{'task':<14} {'as itself':>9}  most often retrieved as")
    for task, counts in sorted(picked.items()):
        total = sum(counts.values())
        top = ", ".join(f"{names[t]} {100 * n / total:.0f} %" for t, n in counts.most_common(3))
        print(f"{names[task]:<14} {100 * counts[task] / total:8.1f} %  {top}")
    correct = sum(counts[task] for task, counts in picked.items())
    print(f"{'all':<14} {100 * correct / sum(sum(c.values()) for c in picked.values()):8.1f} %")


if __name__ == "__main__":
    main()
