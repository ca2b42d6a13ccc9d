"""Real-token throughput of training and evaluation, this working tree against an older commit, in one run.

    python benchmarks/throughput.py --data-dir <data dir> --output results/throughput/cpu.md

Throughput counts real tokens only (the attention mask's ones), so padding done faster is no
gain. The older commit (default ``9f80f1a``) is checked out with ``git worktree add`` into a
temporary directory; every measurement runs in its own process with ``PYTHONPATH`` pointing at
the tree it measures, on the same batches (same data, sampler seed and model seed). Variants are
interleaved (old, new, …, then the reverse order next round) so that load from other processes
hits them alike; ratios are taken within a round, and the table reports their median.

Variants: ``old`` (the older commit), ``new`` (this tree with its defaults), ``new_padded``
(this tree, chunking off: what length-aware execution alone gives) and ``new_bf16`` (this tree
under bf16 autocast). Each process trains ``--steps`` optimizer steps after ``--warmup``
unmeasured ones on MiniLM, then runs one evaluation pass (``predict_values``) over the same
evenly spaced validation examples (``--eval-examples`` per task); with ``--val-default`` it also times the validation pass as the data module's
defaults make it (for the "validation under 5 s" check). Peak memory is the process's max RSS
after training. Times are taken both on the wall clock and as the process's CPU time: with
``--threads 1`` on a shared machine, CPU time measures the code and the wall clock the load.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from studylib.records import write_rows
from studylib.reports import write_portable
from studylib.runs import OldTree
from studylib.timing import load_average
from studylib.workloads import BACKBONE, SUITES, build, classes, optimizer_step, time_evaluation

ROOT = Path(__file__).resolve().parents[1]
#: variant → (tree: "old" or "new", model keyword arguments, bf16 autocast)
VARIANTS: dict[str, tuple[str, dict, bool]] = {
    "old": ("old", {}, False),
    "new": ("new", {}, False),
    "new_padded": ("new", {"chunk_cost_tokens": None}, False),
    "new_bf16": ("new", {}, True),
}


def time_training(model, data, spec: dict) -> dict:
    """Seconds and real tokens of ``steps`` optimizer steps after ``warmup`` unmeasured ones."""
    import torch

    model.configure_model()  # the system builds its model there (a no-op hook on older commits)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["bf16"])
    batches = iter(data.train_dataloader())
    seconds = cpu_seconds = tokens = padded = 0.0
    step_times, step_cpu_times = [], []
    for step in range(spec["warmup"] + spec["steps"]):
        batch = next(batches)
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer_step(model, optimizer, batch, autocast)
        elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
        if step >= spec["warmup"]:
            seconds += elapsed
            cpu_seconds += cpu_elapsed
            step_times.append(elapsed)
            step_cpu_times.append(cpu_elapsed)
            tokens += float(batch["attention_mask"].sum())
            padded += batch["attention_mask"].numel()
    return {
        "train_s": seconds,
        "train_tokens": tokens,
        "train_tokens_per_s": tokens / seconds,
        "train_tokens_per_cpu_s": tokens / cpu_seconds,
        "train_median_step_s": statistics.median(step_times),
        "train_median_step_cpu_s": statistics.median(step_cpu_times),
        "train_real_fraction": tokens / padded,
    }


def default_validation_seconds(model, spec: dict, bf16: bool) -> tuple[float, float] | None:
    """(seconds, CPU seconds) of a validation pass as the data module's defaults make it (``None``
    where it has no subset option)."""
    PHADataModule, _ = classes()

    if "val_max_examples" not in inspect.signature(PHADataModule).parameters:
        return None
    suite = dict(SUITES[spec["suite"]], data_dir=spec["data_dir"]) if spec["suite"] == "glue" else SUITES[spec["suite"]]
    data = PHADataModule(backbone=BACKBONE, **suite)
    data.setup("validate")
    time_evaluation(model, [data.val_dataloader()[0]], bf16)  # warm-up
    return time_evaluation(model, data.val_dataloader(), bf16)[:2]


def worker(spec: dict) -> dict:
    """One measurement, in this process."""
    import pha_lightning

    load_before = load_average()
    data, model = build(spec)
    row = {**spec, "pha_lightning": str(Path(pha_lightning.__file__).parent), **time_training(model, data, spec)}
    row["train_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loaders = data.val_dataloader()
    time_evaluation(model, [loaders[0]], spec["bf16"])  # warm-up
    row["eval_s"], row["eval_cpu_s"], row["eval_tokens"] = time_evaluation(model, loaders, spec["bf16"])
    row["eval_tokens_per_s"] = row["eval_tokens"] / row["eval_s"]
    row["eval_tokens_per_cpu_s"] = row["eval_tokens"] / row["eval_cpu_s"]
    if spec["val_default"]:
        row["val_default_s"] = default_validation_seconds(model, spec, spec["bf16"])
    row["load_average"] = [load_before, load_average()]
    return row


def run_measurement(spec: dict, tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env, cwd=tree
    )
    if out.returncode != 0:
        raise RuntimeError(f"{spec['variant']}/{spec['suite']}/{spec['method']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio_cell(rows: list[dict], variant: str, key: str) -> str:
    """Median over rounds of ``variant``'s ``key`` divided by ``old``'s in the same round."""
    by_round = {r["round"]: r for r in rows if r["variant"] == "old"}
    ratios = [r[key] / by_round[r["round"]][key] for r in rows if r["variant"] == variant and r["round"] in by_round]
    if not ratios:
        return "–"
    return f"{statistics.median(ratios):.2f}" + (f" ({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else "")


def table(rows: list[dict]) -> str:
    """Markdown: per suite, method and variant, medians over rounds and ratios to ``old``.

    Throughput per CPU-second (one thread per process) is the headline: on a shared machine the
    wall clock mostly measures the other processes; the wall-clock columns are shown beside it.
    """
    lines = [
        "| suite | method | variant | train real tok/CPU-s | × old | train real tok/s (wall) | × old | "
        "step CPU-s | real-token share | peak MiB | × old | eval real tok/CPU-s | × old | "
        "default val pass CPU-s (wall s) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["suite"], r["method"], r["variant"]) for r in rows}, key=lambda k: (k[0], k[1], list(VARIANTS).index(k[2]))
    )
    for suite, method, variant in keys:
        group = [r for r in rows if (r["suite"], r["method"]) == (suite, method)]
        mine = [r for r in group if r["variant"] == variant]

        def median(key: str) -> float:
            return statistics.median(r[key] for r in mine)

        val = [r["val_default_s"] for r in mine if r.get("val_default_s") is not None]
        loads = [x for r in mine for x in r["load_average"]]
        cells = [
            suite,
            method,
            variant,
            f"{median('train_tokens_per_cpu_s'):.0f}",
            ratio_cell(group, variant, "train_tokens_per_cpu_s"),
            f"{median('train_tokens_per_s'):.0f}",
            ratio_cell(group, variant, "train_tokens_per_s"),
            f"{median('train_median_step_cpu_s'):.3f}",
            f"{median('train_real_fraction'):.2f}",
            f"{median('train_peak_mib'):.0f}",
            ratio_cell(group, variant, "train_peak_mib"),
            f"{median('eval_tokens_per_cpu_s'):.0f}",
            ratio_cell(group, variant, "eval_tokens_per_cpu_s"),
            f"{statistics.median(v[1] for v in val):.1f} ({statistics.median(v[0] for v in val):.1f})" if val else "–",
            f"{min(loads):.1f}–{max(loads):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_ratio_lines(rows: list[dict]) -> list[str]:
    """PHA's median step CPU time over the shared adapter's, per suite and variant (same round)."""
    lines = []
    for suite in sorted({r["suite"] for r in rows}):
        for variant in VARIANTS:
            pairs = [
                (p["train_median_step_cpu_s"], a["train_median_step_cpu_s"])
                for p in rows
                for a in rows
                if (p["suite"], p["variant"], p["method"]) == (suite, variant, "pha")
                and (a["suite"], a["variant"], a["method"], a["round"]) == (suite, variant, "adapter", p["round"])
            ]
            if pairs:
                ratio = statistics.median(p / a for p, a in pairs)
                lines.append(f"* {suite}, {variant}: PHA step = {ratio:.2f} × adapter step (CPU time)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-commit", default="9f80f1a", help="the commit to compare against")
    parser.add_argument("--data-dir", default=os.environ.get("PHA_DATA_DIR"), help="GLUE files (the glue suite)")
    parser.add_argument("--suites", nargs="+", default=["glue", "synthetic"], choices=list(SUITES))
    parser.add_argument("--methods", nargs="+", default=["pha", "adapter"])
    parser.add_argument("--variants", nargs="+", default=["old", "new", "new_padded"], choices=list(VARIANTS))
    parser.add_argument("--model-args", default="{}", help="JSON keyword arguments for every 'new' variant's PHAModule")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=100, help="train examples per GLUE task")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--eval-examples", type=int, default=250, help="validation examples per task to evaluate")
    parser.add_argument("--threads", type=int, help="torch intra-op threads per process (default: torch's)")
    parser.add_argument("--val-default", action="store_true", help="also time the default validation pass")
    parser.add_argument("--output", type=Path, help="write the markdown table here (and the rows as .jsonl next to it)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if "glue" in args.suites and not args.data_dir:
        parser.error("the glue suite needs --data-dir (or PHA_DATA_DIR)")
    args.data_dir = args.data_dir and os.path.abspath(args.data_dir)  # each worker runs in the tree it measures
    rows = []
    with OldTree(args.old_commit) as old_tree:
        trees = {"old": old_tree, "new": ROOT}
        for round_ in range(args.rounds):
            order = args.variants if round_ % 2 == 0 else args.variants[::-1]
            for suite in args.suites:
                for method in args.methods:
                    for variant in order:
                        tree, model_kwargs, bf16 = VARIANTS[variant]
                        if tree == "new":
                            model_kwargs = {**model_kwargs, **json.loads(args.model_args)}
                        spec = {
                            "suite": suite,
                            "method": method,
                            "variant": variant,
                            "round": round_,
                            "model_kwargs": model_kwargs,
                            "bf16": bf16,
                            "batch_size": args.batch_size,
                            "n_train": args.n_train,
                            "data_dir": args.data_dir,
                            "steps": args.steps,
                            "warmup": args.warmup,
                            "val_default": args.val_default and tree == "new",
                            "eval_examples": args.eval_examples,
                            "threads": args.threads,
                        }
                        row = run_measurement(spec, trees[tree])
                        row["commit"] = args.old_commit if tree == "old" else "working tree"
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    text = "\n".join([table(rows), "", *step_ratio_lines(rows)])
    print(text)
    if args.output:
        write_portable(args.output, text + "\n")
        write_rows(args.output.with_suffix(".jsonl"), rows)


if __name__ == "__main__":
    main()
