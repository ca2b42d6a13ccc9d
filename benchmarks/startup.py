"""Start-up time of the ``pha`` command, this working tree against an older commit, in one run.

    python benchmarks/startup.py --output results/startup/table.md

Each measurement is one process running the console script's code (``from pha_lightning.cli import
main; main()``) with ``PYTHONPATH`` pointing at the tree it measures: ``pha --help``, ``pha tasks``
(the built-in list), ``pha fit --help`` and ``python -c "import pha_lightning.cli"``. This tree's
``pha fit --help`` is timed twice per round: cold (an empty help cache, ``PHA_CACHE_DIR``) and
cached (the same cache again); the two outputs are checked byte-identical. The older commit
(default ``97f5334``) is checked out with ``git worktree add`` into a temporary directory. Trees
are interleaved (old, new, then new, old next round) so that load from other processes hits them
alike. CPU time (user + system of the child, from ``getrusage``) is the main figure on a shared
machine; the wall clock is beside it. Last, one ``python -X importtime`` run of this tree's
uncached ``pha fit --help`` says where its import time goes, summed by top-level package.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from studylib.reports import command_line, write_report
from studylib.runs import OldTree
from studylib.timing import load_average

ROOT = Path(__file__).resolve().parents[1]
#: what the ``pha`` console script runs
ENTRY = "import sys; from pha_lightning.cli import main; sys.argv[0] = 'pha'; sys.exit(main())"
#: measured command → the arguments after ``python``
COMMANDS: dict[str, list[str]] = {
    "pha --help": ["-c", ENTRY, "--help"],
    "pha tasks": ["-c", ENTRY, "tasks"],
    "pha fit --help": ["-c", ENTRY, "fit", "--help"],
    "import pha_lightning.cli": ["-c", "import pha_lightning.cli"],
}


def environment(tree: Path, cache: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(tree),
        "PHA_CACHE_DIR": cache,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "COLUMNS": "100",  # one width for every run, whatever the terminal
    }


def measure(args: list[str], env: dict[str, str]) -> tuple[dict[str, float], str]:
    """Wall and CPU seconds of one process, and what it printed; it must exit with status 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], env=env, cwd=env["PYTHONPATH"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{args} exited {result.returncode}:\n{result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}, result.stdout


def measure_tree(label: str, tree: Path, round_index: int) -> list[dict]:
    """Every command once on ``tree``; this tree's ``pha fit --help`` cold and then cached."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="pha-help-cache-") as cache:
        for command, args in COMMANDS.items():
            variant = f"{command} (cold)" if label == "new" and command == "pha fit --help" else command
            times, printed = measure(args, environment(tree, cache))
            rows.append({"tree": label, "command": variant, "round": round_index, **times})
            if variant.endswith("(cold)"):
                times, cached = measure(args, environment(tree, cache))
                if cached != printed:
                    raise SystemExit("pha fit --help from the cache differs from the rendered help")
                rows.append({"tree": label, "command": "pha fit --help (cached)", "round": round_index, **times})
    return rows


def importtime_by_package(tree: Path) -> tuple[float, list[tuple[str, float]], float]:
    """Total import time, the seconds spent in each top-level package's own modules (self times
    summed, largest first), and the process's CPU seconds, of one uncached ``pha fit --help``."""
    args = ["-X", "importtime", *COMMANDS["pha fit --help"]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, *args], env=environment(tree, ""), cwd=ROOT, capture_output=True, text=True
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    by_package: dict[str, float] = defaultdict(float)
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        by_package[name.strip().split(".")[0]] += int(own) / 1e6
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ranked = sorted(by_package.items(), key=lambda item: -item[1])
    return sum(by_package.values()), ranked, cpu


def median(rows: list[dict], tree: str, command: str, key: str) -> float | None:
    values = [row[key] for row in rows if row["tree"] == tree and row["command"] == command]
    return statistics.median(values) if values else None


def table(rows: list[dict]) -> list[str]:
    """One line per command: the old and new medians, CPU and wall, and old / new (CPU)."""
    lines = [
        "| command | old CPU s | new CPU s | old / new (CPU) | old wall s | new wall s |",
        "|---|---|---|---|---|---|",
    ]
    for command in dict.fromkeys(row["command"] for row in rows):
        old_command = command.split(" (")[0]
        old_cpu, new_cpu = median(rows, "old", old_command, "cpu"), median(rows, "new", command, "cpu")
        old_wall, new_wall = median(rows, "old", old_command, "wall"), median(rows, "new", command, "wall")
        if new_cpu is None:
            continue
        ratio = f"{old_cpu / new_cpu:.1f}×" if old_cpu else "–"
        lines.append(
            f"| `{command}` | {old_cpu:.2f} | {new_cpu:.2f} | {ratio} | {old_wall:.2f} | {new_wall:.2f} |"
            if old_cpu is not None
            else f"| `{command}` | – | {new_cpu:.2f} | – | – | {new_wall:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-commit", default="97f5334", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--top", type=int, default=12, help="packages in the import-time summary")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "startup" / "table.md")
    options = parser.parse_args()
    load_before, rows = load_average(), []
    with OldTree(options.old_commit) as old:
        for round_index in range(options.rounds):
            trees = [("old", old), ("new", ROOT)]
            for label, tree in trees if round_index % 2 == 0 else trees[::-1]:
                rows.extend(measure_tree(label, tree, round_index))
                print(f"round {round_index}: {label} done", file=sys.stderr, flush=True)
    total, packages, cpu = importtime_by_package(ROOT)
    lines = [
        "# Start-up of the `pha` command",
        "",
        f"`python benchmarks/startup.py --old-commit {options.old_commit} --rounds {options.rounds}`: medians of "
        f"{options.rounds} interleaved rounds; old = {options.old_commit}, new = this tree. CPU time = user + system "
        f"of the process; load average {load_before:.1f} before, {load_average():.1f} after.",
        "",
        *table(rows),
        "",
        "## Where `pha fit --help` spends its import time (uncached, `python -X importtime`, one run)",
        "",
        f"Imports {total:.2f} s (import time is wall clock) of a {cpu:.2f} s CPU process; the rest is building "
        "LightningCLI's parser from the classes' signatures and docstrings, and printing.",
        "",
        "| package | own modules' import time, s |",
        "|---|---|",
        *(f"| {name} | {seconds:.2f} |" for name, seconds in packages[: options.top]),
        "",
    ]
    write_report(options.output, lines, rows, command_line())


if __name__ == "__main__":
    main()
