"""FSDP2 sharding per transformer block (``--trainer.strategy=pha_fsdp``), 2 CPU processes on gloo,
for a tiny T5 and a tiny BERT (tests/sharded_worker.py runs each rank): the loss and gradients equal
a single-process run, each rank holds half of the frozen weights and no gradient for them, and
the checkpoint of a sharded run loads for resume, ``pha test`` and ``pha export``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from production_fixtures import pha_env, run_pha

from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.model.pha import PHAModel
from pha_lightning.training.system import load_system

pytestmark = pytest.mark.slow  # two torchrun processes per backbone (~25 s each)

WORKER = Path(__file__).parent.parent / "sharded_worker.py"


@pytest.fixture(scope="module", params=["t5", "bert"])
def sharded_run(request: pytest.FixtureRequest, pretrained_tiny: dict[str, str], tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp(f"sharded_{request.param}")
    env = {**pha_env(), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER)]
    result = subprocess.run(
        [*command, pretrained_tiny[request.param], str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return {"out": out, "ranks": ranks, "backbone": pretrained_tiny[request.param]}


def test_loss_and_gradients_equal_a_single_process_run(sharded_run: dict) -> None:
    for rank in sharded_run["ranks"]:
        check = rank["equivalence"]
        # float64 on both sides: the sums are only reordered (per-rank halves, reduce-scatter)
        assert check["loss"] == pytest.approx(check["reference_loss"], rel=1e-12)
        assert set(check["grad_relative_errors"]) == set(check["trainable"])
        assert max(check["grad_relative_errors"].values()) < 1e-10


def test_each_rank_holds_half_of_the_frozen_weights_and_no_gradient_for_them(sharded_run: dict) -> None:
    checks = [rank["equivalence"] for rank in sharded_run["ranks"]]
    total = checks[0]["frozen_numel"]
    assert sum(check["frozen_local_numel"] for check in checks) == total
    for check in checks:
        assert check["frozen_all_sharded"] and check["frozen_with_grad"] == 0
        assert 0.45 < check["frozen_local_numel"] / total < 0.55


def test_sharded_run_validates_and_resumes_from_its_checkpoint(sharded_run: dict) -> None:
    for rank in sharded_run["ranks"]:
        assert "val/avg" in rank["metrics"] and "retriever/val_task_accuracy" in rank["metrics"]
        assert rank["resumed_step"] == 3


def test_checkpoint_holds_whole_pha_weights_for_load_test_and_export(sharded_run: dict) -> None:
    out = sharded_run["out"]
    ckpt = out / "run.ckpt"
    assert ckpt.is_file()  # one file, not a folder of shards
    trained = torch.load(out / "weights.pt", weights_only=True)
    checkpoint = read_checkpoint(str(ckpt))
    assert set(checkpoint["state_dict"]) == set(trained)  # PHA's weights only: no frozen backbone weight
    system = load_system(checkpoint)
    loaded = dict(system.named_parameters())
    for name, value in trained.items():
        assert torch.equal(loaded[name].detach(), value), name

    result = run_pha(
        "test",
        f"--ckpt_path={ckpt}",
        "--trainer.accelerator=cpu",
        "--trainer.limit_test_batches=1",
        f"--trainer.default_root_dir={out / 'tested'}",
        cwd=out,
    )
    assert "average" in result.stdout and next((out / "tested").rglob("test_metrics.json"))
    run_pha("export", f"--ckpt_path={ckpt}", f"--output_dir={out / 'bundle'}", cwd=out)
    exported = PHAModel.from_pretrained(out / "bundle").state_dict()
    for name, value in trained.items():
        assert torch.equal(exported[name.removeprefix("model.")], value), name
