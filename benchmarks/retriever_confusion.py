"""Which task does the retriever pick for each task's examples? (nearest prototype, as ``pha predict``)

    python benchmarks/retriever_confusion.py --ckpt_path <checkpoint> [--split test] [--output confusion.md]

Reads the checkpoint's data settings (tasks, specs, data_dir, seeds; ``--data-dir`` replaces the
recorded data directory), embeds every example of the split at the retrieval point and picks its
task exactly as ``pha predict`` does for an example that names none
(:func:`pha_lightning.model.prediction.identify_tasks`). Prints, per task, the share retrieved as
itself and the three tasks retrieved most often: on ``validation`` the per-task view behind
``retriever/val_task_accuracy``; on ``test`` the task-identification accuracy of the many-task
study. ``--output`` writes the table (markdown) and, beside it, the counts as JSON.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from studylib.checkpoints import model_and_data
from studylib.reports import write_portable

from pha_lightning.model.prediction import identify_tasks

STAGES = {"validation": "validate", "test": "test"}


def confusion(
    ckpt_path: str, split: str = "validation", data_dir: str | None = None
) -> tuple[list[str], dict[int, Counter]]:
    """The task names and, per true task id, how often each task id was retrieved."""
    model, data = model_and_data(ckpt_path, data_dir, (STAGES[split],))
    loaders = data.val_dataloader() if split == "validation" else data.test_dataloader()
    picked: dict[int, Counter] = {}
    with torch.no_grad():
        for loader in loaders:
            for batch in loader:
                nearest, _ = identify_tasks(model, batch)
                for task, choice in zip(batch["task_ids"].tolist(), nearest.tolist()):
                    picked.setdefault(task, Counter())[choice] += 1
    return data.tasks, picked


def table(names: list[str], picked: dict[int, Counter]) -> str:
    lines = ["| task | retrieved as itself (%) | most often retrieved as |", "|---|---|---|"]
    for task, counts in sorted(picked.items()):
        total = sum(counts.values())
        top = ", ".join(f"{names[t]} {100 * n / total:.0f} %" for t, n in counts.most_common(3))
        lines.append(f"| {names[task]} | {100 * counts[task] / total:.1f} | {top} |")
    correct = sum(counts[task] for task, counts in picked.items())
    lines.append(f"| all examples | {100 * correct / sum(sum(c.values()) for c in picked.values()):.1f} | |")
    mean = sum(counts[task] / sum(counts.values()) for task, counts in picked.items()) / len(picked)
    lines.append(f"| mean over tasks | {100 * mean:.1f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--split", choices=list(STAGES), default="validation")
    parser.add_argument("--data-dir", help="the data directory, instead of the one the checkpoint recorded")
    parser.add_argument("--output", type=Path, help="write the markdown table here (and the counts as .json)")
    args = parser.parse_args()
    names, picked = confusion(args.ckpt_path, args.split, args.data_dir)
    text = table(names, picked)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_portable(args.output, f"`{args.ckpt_path}`, {args.split} split\n\n{text}\n")
        counts = {names[t]: {names[c]: n for c, n in counter.items()} for t, counter in picked.items()}
        write_portable(args.output.with_suffix(".json"), json.dumps(counts, indent=1) + "\n")


if __name__ == "__main__":
    main()
