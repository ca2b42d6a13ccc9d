"""The SLURM template on a real scheduler (`make test-cluster`: scripts/slurm/local_cluster.sh starts
munged, slurmctld and two slurmd nodes, n1 and n2, on this machine): `sbatch
scripts/slurm/pha_fit.sbatch` on the demo config, shortened, on CPUs.

* one node, two tasks: Lightning maps SLURM's tasks to DDP ranks; the run folder is runs/pha-<job id>;
* two nodes, one task each, pre-empted mid-step (SIGUSR1 to the job steps, as ``--signal`` sends
  it): the job checkpoints at the step's end, requeues itself, resumes, and ends with the same
  weights and test metrics as the uninterrupted one-node run (same world size, same ranks' data);
* the same with the ``pha_fsdp`` strategy (equal within float tolerance: sharded reductions);
* a node's process killed mid-run: the other's collective fails naming the lost peer, SLURM ends
  the step and the job fails within a bounded time;
* every finished run's ranks destroyed their process group before their interpreter shut down
  (a gloo group alive then aborted a finished job at exit now and then: the job read FAILED).

Each job sets MASTER_ADDR: Lightning otherwise takes the first node's name (n1), which is not a
host name here. docs/production.md, "SLURM", says what these tests showed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from exit_probe import distributed_threads
from production_fixtures import pha_env_with_tests

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm" / "pha_fit.sbatch"
CONFIG = REPO / "configs" / "demo.yaml"
MAX_STEPS = 8
HOLD_AT = 4  # the pre-emption signal arrives while the 5th batch is in the training step
#: the demo, shortened: 4 tasks x 8 examples, batches of 4 on two ranks (4 batches an epoch), 8 steps
TINY = [
    "--trainer.accelerator=cpu",  # after the script's gpu and bf16: the last value wins
    "--trainer.precision=32-true",
    f"--trainer.max_steps={MAX_STEPS}",
    "--trainer.val_check_interval=4",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.n_train=8",
    "--data.batch_size=4",
    "--data.eval_batch_size=8",
    "--data.max_source_length=16",
    "--model.optim.warmup_steps=2",
    "--checkpoint.every_n_train_steps=2",
]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _callback(class_path: str, **init_args: object) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": class_path, "init_args": init_args})


def submit(base: Path, *pha_args: str, nodes: int, tasks_per_node: int, strategy: str = "ddp") -> str:
    """``sbatch`` the shipped script from ``base`` (CPU: no GPUs, one core per task); the job id."""
    env = {
        **pha_env_with_tests(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the pha command
        "MASTER_ADDR": "127.0.0.1",
        "PHA_STRATEGY": strategy,
    }
    base.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--nodes={nodes}",
            f"--ntasks-per-node={tasks_per_node}",
            "--cpus-per-task=1",
            "--gpus-per-node=0",
            str(SCRIPT),
            str(CONFIG),
            *TINY,
            _callback("cluster_probe.RecordEnvironment", dirpath=str(base / "probe")),
            _callback("exit_probe.RecordExit", dirpath=str(base / "exit")),
            *pha_args,
        ],
        cwd=base,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_info(job: str) -> dict[str, str]:
    line = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True, check=True
    ).stdout
    return dict(field.split("=", 1) for field in line.split() if "=" in field)


def wait_for(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(1)


def wait_until_ended(job: str, timeout: float = 900) -> dict[str, str]:
    info: dict[str, str] = {}

    def ended() -> bool:
        info.update(job_info(job))
        return info["JobState"] in ENDED

    wait_for(ended, timeout, f"job {job} to end")
    return info


def output(base: Path, job: str) -> str:
    return (base / f"pha-{job}.out").read_text()


def probes(base: Path, restart: int = 0) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted((base / "probe").glob(f"rank*-restart{restart}.json"))]
    return sorted(rows, key=lambda row: row["global_rank"])


def assert_ended_cleanly(base: Path, restart: int, ranks: int, threads_joined: bool = True) -> None:
    """Every rank of the run's last start destroyed its process group before its interpreter shut
    down, and (``threads_joined``) no c10d/gloo thread was left: with gloo's threads running then, a
    finished job aborted at exit now and then. FSDP2's ``fully_shard`` keeps a reference to its group
    inside torch (2.13), so under ``pha_fsdp`` the destroyed group's threads stay, idle, until exit."""
    rows = [json.loads(p.read_text()) for p in sorted((base / "exit").glob(f"exit-rank*-restart{restart}.json"))]
    assert len(rows) == ranks, rows
    for row in rows:
        assert not row["process_group"], row
        assert not threads_joined or distributed_threads(row) == [], row


