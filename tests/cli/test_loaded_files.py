"""Files a user is given or points at: a checkpoint or backbone that asks to unpickle objects is
refused with one ``pha: error:`` line naming the file (never torch's advice to load it unsafely),
and configs and task specs given as pipes (``--config <(...)``) are read once and work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from production_fixtures import pha_error, run_pha
from safetensors.torch import load_file

from pha_lightning import PHAConfig, PHAModel
from pha_lightning.errors import ConfigError
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
        f"the weights of backbone '{folder}' ({pickled}) are refused: it holds more than tensors and plain values "
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
    assert line.startswith(f"pha: error: the weights of backbone '{folder}' ({pickled}) are refused"), line
    assert not marker.exists()
