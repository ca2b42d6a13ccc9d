"""What PHA and its baselines cost as the number of tasks grows, side by side in one run.

    python benchmarks/task_scaling.py                                # 5 20 50 100 200 tasks, 5 methods
    python benchmarks/task_scaling.py --sizes 5 100 --methods pha adapter --output-dir results/task_scaling

For each number of tasks N, N tasks are declared as task specs over small JSONL files (copies of
the four kinds of the built-in synthetic suite: two or three classes, a sentence pair, a score),
exactly as a user declares their own, and every (N, method) pair runs in its own process on
MiniLM: the data module with temperature sampling over the N tasks, a Lightning ``Trainer``
fitting batches of ``--batch-size`` (mixed tasks; one task per batch for HyperFormer, as its
original) for ``--warmup`` + ``--steps`` steps, then one
``validate`` over ``--val-per-task`` examples of every task, a checkpoint and a bundle. It
reports the median training step (from batch start to batch end: forward, backward, clipping,
AdamW; wall and CPU time of the process), the median time the loader takes to deliver a batch,
the evaluation time per example (wall and CPU), the peak memory (max RSS), the checkpoint and bundle sizes
and the trainable parameters. Sizes run innermost, so drift in the machine's load spreads over
every size of a method instead of favouring one. The short synthetic sentences keep the
backbone cheap, which makes any per-task overhead more visible than it is on real inputs.

Writes ``table.md`` (ratios to each method's smallest N) and ``runs.jsonl`` in the output folder;
rerunning some ``--methods`` into the same folder replaces only their rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from studylib.records import write_rows
from studylib.reports import command_line, write_portable
from studylib.study import method_settings

from pha_lightning.data import synthetic

MINILM = "pypi:all-MiniLM-L6-v2"
METHODS = ("pha", "pha_lora", "adapter", "task_adapter", "hyperformer")
#: the kinds of task copied to make N tasks: (synthetic draw, inputs, label space)
KINDS = (
    (synthetic.draw_polarity, ["sentence"], {"labels": ["negative", "positive"]}),
    (synthetic.draw_category, ["sentence"], {"labels": ["animal", "food", "vehicle"]}),
    (synthetic.draw_match, ["sentence1", "sentence2"], {"labels": ["different", "same"]}),
    (synthetic.draw_score, ["sentence"], {"regression": [0, 5]}),
)


def write_tasks(directory: Path, count: int, rows: int, val_rows: int) -> list[dict]:
    """``count`` task specs over JSONL files in ``directory``: task ``k`` copies kind ``k % 4``."""
    specs = []
    for k in range(count):
        draw, inputs, space = KINDS[k % len(KINDS)]
        rng = random.Random(k)
        path = directory / f"task{k:03d}.jsonl"
        with path.open("w") as handle:
            for _ in range(rows):
                fields, value = draw(rng)
                label = space["labels"][int(value)] if "labels" in space else value
                handle.write(json.dumps({**fields, "label": label}) + "\n")
        split = {"validation": val_rows, "test": val_rows}
        specs.append({"name": f"task{k:03d}", "files": {"all": str(path)}, "inputs": inputs, **space, "split": split})
    return specs


def arch_settings(method: str) -> dict[str, str]:
    """The architecture settings of the method's override file, configs/methods/<method>.yaml."""
    return method_settings(method)["model"]["arch"]


