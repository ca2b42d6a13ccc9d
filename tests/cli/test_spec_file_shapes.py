"""``pha tasks`` on a user's header-less file with a fold field and 1-based labels, its spec given as a
configuration to ``--data.task_specs`` (issue 54 item 6): what the command shows and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pha_lightning.cli import main

pytestmark = pytest.mark.slow  # runs the pha command (tokenises with the backbone)

SPEC = {
    "name": "folds",
    "files": {"all": "r.tsv"},
    "columns": ["label", "text", "fold"],
    "inputs": ["text"],
    "split_column": {"name": "fold", "train": [0, 1, 2, 3, 4, 5, 6, 7], "validation": 8, "test": 9},
}


def write_project(root: Path, **overrides: object) -> Path:
    lines = [f"{1 + i % 2}\tthe film was {'good' if i % 2 else 'bad'} {i}\t{i % 10}" for i in range(60)]
    (root / "r.tsv").write_text("\n".join(lines) + "\n")
    path = root / "specs.yaml"
    path.write_text(yaml.safe_dump({"data": {"tasks": ["folds"], "task_specs": [{**SPEC, **overrides}]}}))
    return path


def test_a_config_shaped_spec_file_with_mapped_and_read_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_project(tmp_path, labels={1: "negative", 2: "positive"})
    main(["tasks", f"--data.task_specs={path}", "--data.tasks=[folds]", f"--data.data_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "split by its field 'fold'" in out and "rows: train 48, validation 6, test 6" in out
    assert "labels (kept train rows): negative 24, positive 24" in out
    path = write_project(tmp_path)  # no labels: those of the training rows
    main(["tasks", f"--config={path}", f"--data.data_dir={tmp_path}"])
    assert "labels (kept train rows): 1 24, 2 24" in capsys.readouterr().out


def test_a_bad_split_value_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_project(tmp_path, split_column={"name": "fold", "train": [0, 1, 2, 3, 4, 5, 6, 7], "test": 9})
    with pytest.raises(SystemExit):
        main(["tasks", f"--config={path}", f"--data.data_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: datasets' progress bars
    assert err.startswith("pha: error: task 'folds', ")
    assert "r.tsv, line 9: split_column 'fold' holds '8', which names no split" in err
