"""``pha``'s default torch thread count: the CPUs the process may really use (affinity and cgroup
quota), unless ``OMP_NUM_THREADS`` chose; said once."""

from __future__ import annotations

import pytest

from pha_lightning.cli import threads
from pha_lightning.cli.threads import choose_threads
from pha_lightning.cpus import cpu_quota, default_threads


@pytest.mark.parametrize(
    ("text", "quota"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5), ("", None), (None, None), ("x y", None)],
)
def test_cpu_quota_reads_cgroup_cpu_max(text: str | None, quota: float | None) -> None:
    assert cpu_quota(text) == quota


@pytest.mark.parametrize(
    ("affinity", "quota", "threads"),
    [(64, None, 64), (64, 2.0, 2), (64, 1.5, 1), (64, 0.5, 1), (2, 8.0, 2), (1, None, 1)],
)
def test_default_threads_is_the_smaller_of_affinity_and_whole_quota(
    affinity: int, quota: float | None, threads: int
) -> None:
    assert default_threads(affinity, quota) == threads


def test_a_quota_below_the_affinity_sets_omp_num_threads_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: (16, 3.0))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(threads.sys, "modules", {})  # as before torch is imported
    environ: dict[str, str] = {}
    assert choose_threads(environ) == 3 and environ == {"OMP_NUM_THREADS": "3"}
    assert capsys.readouterr().err == (
        "pha: computing with 3 threads: 16 schedulable CPUs, a CPU quota of 3; set OMP_NUM_THREADS to choose\n"
    )
    assert choose_threads(environ) is None and capsys.readouterr().err == ""  # once; its child processes inherit it


def test_the_users_omp_num_threads_is_kept(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: (16, 3.0))
    environ = {"OMP_NUM_THREADS": "7"}
    assert choose_threads(environ) is None and environ == {"OMP_NUM_THREADS": "7"} and capsys.readouterr().err == ""


def test_the_choice_is_silent_where_it_is_torchs_own(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: (4, None))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads.sys, "modules", {})
    environ: dict[str, str] = {}
    assert choose_threads(environ) == 4 and environ == {"OMP_NUM_THREADS": "4"}
    assert capsys.readouterr().err == ""  # no line where pha takes what torch would take
