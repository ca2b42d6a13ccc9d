"""The ``pha`` console script end to end: fit, then validate and test from the saved checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pha_lightning.cli import main

pytestmark = pytest.mark.slow  # trains and runs the pha command in subprocesses

PHA = shutil.which("pha", path=str(Path(sys.executable).parent)) or shutil.which("pha")
TINY = [
    "--data.tasks=[synth_polarity,synth_score]",
    "--data.n_train=64",
    "--data.batch_size=16",
    "--data.max_source_length=48",
    "--model.optim.warmup_steps=0",
    "--model.optim.learning_rate=1e-3",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
]


def run_pha(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert PHA, "the pha console script is not installed (pip install -e .)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([PHA, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"pha {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _metrics(path: Path) -> dict[str, float]:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    result = run_pha(
        "fit",
        *TINY,
        "--trainer.max_steps=8",
        "--trainer.val_check_interval=4",
        "--trainer.check_val_every_n_epoch=null",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.default_root_dir={root}",
        cwd=root,
    )
    (root / "fit_output.txt").write_text(result.stdout + result.stderr)
    return root


def test_fit_advises_once_on_the_adapter_kind_for_its_examples_per_task(fitted: Path) -> None:
    """64 examples per task with PHA's default bottleneck adapters: the side where generated LoRA was ahead."""
    output = (fitted / "fit_output.txt").read_text()
    assert output.count("at 64 training examples per task (median over 2 tasks)") == 1, output[-3000:]
    assert "--model.arch.adapter_kind=lora" in output


def _checkpoint(root: Path, which: str) -> Path:
    found = sorted(root.rglob(f"{which}*.ckpt"))
    assert found, f"no {which} checkpoint under {root}"
    return found[-1]


def test_checkpoint_holds_only_trainable_weights_and_backbone_name(fitted: Path) -> None:
    ckpt = torch.load(_checkpoint(fitted, "step"), map_location="cpu", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert (
        keys
        and all(k.startswith("model.") for k in keys)
        and not any(k.startswith("model.arch.backbone.") for k in keys)
    )
    assert {k.split(".")[1] for k in keys} == {"shared_adapters", "hypernetwork", "retriever", "prototypes", "heads"}
    assert ckpt["pha_backbone"]["name"] == "pypi:all-MiniLM-L6-v2"
    assert Path(ckpt["pha_backbone"]["resolved_path"], "config.json").exists()
    assert set(ckpt["pha_val_metrics"]) >= {"val/avg", "val/synth_polarity/accuracy", "val/synth_score/pearson"}


def test_fit_writes_the_run_record_beside_its_config(fitted: Path) -> None:
    """Only ``fit`` writes it: its version folder holds the command line and the accelerator."""
    (record_path,) = fitted.rglob("run_record.json")
    record = json.loads(record_path.read_text())
    assert (record_path.parent / "config.yaml").exists() and (record_path.parent / "health.json").exists()
    assert record["command"][:2] == ["pha", "fit"] and "--trainer.max_steps=8" in record["command"]
    assert record["machine"]["accelerator"] == "CPUAccelerator"
    assert record["code"] is not None and len(record["code"]["commit"]) == 40


def test_validate_reproduces_the_checkpoints_metrics_and_test_runs(fitted: Path) -> None:
    best = _checkpoint(fitted, "step")
    saved = torch.load(best, map_location="cpu", weights_only=False)["pha_val_metrics"]
    out = fitted / "eval"
    run_pha("validate", *TINY, f"--ckpt_path={best}", f"--trainer.default_root_dir={out}", cwd=fitted)
    reproduced = _metrics(next(out.rglob("val_metrics.json")))
    assert reproduced.keys() == saved.keys()
    for key, value in saved.items():
        assert reproduced[key] == pytest.approx(value, abs=1e-4), key

    result = run_pha("test", *TINY, f"--ckpt_path={best}", f"--trainer.default_root_dir={out}", cwd=fitted)
    tested = _metrics(next(out.rglob("test_metrics.json")))
    assert {"test/avg", "test/synth_polarity/accuracy", "test/synth_score/spearman"} <= tested.keys()
    assert "synth_polarity" in result.stdout and "average" in result.stdout


def test_print_config_links_tasks_and_backbone(tmp_path: Path) -> None:
    result = run_pha("fit", *TINY, "--print_config", cwd=tmp_path)
    assert "tasks:\n  - synth_polarity\n  - synth_score" in result.stdout
    assert "use_distributed_sampler: false" in result.stdout
    help_text = run_pha("fit", "--help", cwd=tmp_path).stdout
    assert "--model.loss.lambda_ir" in help_text and "--data.temperature" in help_text


@pytest.mark.parametrize(
    "override",
    [
        path
        for kind in ("methods", "protocols")
        for path in sorted(Path(__file__).parents[2].glob(f"configs/{kind}/*.yaml"))
    ],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_method_override_configs_compose_with_a_base_config(
    override: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # in this process (the command's own entry point): a subprocess per config cost ~15 s of imports
    root = Path(__file__).parents[2]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(root / "configs/demo.yaml"), "--config", str(override), "--print_config"])
    assert done.value.code in (None, 0)
    out = capsys.readouterr().out
    import yaml

    resolved = yaml.safe_load(out)
    expected = yaml.safe_load(override.read_text())

    def assert_within(want: dict, have: dict, path: str) -> None:
        for key, value in want.items():
            if isinstance(value, dict):
                assert_within(value, have[key], f"{path}.{key}")
            else:
                assert have[key] == value, f"{path}.{key}"

    assert_within(expected, resolved, "config")
