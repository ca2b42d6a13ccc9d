"""``pha tasks``: the tasks there are, and what a configuration's tasks hold before a long run.

    pha tasks                                            # built-in tasks, one line each
    pha tasks --config configs/tasks/classic.yaml --data.data_dir <data dir>

With a configuration (the same ``--config`` files and ``--data.*``/``--model.*`` options as
``pha fit``), every task of ``data.tasks`` is read, carved and drawn exactly as ``fit`` would, and
reported: its source, rows per split (and what ``n_train``/``val_max_examples`` keep), its labels
with their counts in the kept train rows, input fields, metrics and the mean token length with the
configured backbone. A bad spec fails here with the same one-line error as ``fit``.

The listing imports only the task registry; a configuration is parsed by ``pha fit``'s parser,
which imports Lightning, torch and transformers (and ``datasets`` for a task read from the hub).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from statistics import mean
from typing import TYPE_CHECKING

from pha_lightning.data.catalog import available_tasks, builtin_task_names, get_task
from pha_lightning.data.schema import FILE_SPLITS
from pha_lightning.data.spec_task import SpecTask
from pha_lightning.data.tables import arrow_column
from pha_lightning.data.tasks import SPLITS, Records, Task

if TYPE_CHECKING:
    from pha_lightning.data.datamodule import PHADataModule


def describe_listed(task: Task) -> str:
    """One line of ``pha tasks``: inputs, label space, metrics."""
    words = getattr(task, "label_words", None) or task.class_names  # GLUE's targets are "0"/"1": show the names
    if task.is_regression:
        labels = "score " + "–".join(f"{v:g}" for v in task.target_range) if task.target_range else "score"
    else:
        labels = "/".join(words)
    return f"{task.name:<24} {', '.join(task.source_fields):<36} {labels:<40} {', '.join(task.metric_names)}"


def source_of(task: Task, data: PHADataModule) -> str:
    if isinstance(task, SpecTask):
        spec = task.spec
        if spec.hub is not None:
            return f"spec, hub {spec.hub.path}" + (f" ({spec.hub.name})" if spec.hub.name else "")
        files = ", ".join(f"{split}={spec.files[split]}" for split in FILE_SPLITS if split in (spec.files or {}))
        by_column = f", split by its field {spec.split_column.name!r}" if spec.split_column else ""
        return f"spec, files {files} under {task.base_dir(data.data_dir)}{by_column}"
    if task.reads_external_data:
        source = data.source_options()
        origin = "built-in" if task.name in builtin_task_names() else "spec, official protocol"
        return f"{origin}, {source['source']}" + (f" {source['data_dir']}" if source["data_dir"] else "")
    return "built-in, generated"


def describe_task(task_id: int, data: PHADataModule, records: dict[str, Records]) -> list[str]:
    """The report of one task: source, rows per split and kept, labels, inputs, metrics, token length."""
    task = data.task_objects[task_id]
    kept = {split: data.split_records(task_id, split, rows) for split, rows in records.items()}
    rows = ", ".join(
        f"{split} {len(records[split])}"
        + (f" (keeps {len(kept[split])})" if len(kept[split]) != len(records[split]) else "")
        for split in SPLITS
    )
    lines = [f"{task.name}  [{source_of(task, data)}]", f"  rows: {rows}"]
    train = data.formatted(task_id, "train", kept["train"])
    values = arrow_column(train, "targets").to_pylist()
    if task.is_regression:
        lines.append(f"  score: mean {mean(values):.3f} over [{task.target_range[0]:g}, {task.target_range[1]:g}]")
    else:
        counts = Counter(int(value) for value in values)
        labels = ", ".join(f"{name} {counts.get(i, 0)}" for i, name in enumerate(task.class_names))
        lines.append(f"  labels (kept train rows): {labels}")
    lengths = data.token_lengths(train)
    truncated = sum(length >= data.max_source_length for length in lengths) / len(lengths)
    lines.append(f"  inputs: {', '.join(task.source_fields)};  metrics: {', '.join(task.metric_names)}")
    lines.append(
        f"  tokens ({data.backbone}, kept train rows): mean {mean(lengths.tolist()):.1f}, "
        f"{100 * truncated:.1f} % at max_source_length {data.max_source_length}"
    )
    return lines


def report(data: PHADataModule) -> str:
    options = data.check_sources(SPLITS)  # every file and spec is checked before the first task is read
    blocks = []
    for task_id, task in enumerate(data.task_objects):
        records = data.load_task_records(task, list(SPLITS), options)
        blocks.append("\n".join(describe_task(task_id, data, records)))
    n_train = (
        f"n_train {data.n_train}"
        if data.n_train
        else f"percent_train {data.percent_train}"
        if data.percent_train
        else "all train rows"
    )
    header = f"{len(blocks)} tasks ({n_train}, val_max_examples {data.val_max_examples}, data_seed {data.data_seed})"
    return "\n\n".join([header, *blocks])


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[2:] if argv is None else argv)
    if not argv:
        print(f"{'task':<24} {'inputs':<36} {'labels':<40} metrics")
        print("\n".join(describe_listed(get_task(name)) for name in available_tasks()))
        print(
            "\ntasks of your own: data.task_specs (docs/data.md, 'Your own tasks'); pha tasks --config <config> checks them"
        )
        return
    print(report(configured_data(argv)), flush=True)


def configured_data(argv: list[str]) -> PHADataModule:
    """The data module of a configuration, parsed and checked as ``pha fit`` would."""
    from pha_lightning.cli.app import TasksCLI
    from pha_lightning.cli.checks import check_run_settings
    from pha_lightning.data.datamodule import PHADataModule
    from pha_lightning.training.system import PHAModule

    command_line, sys.argv = sys.argv, ["pha tasks", *argv]  # LightningCLI reads its arguments from sys.argv
    try:
        cli = TasksCLI(PHAModule, PHADataModule, run=False, seed_everything_default=False)
    finally:
        sys.argv = command_line
    check_run_settings(cli.config)
    settings = {k: v for k, v in cli.config.data.as_dict().items() if not k.startswith("_")}
    return PHADataModule(**settings)