def final_state(run: Path) -> tuple[dict, dict[str, float]]:
    """The run's ``last.ckpt`` and the test metrics of its last ``pha fit``."""
    (last,) = run.rglob("last.ckpt")
    metrics = sorted(run.glob("lightning_logs/version_*/test_metrics.json"))[-1]
    return torch.load(last, map_location="cpu", weights_only=True), json.loads(metrics.read_text())


def preempt(base: Path, job: str, ranks: int) -> None:
    """Signal the job's steps as SLURM does before a pre-emption, while every rank is mid-step."""
    wait_for(lambda: len(list(base.glob("holding_rank*"))) == ranks, 600, f"job {job} to reach step {HOLD_AT}")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    (base / "signalled").touch()


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("one_node")
    job = submit(base, nodes=1, tasks_per_node=2)
    info = wait_until_ended(job)
    assert info["JobState"] == "COMPLETED", output(base, job)[-4000:]
    return base, job


def test_sbatch_runs_the_demo_on_two_tasks(one_node: tuple[Path, str]) -> None:
    base, job = one_node
    run = base / "runs" / f"pha-{job}"  # the script's documented default run folder
    rows = probes(base)
    assert [r["global_rank"] for r in rows] == [0, 1]
    for rank, row in enumerate(rows):
        assert row["cluster_environment"] == "SLURMEnvironment"
        assert (row["world_size"], row["num_nodes"], row["node_rank"]) == (2, 1, 0)
        assert str(row["global_rank"]) == row["SLURM_PROCID"] and str(row["local_rank"]) == row["SLURM_LOCALID"]
        assert row["SLURM_JOB_ID"] == job and row["SLURMD_NODENAME"] == "n1"
        assert row["default_root_dir"] == str(run.resolve())
    log = output(base, job)
    assert f"pha: job {job} (restart 0) on 1 node(s) x 2 task(s), run dir runs/pha-{job}" in log
    checkpoint, metrics = final_state(run)
    assert checkpoint["global_step"] == MAX_STEPS
    assert "test/avg" in metrics
    assert_ended_cleanly(base, restart=0, ranks=2)


def _preempted(tmp_path_factory: pytest.TempPathFactory, name: str, strategy: str) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp(name)
    record = _callback("pha_lightning.training.callbacks.RecordTrainingExamples", dirpath=str(base / "examples"))
    hold = _callback("kill_callback.HoldForSignal", step=HOLD_AT, dirpath=str(base))
    job = submit(base, record, hold, nodes=2, tasks_per_node=1, strategy=strategy)
    preempt(base, job, ranks=2)
    # SLURM holds a requeued job for 120 s (EligibleTime) before it may start again; not here
    wait_for(lambda: job_info(job)["JobState"] == "PENDING", 300, f"job {job} to requeue itself")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    info = wait_until_ended(job)
    assert info["JobState"] == "COMPLETED", output(base, job)[-6000:]
    assert info["Restarts"] == "1", info  # requeued once, by the job itself
    return base, job


@pytest.fixture(scope="module")
def two_nodes_ddp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return _preempted(tmp_path_factory, "two_nodes_ddp", "ddp")


@pytest.fixture(scope="module")
def two_nodes_fsdp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return _preempted(tmp_path_factory, "two_nodes_fsdp", "pha_fsdp")


