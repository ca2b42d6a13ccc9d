"""The SLURM template: rendered as SLURM would run it (its #SBATCH lines turned into the environment
SLURM sets, `srun` replaced by a stub that records its command line), the Lightning arguments must
agree with the #SBATCH lines, and `pha fit` must accept them."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from production_fixtures import PHA

pytestmark = pytest.mark.slow  # runs the pha command

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "pha_fit.sbatch"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def sbatch_options(text: str) -> dict[str, str]:
    options = {}
    for line in text.splitlines():
        match = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if match:
            options[match.group(1)] = match.group(2) or ""
    return options


def render(
    tmp_path: Path, overrides: dict[str, str] | None = None, extra: tuple[str, ...] = ()
) -> tuple[dict[str, str], list[str], str]:
    """Run the script like sbatch would (with ``overrides`` of its #SBATCH options); return the
    effective options and the command line `srun` received."""
    options = {**sbatch_options(SCRIPT.read_text()), **(overrides or {})}
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "srun").write_text('#!/usr/bin/env python3\nimport json, sys\nprint("SRUN " + json.dumps(sys.argv[1:]))\n')
    (stub / "srun").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{stub}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": options["job-name"],
        "SLURM_JOB_NUM_NODES": options["nodes"],
        "SLURM_NNODES": options["nodes"],
        "SLURM_NTASKS_PER_NODE": options["ntasks-per-node"],
        "SLURM_GPUS_ON_NODE": options["gpus-per-node"],
        "SLURM_CPUS_PER_TASK": options["cpus-per-task"],
    }
    result = subprocess.run(
        ["bash", str(SCRIPT), str(CONFIG), *extra], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    if result.returncode != 0:
        return options, [], result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("SRUN ")]
    return options, json.loads(line[5:]), result.stderr


def _arg(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def test_template_is_valid_bash_with_requeue_and_signal() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    options = sbatch_options(SCRIPT.read_text())
    assert "requeue" in options and options["signal"].startswith("SIGUSR1@")
    assert options["ntasks-per-node"] == options["gpus-per-node"]  # one task per GPU


@pytest.mark.parametrize(
    "overrides", [None, {"nodes": "4"}, {"nodes": "1", "ntasks-per-node": "8", "gpus-per-node": "8"}]
)
def test_lightning_arguments_agree_with_the_sbatch_lines(tmp_path: Path, overrides: dict[str, str] | None) -> None:
    options, argv, stderr = render(tmp_path, overrides, extra=("--data.batch_size=16",))
    assert argv[:3] == ["--kill-on-bad-exit=1", "pha", "fit"], stderr
    assert _arg(argv, "trainer.num_nodes") == options["nodes"]
    assert _arg(argv, "trainer.devices") == options["ntasks-per-node"] == options["gpus-per-node"]
    assert _arg(argv, "trainer.strategy") == "ddp" and _arg(argv, "trainer.accelerator") == "gpu"
    assert _arg(argv, "trainer.precision") == "bf16-mixed"
    assert _arg(argv, "ckpt_path") == "last"  # a requeued job resumes
    assert _arg(argv, "trainer.default_root_dir") == "runs/pha-4242"
    assert argv[-1] == "--data.batch_size=16" and str(CONFIG) in argv


def test_mismatched_tasks_and_gpus_are_refused(tmp_path: Path) -> None:
    _, argv, stderr = render(tmp_path, {"ntasks-per-node": "2", "gpus-per-node": "4"})
    assert argv == [] and "one task per GPU" in stderr


def test_pha_accepts_the_rendered_command_line(tmp_path: Path) -> None:
    _, argv, _ = render(tmp_path)
    command = [a for a in argv[3:] if not a.startswith("--ckpt_path")]
    result = subprocess.run(
        [PHA, "fit", *command, "--print_config"], capture_output=True, text=True, cwd=CONFIG.parents[1], timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "num_nodes: 2" in result.stdout and "precision: bf16-mixed" in result.stdout
    assert re.search(r"devices: '?4'?\n", result.stdout)  # a string for jsonargparse; Lightning reads it as 4 GPUs


def test_pha_strategy_selects_sharded_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch import Trainer

    from pha_lightning.cli.app import STRATEGY_NAME
    from pha_lightning.training.sharding import PHAShardedStrategy

    monkeypatch.setenv("PHA_STRATEGY", STRATEGY_NAME)
    _, argv, stderr = render(tmp_path)
    assert _arg(argv, "trainer.strategy") == "pha_fsdp", stderr
    trainer = Trainer(strategy=_arg(argv, "trainer.strategy"), accelerator="cpu", devices=1, logger=False)
    assert isinstance(trainer.strategy, PHAShardedStrategy)  # the name pha registers
