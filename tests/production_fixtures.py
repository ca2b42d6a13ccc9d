"""Shared by the production-use tests (export, predict, hostile inputs): one small trained checkpoint
per test session, the ``pha`` console script, and helpers to run it in a subprocess or in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pha_lightning.model.config import PHAConfig
from pha_lightning.training.settings import OptimConfig

PHA = shutil.which("pha", path=str(Path(sys.executable).parent)) or shutil.which("pha")
#: classification, text-pair classification and regression
TASKS = ["synth_polarity", "synth_match", "synth_score"]
#: the whole offline suite (the DDP and resume runs)
ALL_SYNTH_TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]
MAX_SOURCE_LENGTH = 48

_CACHE: dict[str, object] = {}


def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a 3-step PHA run on three synthetic tasks (built once per session)."""
    if "ckpt" in _CACHE:
        return _CACHE["ckpt"]
    from lightning.pytorch import seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint

    from pha_lightning.data.datamodule import PHADataModule
    from pha_lightning.training.scripting import quiet_trainer
    from pha_lightning.training.system import PHAModule

    root = tmp_path_factory.mktemp("trained")
    seed_everything(7)
    data = PHADataModule(tasks=TASKS, n_train=16, batch_size=8, eval_batch_size=16, max_source_length=MAX_SOURCE_LENGTH)
    model = PHAModule(
        PHAConfig(tasks=TASKS, hypernet_init_scale=1.0), optim=OptimConfig(learning_rate=3e-3, warmup_steps=0)
    )
    trainer = quiet_trainer(
        max_steps=3,
        limit_val_batches=1,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)],
    )
    trainer.fit(model, datamodule=data)
    _CACHE["ckpt"] = root / "checkpoints" / "last.ckpt"
    return _CACHE["ckpt"]


#: the tasks of :func:`calibrated_run`, and the task it never trains on (a two-sentence task of its own template)
ROUTED_TASKS = ["synth_polarity", "synth_category", "synth_score"]
HELD_OUT_TASK = "synth_match"


def calibrated_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 60-step PHA run on :data:`ROUTED_TASKS` with routing calibrated (built once per session):
    ``root``, the ``best`` checkpoint, its ``bundle`` (pha export), the ``trainer`` and the ``system``.
    Examples of :data:`HELD_OUT_TASK` are abstained by it."""
    if "calibrated" in _CACHE:
        return _CACHE["calibrated"]
    from lightning.pytorch import seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint

    from pha_lightning.data.datamodule import PHADataModule
    from pha_lightning.training.callbacks import RoutingCalibration
    from pha_lightning.training.scripting import quiet_trainer
    from pha_lightning.training.system import PHAModule

    root = tmp_path_factory.mktemp("routing")
    seed_everything(0)
    data = PHADataModule(
        tasks=ROUTED_TASKS, n_train=64, batch_size=16, eval_batch_size=64, max_source_length=MAX_SOURCE_LENGTH
    )
    system = PHAModule(PHAConfig(tasks=ROUTED_TASKS), optim=OptimConfig(learning_rate=1e-3, warmup_steps=5))
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", monitor="val/avg", mode="max", save_last=True)
    trainer = quiet_trainer(
        max_steps=60,
        val_check_interval=30,
        check_val_every_n_epoch=None,
        default_root_dir=root,
        callbacks=[RoutingCalibration(), checkpoints],
    )
    trainer.fit(system, datamodule=data)
    best = Path(checkpoints.best_model_path)
    bundle = root / "bundle"
    run_pha("export", f"--ckpt_path={best}", f"--output_dir={bundle}", cwd=root)
    _CACHE["calibrated"] = {"root": root, "best": best, "bundle": bundle, "trainer": trainer, "system": system}
    return _CACHE["calibrated"]


def split_examples(task: str, split: str, with_task: bool = False) -> list[dict]:
    """The raw records of a synthetic split, as a user sends them (no label; the task if asked)."""
    from pha_lightning.data.synthetic import build_synthetic_suite

    records = next(t for t in build_synthetic_suite() if t.name == task).load_split(split)
    fields = ("sentence", "sentence1", "sentence2")
    return [{**({"task": task} if with_task else {}), **{k: r[k] for k in fields if k in r}} for r in records]


def pha_predict(checkpoint: Path, examples: list[dict], root: Path) -> tuple[list[dict], subprocess.CompletedProcess]:
    """``pha predict`` of raw ``examples`` (a JSONL file in ``root``) with ``checkpoint``: the rows it wrote, and the run."""
    path, output = root / "in.jsonl", root / "out.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    result = run_pha(
        "predict",
        f"--ckpt_path={checkpoint}",
        f"--data.predict_file={path}",
        f"--predict_output={output}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root / 'predict'}",
        cwd=root,
    )
    return [json.loads(line) for line in output.read_text().splitlines()], result


def pha_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def pha_env_with_tests() -> dict[str, str]:
    """:func:`pha_env` with the tests folder importable (the kill callbacks), ahead of any PYTHONPATH set."""
    env = pha_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    return env


def run_pha(
    *args: str, cwd: Path, expect: int = 0, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run the console script; assert its exit status."""
    assert PHA, "the pha console script is not installed (pip install -e .)"
    result = subprocess.run(
        [PHA, *args], cwd=cwd, env=env or pha_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == expect, (
        f"pha {' '.join(args)} exited {result.returncode}, expected {expect}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def pha_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run ``pha`` in-process (faster than a subprocess); it must exit with status 2. Returns stderr."""
    from pha_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, f"exit {exit_info.value.code}\n{captured.out[-2000:]}\n{captured.err[-2000:]}"
    return captured.err


def tiny_fit_args(*, n_train: int, eval_batch_size: int, max_steps: int, val_check_interval: int) -> list[str]:
    """``pha fit`` arguments of a tiny CPU run on the offline suite: batches of 4, one validation
    batch per validation, every step logged, no progress bar or model summary."""
    return [
        f"--data.tasks=[{','.join(ALL_SYNTH_TASKS)}]",
        f"--data.n_train={n_train}",
        "--data.batch_size=4",
        f"--data.eval_batch_size={eval_batch_size}",
        f"--data.max_source_length={MAX_SOURCE_LENGTH}",
        "--trainer.accelerator=cpu",
        f"--trainer.max_steps={max_steps}",
        f"--trainer.val_check_interval={val_check_interval}",
        "--trainer.check_val_every_n_epoch=null",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def logged_scalars(version_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar a run logged to TensorBoard: tag → {step: value}, over all its events files
    (testing after fit starts a second one)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    files = sorted(version_dir.glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard events in {version_dir}"
    for events_file in files:
        events = EventAccumulator(str(events_file))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return scalars


#: a `pha fit` in seconds: the tiny BERT at random init on two synthetic tasks, 4 steps, validated at
#: steps 2 and 4 on one batch (the sweep and logger tests' trial)
TINY_RUN = [
    "--data.tasks=[synth_polarity,synth_score]",
    "--data.n_train=32",
    "--data.batch_size=8",
    "--data.eval_batch_size=16",
    "--data.max_source_length=32",
    "--model.arch.backbone_init=random",
    "--trainer.accelerator=cpu",
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=2",
    "--trainer.check_val_every_n_epoch=null",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
]
