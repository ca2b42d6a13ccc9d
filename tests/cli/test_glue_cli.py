"""``pha`` on real GLUE data: a short fit + test on two local tasks prints the per-task table; an
unreachable hub is one clear error line; every shipped GLUE/SuperGLUE config parses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the pha command on local GLUE files

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
PHA = shutil.which("pha", path=str(Path(sys.executable).parent)) or shutil.which("pha")


def pha(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    assert PHA, "the pha console script is not installed (pip install -e .)"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [PHA, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no local benchmark data at {SHARED_DATA}")
def test_fit_and_test_on_two_local_glue_tasks_prints_the_per_task_table(tmp_path: Path) -> None:
    result = pha(
        "fit",
        "--config=" + str(REPO / "configs" / "glue_local_minilm.yaml"),
        "--data.tasks=[rte,stsb]",
        f"--data.data_dir={SHARED_DATA}",
        "--data.n_train=16",
        "--data.batch_size=8",
        "--data.eval_batch_size=32",
        "--data.max_source_length=48",
        "--model.optim.warmup_steps=0",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--test_after_fit=true",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("metrics (test, ×100)") :]
    rows = {line.split()[0]: line for line in table.splitlines()[1:4]}
    assert set(rows) == {"rte", "stsb", "average"}
    assert "accuracy=" in rows["rte"] and "pearson=" in rows["stsb"] and "spearman=" in rows["stsb"]
    metrics = json.loads(next(tmp_path.rglob("test_metrics.json")).read_text())
    assert {"test/rte/accuracy", "test/stsb/pearson", "test/stsb/spearman", "test/avg"} <= set(metrics)
    assert 0 <= metrics["test/rte/accuracy"] <= 100


def test_unreachable_hub_is_one_error_line_and_exit_status_2(tmp_path: Path) -> None:
    result = pha(
        "fit",
        "--data.tasks=[rte,cb]",
        "--data.source=hub",
        "--trainer.max_steps=1",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
        cwd=tmp_path,
        # an empty datasets cache, so a copy cached on this machine cannot make the hub unnecessary
        env={"HF_DATASETS_CACHE": str(tmp_path / "datasets"), "PHA_DATA_DIR": ""},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("pha: error:")]
    assert len(error) == 1
    assert "task 'rte': the Hugging Face hub could not be reached to load nyu-mll/glue (config 'rte'" in error[0]
    assert "--data.data_dir" in error[0]


@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        (
            ["glue_mtl.yaml"],
            [
                "max_steps: 10000",
                "backbone: google-t5/t5-base",
                "  - qqp",
                "batch_size: 128",
                "learning_rate: 0.0003",
                "warmup_steps: 500",
                "temperature: 10.0",
                "n_train: null",
            ],
        ),
        (["glue_mtl.yaml", "low_data/n100.yaml"], ["max_steps: 5000", "n_train: 100", "  - mnli"]),
        (["glue_mtl.yaml", "low_data/n4000.yaml"], ["max_steps: 10000", "n_train: 4000"]),
        (["superglue_mtl.yaml", "low_data/n500.yaml"], ["max_steps: 5000", "n_train: 500", "  - multirc", "  - wsc"]),
        (["glue_local_minilm.yaml"], ["backbone: pypi:all-MiniLM-L6-v2", "source: local", "  - sst2"]),
    ],
)
def test_shipped_configs_parse_and_compose(
    configs: list[str], expected: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pha_lightning.cli import main  # in-process: parsing needs no subprocess start-up

    monkeypatch.setattr(sys, "argv", ["pha"])
    args = [f"--config={REPO / 'configs' / name}" for name in configs]
    with pytest.raises(SystemExit) as exited:
        main(["fit", *args, "--print_config"])
    assert exited.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "trainer: null" not in printed  # an override file must not wipe a whole section
    for line in expected:
        assert line in printed, line
