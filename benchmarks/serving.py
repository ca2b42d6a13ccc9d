"""Serving throughput of one PHA-LoRA model: as a bundle, as peft adapters, as merged checkpoints, in one run.

    python benchmarks/serving.py                                    # MiniLM, the offline suite, CPU
    python benchmarks/serving.py --batch-size 64 --repeats 7 --output results/serving/minilm.md

Builds a PHA model generating LoRA factors (``adapter_kind: lora``; non-zero random factors: the
cost does not depend on what they learned), exports it as a bundle with precomputed adapters and
with ``pha export --format peft --merge`` (:func:`write_peft_export`), and serves the same
mixed-task validation batches, each example to its task's head, with:

* ``pha``: :meth:`PHAModel.from_pretrained` of the bundle (generated factors applied per task group);
* ``peft_mixed``: one ``PeftModel`` holding every task's adapter, each batch in one call with
  ``adapter_names=``;
* ``peft_grouped``: the same model, the batch split by task and ``set_adapter`` per group;
* ``merged``: one merged transformers model per task, the batch split by task;
* ``base``: the bare backbone, no adapters (the floor: what merged serving can at best reach).

Variants alternate within each repetition (interleaved), so a change of machine load hits them
alike; the table gives the median examples/s over repetitions, the range, and the process CPU time
per example. Every variant's outputs are checked against ``pha``'s. Writes a markdown table and
the raw rows as JSON lines beside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from studylib.reports import command_line, load_line, machine_line, write_report
from studylib.serving_model import TASKS, lora_model
from studylib.timing import load_average

from pha_lightning import PHAModel
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.formats.task_export import HEAD_NAME
from pha_lightning.hub import resolve_backbone_path
from pha_lightning.model.backbone import backbone_class
from pha_lightning.model.retriever import masked_mean

VARIANTS = ("pha", "peft_mixed", "peft_grouped", "merged", "base")
Batch = dict[str, torch.Tensor]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="pypi:all-MiniLM-L6-v2", help="an encoder-only backbone")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--lora-targets", nargs="+", default=["query", "value"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="validation batches per repetition")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of every variant")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable under load)")
    parser.add_argument(
        "--sampling", nargs="+", default=["mixed", "task"], help="batches of mixed tasks, and/or of one task each"
    )
    parser.add_argument("--output", type=Path, default=Path("results/serving/serving.md"))
    return parser.parse_args()


def batches(args: argparse.Namespace, sampling: str) -> list[Batch]:
    """Training batches of the offline suite: ``mixed`` tasks (temperature-sampled), or one ``task`` each."""
    data = PHADataModule(
        tasks=args.tasks,
        backbone=args.backbone,
        batch_size=args.batch_size,
        max_source_length=128,
        seed=0,
        sampling=sampling,
    )
    data.setup("fit")
    loader = iter(data.train_dataloader())
    return [next(loader) for _ in range(args.batches)]


def encoder_inputs(batch: Batch, rows: torch.Tensor | None = None) -> Batch:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {k: batch[k] if rows is None else batch[k][rows] for k in keys if k in batch}


def apply_head(head: dict[str, torch.Tensor], hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_mean(hidden, mask) @ head["weight"].T + head["bias"]


def grouped(batch: Batch, run: Callable[[int, Batch], torch.Tensor], width: int) -> torch.Tensor:
    """Each task's rows through ``run(task, inputs)``; outputs back in batch order (padded to ``width``)."""
    out = torch.zeros(len(batch["task_ids"]), width)
    for task in batch["task_ids"].unique().tolist():
        rows = torch.nonzero(batch["task_ids"] == task).squeeze(1)
        result = run(task, encoder_inputs(batch, rows))
        out[rows, : result.shape[1]] = result
    return out


def servers(model: PHAModel, export: Path, tasks: list[str]) -> dict[str, Callable[[Batch], torch.Tensor]]:
    """Every variant as a function from a batch to its head outputs ``(B, max outputs)``."""
    base_path = resolve_backbone_path(model.config.backbone)
    auto = backbone_class(model.config.backbone)
    heads = [load_file(export / "peft" / task / HEAD_NAME) for task in tasks]
    width = max(len(head["bias"]) for head in heads)
    peft = PeftModel.from_pretrained(auto.from_pretrained(base_path), export / "peft" / tasks[0], adapter_name=tasks[0])
    for task in tasks[1:]:
        peft.load_adapter(export / "peft" / task, adapter_name=task)
    peft.eval()
    merged = [auto.from_pretrained(export / "merged" / task).eval() for task in tasks]
    base = auto.from_pretrained(base_path).eval()

    def pha(batch: Batch) -> torch.Tensor:
        outputs, _ = model.heads.outputs(model(batch)["pooled"], batch["task_ids"])
        out = torch.zeros(len(batch["task_ids"]), width)
        for rows, values in outputs.values():
            out[rows, : values.shape[1]] = values
        return out

    def peft_mixed(batch: Batch) -> torch.Tensor:
        names = [tasks[t] for t in batch["task_ids"].tolist()]
        return task_heads(heads, peft(**encoder_inputs(batch), adapter_names=names).last_hidden_state, batch, width)

    def peft_grouped(batch: Batch) -> torch.Tensor:
        def run(task: int, inputs: Batch) -> torch.Tensor:
            peft.set_adapter(tasks[task])
            return apply_head(heads[task], peft(**inputs).last_hidden_state, inputs["attention_mask"])

        return grouped(batch, run, width)

    def merged_models(batch: Batch) -> torch.Tensor:
        def run(task: int, inputs: Batch) -> torch.Tensor:
            return apply_head(heads[task], merged[task](**inputs).last_hidden_state, inputs["attention_mask"])

        return grouped(batch, run, width)

    def bare(batch: Batch) -> torch.Tensor:
        return task_heads(heads, base(**encoder_inputs(batch)).last_hidden_state, batch, width)

    return {"pha": pha, "peft_mixed": peft_mixed, "peft_grouped": peft_grouped, "merged": merged_models, "base": bare}


