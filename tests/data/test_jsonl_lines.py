"""JSON Lines end at ``\n`` only: a string may hold U+2028, U+2029 or U+0085 (valid JSON, written raw
by ``json.dumps(..., ensure_ascii=False)``), which ``str.splitlines`` would take for line ends. Every
JSONL reader of the package (prediction files, benchmark files, spec files) reads such a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pha_lightning.data.examples import read_jsonl as read_prediction_file
from pha_lightning.data.readers import read_jsonl as read_benchmark_file
from pha_lightning.data.readers import read_table
from pha_lightning.errors import DataError

#: texts holding every character ``str.splitlines`` splits at that JSON allows raw inside a string
ROWS = [
    {"sentence": "first\u2028line separator", "label": "0"},
    {"sentence": "paragraph\u2029separator", "label": "1"},
    {"sentence": "next\u0085line", "label": "0"},
]


def _write(path: Path, rows: list[dict], ending: str = "\n") -> Path:
    path.write_bytes("".join(json.dumps(row, ensure_ascii=False) + ending for row in rows).encode("utf-8"))
    return path


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_prediction_file_keeps_line_separators_inside_strings(tmp_path: Path, ending: str) -> None:
    path = _write(tmp_path / "in.jsonl", ROWS, ending)
    assert list(read_prediction_file(path)) == [(number, row) for number, row in enumerate(ROWS, start=1)]


def test_prediction_file_errors_count_lines_at_newlines_only(tmp_path: Path) -> None:
    path = _write(tmp_path / "in.jsonl", ROWS)
    path.write_bytes(path.read_bytes() + b'{"sentence": \n')
    with pytest.raises(DataError, match=rf"{path}:4: not valid JSON"):
        list(read_prediction_file(path))


def test_benchmark_and_spec_files_keep_line_separators_inside_strings(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.jsonl", ROWS)
    assert [row for _, row in read_benchmark_file(path, "task")] == ROWS
    assert read_table(path, "jsonl", "utf-8", None, ["sentence", "label"]).to_list() == ROWS
