"""Exact resume: a run SIGKILLed mid-epoch and resumed with `--ckpt_path last` ends bit-identical to an
uninterrupted run with the same seed (sampler position, dropout randomness, optimizer, scheduler).

Tolerance: none. Both runs execute the same float operations in the same order on the same CPU
kernels (same shapes, same thread count), so weights, optimizer moments and metrics must be equal
bit for bit; any difference means some state was not restored.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from production_fixtures import ALL_SYNTH_TASKS as TASKS
from production_fixtures import PHA, logged_scalars, pha_env_with_tests, tiny_fit_args

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.data.sampling import TemperatureBatchSampler
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.callbacks import StepSeed
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.settings import OptimConfig
from pha_lightning.training.system import PHAModule

pytestmark = pytest.mark.slow  # kills and resumes training runs

# 4 tasks x 6 examples, batches of 4: 6 batches per epoch; 10 steps = 1 2/3 epochs
ARGS = [
    *tiny_fit_args(n_train=6, eval_batch_size=8, max_steps=10, val_check_interval=5),
    "--model.optim.learning_rate=3e-3",
    "--model.optim.warmup_steps=3",
    "--checkpoint.every_n_train_steps=2",
]
KILL_AT = 9  # the last checkpoint before it is step 8: epoch 1, 2 batches into it


def _fit(root: Path, *extra: str) -> subprocess.CompletedProcess:
    env = pha_env_with_tests()  # this checkout's package too, not only an installed one
    return subprocess.run(
        [PHA, "fit", *ARGS, f"--trainer.default_root_dir={root}", *extra],
        cwd=root.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("resume")
    full, broken = base / "full", base / "broken"
    result = _fit(full)
    assert result.returncode == 0, result.stderr[-3000:]
    killed = _fit(
        broken, '--trainer.callbacks+={"class_path": "kill_callback.KillAtStep", "init_args": {"step": %d}}' % KILL_AT
    )
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    killed_last = base / "killed_last.ckpt"  # the resumed run rewrites last.ckpt in the same folder
    shutil.copy(broken / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", killed_last)
    resumed = _fit(broken, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stderr + resumed.stdout
    assert "Restored all states from the checkpoint" in log
    # the data module restores the position; Lightning's "dataloader is not resumable" would be wrong
    assert "resuming the training batches exactly: epoch 1, batch 2" in log
    assert "not resumable" not in log
    return {"full": full, "broken": broken, "killed_last": killed_last}


def test_killed_run_left_a_mid_epoch_checkpoint(runs: dict[str, Path]) -> None:
    first = runs["broken"] / "lightning_logs" / "version_0"
    ckpt = torch.load(runs["killed_last"], map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == KILL_AT - 1 and ckpt["epoch"] == 1
    # the batches the loop consumed, not those the fetcher had prefetched
    assert ckpt["PHADataModule"]["train_sampler"] == {
        "epoch": 1,
        "batches_consumed": 2,
        "settings": {
            "task_sizes": [6, 6, 6, 6],
            "batch_size": 4,
            "temperature": 10.0,
            "mode": "mixed",
            "num_batches": 6,
            "seed": 42,
            "num_replicas": 1,
        },
    }
    assert ckpt["callbacks"]["StepSeed"] == {"seed": 42}
    assert not (first / "checkpoints" / f"step{KILL_AT:06d}.ckpt").exists()


def test_resumed_run_matches_the_uninterrupted_run_exactly(runs: dict[str, Path]) -> None:
    full_dir = runs["full"] / "lightning_logs" / "version_0"
    resumed_dir = runs["broken"] / "lightning_logs" / "version_1"  # `last` was found in version_0
    # the resumed run logs to a new version but keeps writing checkpoints to the run's folder
    assert not (resumed_dir / "checkpoints").exists()
    resumed_ckpt = runs["broken"] / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    full = torch.load(full_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = torch.load(resumed_ckpt, map_location="cpu", weights_only=True)
    assert full["global_step"] == resumed["global_step"] == 10
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for a, b in zip(full["optimizer_states"][0]["state"].values(), resumed["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert full["lr_schedulers"] == resumed["lr_schedulers"]

    full_logs, resumed_logs = logged_scalars(full_dir), logged_scalars(resumed_dir)
    final_val = {tag: values for tag, values in full_logs.items() if tag.startswith("val/")}
    assert "val/avg" in final_val and "val/synth_score/pearson" in final_val
    for tag, values in final_val.items():  # the final validation (step 10) of both runs
        last_step = max(values)
        assert resumed_logs[tag][last_step] == values[last_step], tag
    for step, loss in resumed_logs["train/loss"].items():  # every step trained after the resume
        assert full_logs["train/loss"][step] == loss, step
    assert len(resumed_logs["train/loss"]) == 10 - (KILL_AT - 1)


# ------------------------------------------------------------------ the pieces, in-process
class _Positions(Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        sampler = trainer.train_dataloader.batch_sampler
        state = trainer.datamodule.state_dict()["train_sampler"]
        self.rows.append((batch_idx, state["batches_consumed"], sampler.state_dict()["batches_yielded"]))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_saved_position_counts_consumed_not_prefetched_batches(num_workers: int) -> None:
    data = PHADataModule(
        tasks=TASKS[:2],
        n_train=16,
        batch_size=4,
        num_batches_per_epoch=6,
        num_workers=num_workers,
        max_source_length=48,
    )
    model = PHAModule(PHAConfig(tasks=TASKS[:2]), optim=OptimConfig(warmup_steps=0))
    positions = _Positions()
    quiet_trainer(max_steps=4, enable_checkpointing=False, limit_val_batches=0, callbacks=[positions]).fit(
        model, datamodule=data
    )
    assert [(i, consumed) for i, consumed, _ in positions.rows] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    ahead = [yielded - consumed for _, consumed, yielded in positions.rows]
    assert min(ahead) >= 0
    if num_workers:  # the workers' prefetching drew batches the loop had not consumed yet
        assert max(ahead) > 0


def test_restored_position_and_epoch_reach_the_new_sampler() -> None:
    data = PHADataModule(tasks=TASKS[:2], n_train=16, batch_size=4, max_source_length=48)
    sampler = TemperatureBatchSampler([16, 16], batch_size=4, seed=42)  # 8 batches per epoch
    data.load_state_dict({"train_sampler": {"epoch": 3, "batches_consumed": 5}})
    data.track_train_sampler(sampler)
    expected = TemperatureBatchSampler([16, 16], batch_size=4, seed=42)
    expected.set_epoch(3)
    assert list(sampler) == list(expected)[5:]
    end = TemperatureBatchSampler([16, 16], batch_size=4, seed=42)
    data.load_state_dict({"train_sampler": {"epoch": 3, "batches_consumed": 8}})  # saved at the end of epoch 3
    data.track_train_sampler(end)
    expected.set_epoch(4)
    assert end.epoch == 4 and list(end) == list(expected)


def _saved_state(sampler: TemperatureBatchSampler, consumed: int) -> dict:
    """The data module's checkpoint state after ``consumed`` batches of ``sampler``'s epoch 1."""
    data = PHADataModule(tasks=TASKS[:2], n_train=16, batch_size=sampler.batch_size, max_source_length=48)
    data.load_state_dict({"train_sampler": {"epoch": 1, "batches_consumed": consumed}})
    data.track_train_sampler(sampler)  # the position a run at that point holds, and its sampler
    return json.loads(json.dumps(data.state_dict()))  # as a checkpoint stores it


def test_resume_with_unchanged_batch_settings_is_exact(caplog: pytest.LogCaptureFixture) -> None:
    state = _saved_state(TemperatureBatchSampler([16, 16], batch_size=4, seed=42), consumed=5)
    assert state["train_sampler"]["settings"]["batch_size"] == 4
    data = PHADataModule(tasks=TASKS[:2], n_train=16, batch_size=4, max_source_length=48)
    data.load_state_dict(state)
    with caplog.at_level("INFO"):
        data.track_train_sampler(TemperatureBatchSampler([16, 16], batch_size=4, seed=42))
    assert "resuming the training batches exactly: epoch 1, batch 5" in caplog.text


@pytest.mark.parametrize(
    ("changed", "named", "position"),
    [
        ({"batch_size": 8}, "data.batch_size 4 -> 8", 2),  # 5 of 8 batches -> 2.5 of 4, rounded to even
        ({"seed": 7}, "data.seed 42 -> 7", 5),
        ({"temperature": 1.0}, "data.temperature 10.0 -> 1.0", 5),
        ({"mode": "task"}, "data.sampling 'mixed' -> 'task'", 5),
        ({"num_batches": 16}, "batches per epoch", 10),
        ({"num_replicas": 2}, "training processes (trainer.devices x trainer.num_nodes) 1 -> 2", 2),
        ({"task_sizes": [16, 32]}, "training examples per task", 8),
    ],
)
def test_resume_with_changed_batch_settings_warns_and_claims_no_exactness(
    changed: dict, named: str, position: int, caplog: pytest.LogCaptureFixture
) -> None:
    state = _saved_state(TemperatureBatchSampler([16, 16], batch_size=4, seed=42), consumed=5)
    settings = {"task_sizes": [16, 16], "batch_size": 4, "seed": 42, **changed}
    data = PHADataModule(tasks=TASKS[:2], n_train=16, batch_size=settings["batch_size"], max_source_length=48)
    data.load_state_dict(state)
    sampler = TemperatureBatchSampler(**settings)
    with caplog.at_level("INFO"), pytest.warns(UserWarning, match="resuming with changed batch settings") as record:
        data.track_train_sampler(sampler)
    (message,) = [str(w.message) for w in record if "changed batch settings" in str(w.message)]
    assert named in message and "not an exact continuation" in message
    assert f"epoch 1, batch {position}" in message  # the same share of the epoch, in the new sequence
    assert sampler.state_dict() == {"epoch": 1, "batches_yielded": position}
    assert "exactly" not in caplog.text


def test_resume_from_a_checkpoint_without_recorded_settings_does_not_claim_exactness(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = PHADataModule(tasks=TASKS[:2], n_train=16, batch_size=4, max_source_length=48)
    data.load_state_dict({"train_sampler": {"epoch": 1, "batches_consumed": 5}})  # saved by pha-lightning <= 0.x
    with caplog.at_level("INFO"):
        data.track_train_sampler(TemperatureBatchSampler([16, 16], batch_size=4, seed=42))
    assert "exact only if they are unchanged" in caplog.text and "exactly" not in caplog.text


def test_step_seed_depends_only_on_the_step() -> None:
    seeder = StepSeed(seed=42)
    masks = []
    for burn in (0, 1000):
        torch.rand(burn)  # whatever was drawn before (evaluation, a restart) does not matter
        torch.manual_seed(seeder.step_seed(epoch=1, batch_idx=2, rank=0))
        masks.append(torch.rand(8))
    assert torch.equal(*masks)
    assert seeder.step_seed(1, 2, 0) != seeder.step_seed(1, 2, 1) != seeder.step_seed(1, 3, 0)
    restored = StepSeed()
    restored.load_state_dict(json.loads(json.dumps(seeder.state_dict())))
    assert restored.step_seed(1, 2, 0) == seeder.step_seed(1, 2, 0)
