"""Reports: markdown tables, the line that says where and how loaded a measurement ran, and the
report files (the table as markdown, every measurement as JSON lines beside it)."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from studylib.portable import portable_text
from studylib.records import write_rows
from studylib.runs import ROOT


def mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def number(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that wrote a report, as a reader reruns it from the checkout (no machine path)."""
    script, *rest = sys.argv if argv is None else argv
    script = os.path.relpath(Path(script).resolve(), ROOT) if Path(script).resolve().is_relative_to(ROOT) else script
    return portable_text("python " + " ".join(shlex.quote(a) for a in [script, *rest]))


def report_head(title: str, command: str, note: str | None) -> list[str]:
    """A report's first lines: its title, the command that wrote it and the run's note, if any."""
    return [f"# {title}", "", f"`{command}`", "", *([f"**{note}**", ""] if note else [])]


def machine_line(threads: int | None = None) -> str:
    """Where a measurement ran: architecture, cores, torch and the torch threads."""
    import torch

    used = f", {threads} torch thread(s)" if threads is not None else ""
    return f"{platform.machine()} with {os.cpu_count()} cores, torch {torch.__version__}{used}"


def load_line(load: tuple[float, float]) -> str:
    return f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end"


def write_portable(path: Path, text: str) -> None:
    """Write a result file (a table, a summary) without machine paths, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(portable_text(text))


def write_report(output: Path, lines: Sequence[str], rows: Iterable[dict], command: str) -> None:
    """``output`` (markdown), its measurements as JSON lines beside it (``.jsonl``, each with the
    command), both without machine paths; the markdown is also printed."""
    text = "\n".join(lines)
    write_portable(output, text + "\n")
    write_rows(output.with_suffix(".jsonl"), ({**row, "command": command} for row in rows))
    print(text)
