"""A trained checkpoint with the data it was trained on: what the analyses of a finished run
(routing rules, retrieval confusion) start from."""

from __future__ import annotations

from typing import Any

from pha_lightning.data.datamodule import PHADataModule, recorded_data_module
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.model.pha import PHAModel
from pha_lightning.training.system import load_system


def model_and_data(
    ckpt_path: str, data_dir: str | None, stages: tuple[str, ...], method: str | None = None
) -> tuple[PHAModel, PHADataModule]:
    """The checkpoint's model (eval mode) and its data module, rebuilt from the data settings the
    checkpoint recorded (``data_dir`` replacing the recorded folder when given) and set up for ``stages``.
    ``method``: the model run as another method with the same weights (``arrow`` over ``task_lora``)."""
    checkpoint = read_checkpoint(ckpt_path)
    if method is not None:
        arch = {**checkpoint["hyper_parameters"]["arch"], "method": method}
        checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "arch": arch}
    model = load_system(checkpoint).eval().model
    return model, recorded_data(checkpoint, data_dir, stages)


def recorded_data(
    checkpoint: dict[str, Any], data_dir: str | None, stages: tuple[str, ...], **overrides: object
) -> PHADataModule:
    """The data module of a read checkpoint's recorded settings, ``overrides`` replacing some of them
    (``n_train=None``: every training row, the validation and test rows carved as in training)."""
    place = {} if data_dir is None else {"data_dir": data_dir}
    return recorded_data_module(checkpoint["datamodule_hyper_parameters"], stages, **place, **overrides)