def _check_two_nodes_and_requeue(base: Path, job: str, threads_joined: bool = True) -> None:
    run = base / "runs" / f"pha-{job}"
    for restart in (0, 1):
        rows = probes(base, restart)
        assert [(r["global_rank"], r["node_rank"], r["local_rank"]) for r in rows] == [(0, 0, 0), (1, 1, 0)]
        assert [r["SLURMD_NODENAME"] for r in rows] == ["n1", "n2"]
        assert all((r["world_size"], r["num_nodes"], r["main_address"]) == (2, 2, "127.0.0.1") for r in rows)
    assert [r["start_step"] for r in probes(base, 1)] == [HOLD_AT + 1] * 2  # resumed, not restarted
    log = output(base, job)
    assert "pha: job %s (restart 1) on 2 node(s)" % job in log
    # the checkpoint of the step that was running when the signal came, written once, by rank 0
    assert log.count(f"SLURM requeue signal: saving runs/pha-{job}/hpc_ckpt_1.ckpt at step {HOLD_AT + 1}") == 1
    assert sorted(p.name for p in run.glob("hpc_ckpt_*.ckpt")) == ["hpc_ckpt_1.ckpt"]
    hpc = torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert hpc["global_step"] == HOLD_AT + 1
    position = hpc["PHADataModule"]["train_sampler"]
    assert (position["epoch"], position["batches_consumed"]) == (1, 1)
    assert "resuming the training batches exactly: epoch 1, batch 1" in log
    # data sharded across the nodes: disjoint examples, the same task mix (the resumed steps included)
    ranks = [
        [json.loads(line) for line in (base / "examples" / f"train_examples_rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    ]
    for epoch in (0, 1):  # the shards are redrawn each epoch
        seen = [{example for row in rows if row["epoch"] == epoch for example in row["examples"]} for rows in ranks]
        assert seen[0] and seen[1] and not seen[0] & seen[1], epoch
    steps = [[row["step"] for row in rows] for rows in ranks]
    assert steps[0] == steps[1] and steps[0][-1] == MAX_STEPS
    assert_ended_cleanly(base, restart=1, ranks=2, threads_joined=threads_joined)


def test_two_nodes_preempted_requeue_and_resume_exactly(
    one_node: tuple[Path, str], two_nodes_ddp: tuple[Path, str]
) -> None:
    base, job = two_nodes_ddp
    _check_two_nodes_and_requeue(base, job)
    # the same world size and ranks as the one-node run: the same computation, bit for bit
    reference, reference_metrics = final_state(one_node[0] / "runs" / f"pha-{one_node[1]}")
    resumed, metrics = final_state(base / "runs" / f"pha-{job}")
    assert resumed["global_step"] == reference["global_step"] == MAX_STEPS
    for key, value in reference["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert metrics == reference_metrics


def test_two_nodes_pha_fsdp_preempted_requeue_and_resume(
    one_node: tuple[Path, str], two_nodes_fsdp: tuple[Path, str]
) -> None:
    base, job = two_nodes_fsdp
    _check_two_nodes_and_requeue(base, job, threads_joined=False)
    reference, reference_metrics = final_state(one_node[0] / "runs" / f"pha-{one_node[1]}")
    resumed, metrics = final_state(base / "runs" / f"pha-{job}")
    assert resumed["global_step"] == MAX_STEPS
    trained = [key for key in reference["state_dict"] if key in resumed["state_dict"]]
    assert trained
    for key in trained:  # sharded reductions sum in another order: equal within float tolerance
        torch.testing.assert_close(resumed["state_dict"][key], reference["state_dict"][key], rtol=1e-4, atol=1e-5)
    assert metrics.keys() == reference_metrics.keys()
    for name, value in metrics.items():
        assert value == pytest.approx(reference_metrics[name], abs=1e-3), name


def test_a_killed_node_process_ends_the_job(tmp_path: Path) -> None:
    kill = _callback("kill_callback.KillRankAtStep", step=2, rank=1)
    job = submit(tmp_path, kill, nodes=2, tasks_per_node=1)
    wait_for(lambda: len(probes(tmp_path)) == 2, 600, f"job {job} to start training")
    started = time.monotonic()  # a few steps before rank 1 is killed
    info = wait_until_ended(job, timeout=600)
    log = output(tmp_path, job)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", (info, log[-4000:])
    # SLURM says which task died; then either rank 0's collective fails on the lost peer, or srun
    # (--kill-on-bad-exit) cancels the step first (on a loaded machine, before rank 0 noticed)
    assert "srun: error: n2: task 1: Killed" in log, log[-4000:]
    cancelled = re.search(rf"STEP {job}\.0 ON n1 CANCELLED", log)
    assert cancelled or re.search(r"Connection (reset|closed) by peer", log), log[-4000:]
    assert cancelled or "srun: error: n1: task 0: Exited" in log, log[-4000:]
    assert time.monotonic() - started < 120
    assert not list((tmp_path / "runs").rglob("step000008.ckpt"))  # it did not train on alone
