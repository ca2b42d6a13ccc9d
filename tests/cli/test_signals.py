"""SIGTERM (``kill``, SLURM before preemption) sent from outside to a running ``pha fit`` and ``pha
predict``: each stops after its current batch, keeps what is complete, says how to go on, and exits
with status 143, never 0 (a scheduler or a ``&&`` chain must not take the run as finished)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from production_fixtures import PHA, pha_env_with_tests, tiny_fit_args

pytestmark = pytest.mark.slow  # runs pha fit and pha predict end to end

MARK_AT = 3  # the test sends SIGTERM once the run is about to train this step
MAX_STEPS = 200  # far beyond what the run reaches before the signal


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    """``pha <args>`` running, its stdout a pipe, its stderr (long: tokenisation bars) to ``cwd/stderr.txt``."""
    with open(cwd / "stderr.txt", "w") as stderr:
        return subprocess.Popen(
            [PHA, *args], cwd=cwd, env=pha_env_with_tests(), stdout=subprocess.PIPE, stderr=stderr, text=True
        )


def _finish(process: subprocess.Popen, cwd: Path) -> str:
    """Wait for ``process`` (killed if it does not end: it ignored the signal); its stderr."""
    try:
        process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return (cwd / "stderr.txt").read_text()


def _terminate_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> float:
    """Send SIGTERM once ``ready()``; return when it was sent."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"pha exited {process.returncode} before the signal"
        assert time.monotonic() < deadline, "the run never got ready"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    return time.monotonic()


@pytest.fixture(scope="module")
def stopped_fit(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sigterm_fit")
    mark = root / "training"
    args = [
        "fit",
        *tiny_fit_args(n_train=40, eval_batch_size=8, max_steps=MAX_STEPS, val_check_interval=MAX_STEPS),
        f"--trainer.default_root_dir={root / 'run'}",
        '--trainer.callbacks+={"class_path": "kill_callback.MarkAtStep", "init_args": {"step": %d, "path": "%s"}}'
        % (MARK_AT, mark),
    ]
    process = _start(args, root)
    sent = _terminate_when(process, mark.exists)
    stderr = _finish(process, root)
    return {"root": root, "args": args, "rc": process.returncode, "stderr": stderr, "after_s": time.monotonic() - sent}


def test_sigterm_stops_fit_with_a_checkpoint_of_its_last_step_and_a_nonzero_status(stopped_fit: dict) -> None:
    assert stopped_fit["rc"] == 143, stopped_fit["stderr"][-3000:]
    last = stopped_fit["root"] / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    message = re.search(
        r"pha: stopped by SIGTERM at step (\d+); the latest checkpoint (\S+) holds step (\d+)\.", stopped_fit["stderr"]
    )
    assert message, stopped_fit["stderr"][-3000:]
    step, path, saved = int(message[1]), message[2], int(message[3])
    assert path == str(last) and saved == step and MARK_AT <= step < MAX_STEPS
    # no validation ran (val_check_interval is MAX_STEPS): the checkpoint was written at the signal
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step
    assert f"To resume, run the same command with --ckpt_path last (or --ckpt_path {last})" in stopped_fit["stderr"]
    assert stopped_fit["after_s"] < 30  # after the current batch, not at the end of the run


def test_resuming_with_another_batch_size_warns_that_batches_change(stopped_fit: dict) -> None:
    saved = torch.load(
        stopped_fit["root"] / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    step = saved["global_step"]
    args = [a for a in stopped_fit["args"] if not a.startswith(("--trainer.max_steps", "--trainer.callbacks"))]
    result = subprocess.run(
        [PHA, *args, "--ckpt_path=last", "--data.batch_size=8", f"--trainer.max_steps={step + 1}"],
        cwd=stopped_fit["root"],
        env=pha_env_with_tests(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "resuming with changed batch settings (data.batch_size 4 -> 8" in log, log[-3000:]
    assert "not an exact continuation" in log and "resuming the training batches exactly" not in log


def test_sigterm_stops_predict_keeping_the_complete_rows_and_resume_continues(
    stopped_fit: dict, tmp_path: Path
) -> None:
    last = stopped_fit["root"] / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    examples = tmp_path / "in.jsonl"
    total = 1200
    examples.write_text(
        "".join(
            json.dumps({"task": "synth_polarity", "sentence": f"the cat number {i} was good"}) + "\n"
            for i in range(total)
        )
    )
    output = tmp_path / "out.jsonl"
    args = [
        "predict",
        f"--ckpt_path={last}",
        f"--data.predict_file={examples}",
        "--data.eval_batch_size=4",
        f"--predict_output={output}",
        "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]
    process = _start(args, tmp_path)
    sent = _terminate_when(process, lambda: process.stdout.readline().startswith("first prediction after"))
    stderr = _finish(process, tmp_path)
    assert process.returncode == 143, stderr[-3000:]
    assert time.monotonic() - sent < 30
    partial = Path(f"{output}.partial")
    rows = [json.loads(line) for line in partial.read_text().splitlines()]
    # streamed in input order: the first rows of the input, each whole
    assert 0 < len(rows) < total and [row["index"] for row in rows] == list(range(len(rows)))
    assert all(row["line"] == row["index"] + 1 and row["prediction"] in ("0", "1") for row in rows)
    assert not output.exists()  # the output is only ever the whole prediction
    assert (
        f"pha: stopped by SIGTERM after {len(rows)} predictions: wrote them to {partial} (in input order); "
        f"{output} was not written; run the same command with --resume to continue after them"
    ) in stderr
    again = subprocess.run([PHA, *args], cwd=tmp_path, env=pha_env_with_tests(), capture_output=True, text=True)
    assert (
        again.returncode == 2
        and f"pha: error: {str(partial)!r} holds the rows of an interrupted prediction; " in again.stderr
    )
    changed = subprocess.run(
        [PHA, *args, "--resume", "--data.eval_batch_size=8"],
        cwd=tmp_path,
        env=pha_env_with_tests(),
        capture_output=True,
        text=True,
    )
    assert "changed since it was interrupted: data.eval_batch_size '4' -> '8'" in changed.stderr, changed.stderr[-2000:]
    resumed = subprocess.run(
        [PHA, *args, "--resume"], cwd=tmp_path, env=pha_env_with_tests(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["index"] for row in done] == list(range(total)) and not partial.exists()
    assert done[: len(rows)] == rows  # the rows of an unfinished chunk are predicted again, alike