def sampling(method: str) -> str:
    """The method's batch sampling (HyperFormer's file says one task per batch, as the original)."""
    return method_settings(method).get("data", {}).get("sampling", "mixed")


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def worker(method: str, specs_file: Path, args: argparse.Namespace) -> dict:
    """Train, validate and save one (N, method) in this process; return its row."""
    import torch
    from lightning.pytorch import Callback

    from pha_lightning.data.catalog import portable_specs
    from pha_lightning.data.datamodule import PHADataModule
    from pha_lightning.model.config import PHAConfig
    from pha_lightning.training.scripting import quiet_trainer
    from pha_lightning.training.settings import LossConfig, OptimConfig
    from pha_lightning.training.system import PHAModule

    class StepTimer(Callback):
        """Wall and CPU time of each training batch, and the wait for the loader before it."""

        def __init__(self) -> None:
            self.steps: list[tuple[float, float]] = []
            self.waits: list[float] = []
            self.ended: float | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            now = time.perf_counter()
            if self.ended is not None:
                self.waits.append(now - self.ended)
            self.started = (now, time.process_time())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.ended = time.perf_counter()
            self.steps.append((self.ended - self.started[0], time.process_time() - self.started[1]))

    torch.manual_seed(0)
    specs = json.loads(specs_file.read_text())
    names = [spec["name"] for spec in specs]
    started = time.perf_counter()
    data = PHADataModule(
        names,
        task_specs=specs,
        backbone=MINILM,
        batch_size=args.batch_size,
        eval_batch_size=128,
        max_source_length=128,
        val_max_examples=args.val_per_task,
        cache_tokenized=False,
        sampling=sampling(method),
    )
    loss = LossConfig()
    arch = PHAConfig(
        backbone=MINILM,
        tasks=names,
        task_specs=portable_specs(specs),
        retriever=loss.trains_retriever(names),
        **arch_settings(method),
    )
    system = PHAModule(arch, loss=loss, optim=OptimConfig(warmup_steps=0))
    timer = StepTimer()
    trainer = quiet_trainer(
        devices=1,
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        enable_checkpointing=False,
        gradient_clip_val=1.0,
        callbacks=[timer],
    )
    trainer.fit(system, datamodule=data)
    setup_s = time.perf_counter() - started - sum(wall for wall, _ in timer.steps) - sum(timer.waits)
    trainer.limit_val_batches = 1.0
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.validate(system, datamodule=data, verbose=False)
    eval_s, eval_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    examples = sum(len(dataset) for dataset in data.datasets["validation"])
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.ckpt"
        trainer.save_checkpoint(checkpoint)
        bundle = system.model.save_pretrained(Path(tmp) / "bundle")
        sizes = directory_size(checkpoint), directory_size(bundle)
    measured = timer.steps[args.warmup :]
    trainable, _ = system.model.trainable_parameter_counts()
    return {
        "method": method,
        "tasks": len(names),
        "sampling": sampling(method),
        "step_s": statistics.median(wall for wall, _ in measured),
        "step_cpu_s": statistics.median(cpu for _, cpu in measured),
        "loader_wait_s": statistics.median(timer.waits[args.warmup :]),
        "eval_ms_per_example": 1000 * eval_s / examples,
        "eval_cpu_ms_per_example": 1000 * eval_cpu_s / examples,
        "eval_examples": examples,
        "setup_s": setup_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "checkpoint_mib": sizes[0] / 2**20,
        "bundle_mib": sizes[1] / 2**20,
        "trainable_params": trainable,
        "batch_size": args.batch_size,
        "steps": args.steps,
    }


def run_worker(method: str, specs_file: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, str(specs_file)]
    cmd += ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--val-per-task", str(args.val_per_task)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


COLUMNS = (
    ("step_s", "step (s)", ".3f"),
    ("step_cpu_s", "step CPU (s)", ".3f"),
    ("loader_wait_s", "loader wait (s)", ".4f"),
    ("eval_ms_per_example", "eval (ms/example)", ".2f"),
    ("eval_cpu_ms_per_example", "eval CPU (ms/example)", ".2f"),
    ("peak_rss_mib", "peak RSS (MiB)", ".0f"),
    ("checkpoint_mib", "checkpoint (MiB)", ".1f"),
    ("bundle_mib", "bundle (MiB)", ".1f"),
    ("setup_s", "setup (s)", ".1f"),
)


def table(rows: list[dict]) -> str:
    """One row per (method, N); each timed column also as a ratio to the method's smallest N."""
    header = ["method", "tasks", *(label for _, label, _ in COLUMNS), "step ×", "step CPU ×", "trainable params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=lambda r: (METHODS.index(r["method"]), r["tasks"])):
        base = min((r for r in rows if r["method"] == row["method"]), key=lambda r: r["tasks"])
        cells = [row["method"], str(row["tasks"])]
        cells += [format(row[key], spec) if key in row else "—" for key, _, spec in COLUMNS]
        cells += [f"{row['step_s'] / base['step_s']:.2f}", f"{row['step_cpu_s'] / base['step_cpu_s']:.2f}"]
        lines.append("| " + " | ".join([*cells, f"{row['trainable_params']:,}"]) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[5, 20, 50, 100, 200])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rows-per-task", type=int, default=240, help="rows in each task's file (train: the rest)")
    parser.add_argument("--val-per-task", type=int, default=32)
    parser.add_argument("--output-dir", type=Path, default=Path("results/task_scaling"))
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "SPECS"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]), args)))
        return
    args.output_dir.mkdir(parents=True, exist_ok=True)
    jsonl = args.output_dir / "runs.jsonl"
    # rows of other methods from an earlier run stay: a rerun of some methods replaces only theirs
    earlier = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    rows = [row for row in earlier if row["method"] not in args.methods]
    with tempfile.TemporaryDirectory() as tmp:
        spec_files = {}
        for size in args.sizes:
            folder = Path(tmp) / f"n{size}"
            folder.mkdir()
            spec_files[size] = folder / "specs.json"
            spec_files[size].write_text(json.dumps(write_tasks(folder, size, args.rows_per_task, args.val_per_task)))
        for method in args.methods:
            for size in args.sizes:
                row = run_worker(method, spec_files[size], args)
                rows.append(row)
                print(json.dumps(row), flush=True)
    text = table(rows)
    command = command_line()
    write_portable(args.output_dir / "table.md", f"Last command: `{command}`\n\n{text}\n")
    write_rows(jsonl, rows)
    print(text)


if __name__ == "__main__":
    main()
