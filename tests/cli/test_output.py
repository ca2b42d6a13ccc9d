"""What a user reads when ``pha``'s output goes to a file (nohup, a SLURM job): progress as text lines
while it runs, not a bar shown only at the end; none of the libraries' messages about themselves
(the rule: docs/production.md, "What a run prints")."""

from __future__ import annotations

import re
import subprocess

import pytest
from production_fixtures import PHA, pha_env, tiny_fit_args

pytestmark = pytest.mark.slow  # runs pha fit end to end


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    root = tmp_path_factory.mktemp("output")
    args = [
        a
        for a in tiny_fit_args(n_train=8, eval_batch_size=8, max_steps=6, val_check_interval=3)
        if "progress_bar" not in a and "log_every" not in a
    ]
    result = subprocess.run(  # stdout and stderr are pipes: no terminal
        [PHA, "fit", *args, f"--trainer.default_root_dir={root}"],
        cwd=root,
        env=pha_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_progress_is_text_lines_with_step_loss_and_time_left(logged: subprocess.CompletedProcess) -> None:
    lines = logged.stdout.splitlines()
    first = [line for line in lines if line.startswith("step 1/6 | ")]
    last = [line for line in lines if line.startswith("step 6/6 | ")]
    assert len(first) == len(last) == 1, logged.stdout[-3000:]
    assert re.fullmatch(r"step 1/6 \| loss \d+\.\d{4} \| \d:\d\d:\d\d elapsed, ~\d:\d\d:\d\d left", first[0])
    assert re.fullmatch(r"step 6/6 \| loss \d+\.\d{4} \| \d+\.\d examples/s \| \d:\d\d:\d\d elapsed", last[0])
    assert re.search(r"^validation at step 3: val/avg \d+\.\d\d$", logged.stdout, re.M)
    assert "Epoch" not in logged.stdout and "━" not in logged.stdout  # no progress bar


def test_no_library_noise(logged: subprocess.CompletedProcess) -> None:
    log = logged.stdout + logged.stderr
    assert "💡" not in log and "litlogger" not in log  # Lightning's advertisement
    assert "is deprecated" not in log  # deprecations inside the libraries
    assert "log_every_n_steps" not in log  # 6 steps, fewer than the default interval of 50
