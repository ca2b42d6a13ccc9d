"""What routing costs in prediction: CPU ms per example of ``PHAModel.predict`` when every example
names its task, when none does, and half and half; this tree's code against another revision's, in one run.

    python benchmarks/routing_cost.py --baseline-rev main --output results/serving_load/routing_cost.md

The model is the PHA-LoRA model of benchmarks/serving.py and benchmarks/serve_load.py (MiniLM,
the four offline-suite tasks, random non-zero factors), the examples the validation stream of
serve_load.py. ``--baseline-rev`` loads ``pha_lightning/model/prediction.py`` of that git revision
(the rest of the package is this tree's) and times its ``predict`` on the same model, interleaved
with this tree's per repetition so a change of machine load hits both alike; the rows of both are
checked equal (tasks, labels, abstentions; scores, similarities and confidences within 1e-4).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from studylib.reports import command_line, load_line, machine_line, report_head, write_report
from studylib.serving_model import TASKS, lora_model, request_stream
from studylib.timing import load_average, timed

ROOT = Path(__file__).resolve().parents[1]
STREAMS = ("named", "routed", "half")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="pypi:all-MiniLM-L6-v2", help="an encoder-only backbone")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--lora-targets", nargs="+", default=["query", "value"])
    parser.add_argument("--examples", type=int, default=256, help="examples per stream")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per forward pass")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--baseline-rev", help="a git revision whose prediction.py is timed alongside")
    parser.add_argument("--note", default="", help="a line for the report (e.g. how loaded the machine is)")
    parser.add_argument("--output", type=Path, default=Path("results/serving_load/routing_cost.md"))
    return parser.parse_args()


def prediction_module(rev: str, folder: Path) -> ModuleType:
    """``pha_lightning/model/prediction.py`` as of ``rev``, imported beside this tree's package."""
    source = subprocess.run(
        ["git", "show", f"{rev}:pha_lightning/model/prediction.py"], cwd=ROOT, capture_output=True, text=True
    )
    if source.returncode != 0:
        raise SystemExit(f"--baseline-rev {rev!r}: {source.stderr.strip()}")
    path = folder / "prediction_baseline.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("prediction_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def streams(tasks: list[str], n: int) -> dict[str, list[dict[str, Any]]]:
    """The validation stream serve_load.py sends: every example named, none, and half."""
    named = request_stream(tasks, n)
    unnamed = [{k: v for k, v in example.items() if k != "task"} for example in named]
    return {
        "named": named,
        "routed": unnamed,
        "half": [e if i % 2 else u for i, (e, u) in enumerate(zip(named, unnamed))],
    }


def cpu_ms_per_example(run: Callable[[], list[dict]], n: int) -> tuple[float, list[dict]]:
    rows, _, cpu = timed(run)
    return 1000 * cpu / n, rows


def same_rows(rows: list[dict], reference: list[dict]) -> bool:
    for row, expected in zip(rows, reference, strict=True):
        if row.keys() != expected.keys():
            return False
        for key, value in expected.items():
            got = row[key]
            if isinstance(value, float) and not (isinstance(got, float) and abs(got - value) < 1e-4):
                return False
            if not isinstance(value, float) and got != value:
                return False
    return True


def main() -> None:
    args = parse_args()
    from pha_lightning.model import prediction

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="this model has no routing calibration")  # random: no calibration
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="routing-cost-") as tmp:
        model, _ = lora_model(args.backbone, args.tasks, args.lora_targets, Path(tmp))  # precomputed adapters
        variants = {"this tree": prediction}
        if args.baseline_rev:
            variants = {args.baseline_rev: prediction_module(args.baseline_rev, Path(tmp)), **variants}
        data = streams(args.tasks, args.examples)
        times: dict[tuple[str, str], list[float]] = {(v, s): [] for v in variants for s in STREAMS}
        equal = {s: True for s in STREAMS}
        for _ in range(args.repeats):
            for stream, examples in data.items():
                rows = {}
                for name, module in variants.items():
                    ms, rows[name] = cpu_ms_per_example(
                        lambda m=module: m.predict(model, examples, args.batch_size), len(examples)
                    )
                    times[name, stream].append(ms)
                equal[stream] &= same_rows(rows["this tree"], next(iter(rows.values())))
    report(args, variants, times, equal, (load_start, load_average()))


def report(
    args: argparse.Namespace, variants: dict, times: dict, equal: dict[str, bool], load: tuple[float, float]
) -> None:
    command = command_line()
    lines = [
        *report_head(
            f"Routing cost in prediction ({args.backbone}, {len(args.tasks)} tasks, LoRA on {args.lora_targets})",
            command,
            args.note,
        ),
        f"CPU ms per example of `PHAModel.predict` ({args.examples} validation examples per stream, batches of "
        f"{args.batch_size}, one torch thread), median over {args.repeats} interleaved repetitions [range]; "
        f"{machine_line()}; {load_line(load)}.",
        "",
        "| code | " + " | ".join(STREAMS) + " | half / named |",
        "|---|" + "---|" * (len(STREAMS) + 1),
    ]
    for name in variants:
        cells = [
            f"{statistics.median(times[name, s]):.2f} [{min(times[name, s]):.2f}–{max(times[name, s]):.2f}]"
            for s in STREAMS
        ]
        ratio = statistics.median(times[name, "half"]) / statistics.median(times[name, "named"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    if len(variants) > 1:
        lines += [
            "",
            "Rows equal to the baseline's: " + ", ".join(f"{s} {'yes' if equal[s] else 'NO'}" for s in STREAMS),
        ]
    rows = [{"code": name, "stream": stream, "cpu_ms_per_example": values} for (name, stream), values in times.items()]
    write_report(args.output, lines, rows, command)


if __name__ == "__main__":
    main()
