"""Resumable records: a study appends one JSON line per finished run to its ``runs.jsonl``, and a
rerun of the same command runs only the cells whose row is missing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from studylib.portable import portable_text


def read_rows(jsonl: Path) -> list[dict]:
    """Every row of ``jsonl`` (none when the file does not exist yet)."""
    if not jsonl.exists():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


def finished(jsonl: Path, key: str = "run_id") -> dict[str, dict]:
    """The rows of ``jsonl`` by ``key``; a later row of the same id replaces an earlier one."""
    return {row[key]: row for row in read_rows(jsonl)}


def encode(row: dict) -> str:
    """A row as its JSON line, with no machine path in it (:mod:`studylib.portable`)."""
    return portable_text(json.dumps(row)) + "\n"


def append_row(jsonl: Path, row: dict) -> None:
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with jsonl.open("a") as handle:
        handle.write(encode(row))


def write_rows(jsonl: Path, rows: Iterable[dict]) -> None:
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    jsonl.write_text("".join(encode(row) for row in rows))


def run_missing(cells: list[tuple[str, Callable[[], dict]]], jsonl: Path, summary: Callable[[dict], str]) -> None:
    """Run each ``(run id, run)`` whose id has no row in ``jsonl`` yet and append its row as soon as
    it finishes (an interrupted study loses at most the run in progress); ``summary`` says a
    finished row in one line."""
    for index, (rid, run) in enumerate(cells, 1):
        if rid in finished(jsonl):
            print(f"[{index}/{len(cells)}] {rid}: done already, skipped", flush=True)
            continue
        row = run()
        append_row(jsonl, row)
        print(f"[{index}/{len(cells)}] {rid}: {summary(row)}", flush=True)