def task_heads(heads: list[dict[str, torch.Tensor]], hidden: torch.Tensor, batch: Batch, width: int) -> torch.Tensor:
    """Each example's final states through its task's head (one batch, every task)."""
    out = torch.zeros(len(batch["task_ids"]), width)
    for task in batch["task_ids"].unique().tolist():
        rows = torch.nonzero(batch["task_ids"] == task).squeeze(1)
        result = apply_head(heads[task], hidden[rows], batch["attention_mask"][rows])
        out[rows, : result.shape[1]] = result
    return out


def timed(serve: Callable[[Batch], torch.Tensor], data: list[Batch]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) to serve every batch once."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for batch in data:
            serve(batch)
    return time.perf_counter() - wall, time.process_time() - cpu


def directory_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def measure(serve: dict[str, Callable[[Batch], torch.Tensor]], data: list[Batch], args: argparse.Namespace) -> dict:
    """Agreement with ``pha`` and interleaved timings of every variant on the same batches."""
    examples = sum(len(b["task_ids"]) for b in data)
    with torch.no_grad():
        reference = [serve["pha"](b) for b in data]
        agreement = {
            name: max(float((fn(b) - ref).abs().max()) for b, ref in zip(data, reference)) for name, fn in serve.items()
        }
    for fn in serve.values():  # warm-up
        timed(fn, data[:1])
    rows = []
    for repeat in range(args.repeats):
        order = VARIANTS if repeat % 2 == 0 else tuple(reversed(VARIANTS))
        for name in order:
            wall, cpu = timed(serve[name], data)
            rows.append({"variant": name, "repeat": repeat, "wall_s": wall, "cpu_s": cpu, "examples": examples})
    return {"rows": rows, "agreement": agreement, "examples": examples}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as folder:
        model, export = lora_model(args.backbone, args.tasks, args.lora_targets, Path(folder))
        serve = servers(model, export, args.tasks)
        results = {sampling: measure(serve, batches(args, sampling), args) for sampling in args.sampling}
        sizes = {
            "bundle": directory_mb(Path(folder) / "bundle"),
            "peft_per_task": directory_mb(export / "peft" / args.tasks[0]),
            "merged_per_task": directory_mb(export / "merged" / args.tasks[0]),
        }
    report(args, results, sizes, (load_before, load_average()))


def report(args: argparse.Namespace, results: dict[str, dict], sizes: dict, load: tuple[float, float]) -> None:
    """The markdown table (median examples/s per variant and batch kind) and the raw rows as JSON lines."""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    command = command_line()
    lines = [
        f"# Serving throughput ({args.backbone}, {len(args.tasks)} tasks, LoRA on {args.lora_targets})",
        "",
        f"`{command}`",
        "",
        f"{args.batches} batches of {args.batch_size} per repetition, {args.repeats} interleaved repetitions, "
        f"{machine_line(args.threads)}; {load_line(load)} (other processes share the cores: "
        "wall-clock rates are noisy, CPU time per example less so).",
        "",
        "| batches | variant | examples/s (median) | range | CPU ms / example | max abs diff to pha |",
        "|---|---|---|---|---|---|",
    ]
    for sampling, result in results.items():
        pha_rate = None
        for name in VARIANTS:
            mine = [r for r in result["rows"] if r["variant"] == name]
            rates = [r["examples"] / r["wall_s"] for r in mine]
            cpu = statistics.median(1000 * r["cpu_s"] / r["examples"] for r in mine)
            median = statistics.median(rates)
            pha_rate = pha_rate or median
            lines.append(
                f"| {sampling} | {name} | {median:.1f} ({median / pha_rate:.2f}× pha) | {min(rates):.1f}–{max(rates):.1f} "
                f"| {cpu:.2f} | {result['agreement'][name]:.1e} |"
            )
    lines += [
        "",
        f"Sizes on disk: bundle {sizes['bundle']:.1f} MB (every task), peft adapter {sizes['peft_per_task']:.2f} MB "
        f"per task, merged checkpoint {sizes['merged_per_task']:.1f} MB per task.",
        "",
    ]
    rows = [{**row, "batches": sampling} for sampling, result in results.items() for row in result["rows"]]
    write_report(args.output, lines, rows, command)


if __name__ == "__main__":
    main()
