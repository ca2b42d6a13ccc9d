"""Checkpoints, bundles and configurations of earlier versions: upgraded in one place, or refused clearly."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything
from production_fixtures import pha_error, trained_checkpoint

from pha_lightning.cli.checks import check_config_file, check_option_names
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.errors import ConfigError, PHAError
from pha_lightning.formats.bundle import CONFIG_NAME, WEIGHTS_NAME, read_bundle_config
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.formats.migration import (
    CHECKPOINT_VERSION,
    CHECKPOINT_VERSION_KEY,
    FLAT_TRAINING_SETTINGS,
    OLD_BUNDLE_WEIGHTS_NAME,
    upgrade_checkpoint,
)
from pha_lightning.model.calibration import RoutingConfig
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.pha import PHAModel
from pha_lightning.training.settings import LossConfig, OptimConfig
from pha_lightning.training.system import PHAModule, load_system

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


def version_1(hyper_parameters: dict) -> dict:
    """The flat hyperparameters pha-lightning 0.1 wrote for the same system (the inverse of the upgrade)."""
    arch = dict(hyper_parameters["arch"])
    flat = {key: value for key, value in arch.items() if key not in ("task_specs", "retriever")}
    flat["portable_task_specs"] = arch["task_specs"]
    training = {**hyper_parameters["loss"], **hyper_parameters["optim"]}
    # version 1 had only these training settings; later ones take their defaults (the released behaviour)
    training = {key: value for key, value in training.items() if key in FLAT_TRAINING_SETTINGS}
    return {**flat, **training, "transfer": hyper_parameters["transfer"]}


def with_defaults(hyper_parameters: dict) -> dict:
    """Grouped settings with every loss, optimiser and routing setting a checkpoint lacks at its default, as
    :class:`PHAModule` builds them."""
    groups = {"loss": asdict(LossConfig()), "optim": asdict(OptimConfig()), "routing": asdict(RoutingConfig())}
    return {**hyper_parameters, **{name: {**groups[name], **hyper_parameters.get(name, {})} for name in groups}}


def old_checkpoint(system: PHAModule, drop: tuple[str, ...] = ()) -> dict:
    """A version-1 checkpoint of ``system``: flat settings (without ``drop``, keys it predates) and
    the weights without the ``model.`` prefix (written before the model/system split)."""
    flat = version_1(dict(system.hparams))
    return {
        "hyper_parameters": {key: value for key, value in flat.items() if key not in drop},
        "state_dict": {k: v for k, v in system.model.state_dict().items() if k in system.model.saved_state_keys()},
    }


@pytest.fixture(scope="module")
def data() -> PHADataModule:
    dm = PHADataModule(tasks=TASKS, batch_size=32, max_source_length=48, temperature=2.0)
    dm.setup("fit")
    return dm


def test_a_version_1_checkpoint_upgrades_to_the_grouped_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    current = torch.load(trained_checkpoint(tmp_path_factory), map_location="cpu", weights_only=True)
    assert current[CHECKPOINT_VERSION_KEY] == CHECKPOINT_VERSION
    old = {**current, "hyper_parameters": version_1(current["hyper_parameters"])}
    del old[CHECKPOINT_VERSION_KEY]
    upgraded = upgrade_checkpoint(old)
    assert with_defaults(upgraded["hyper_parameters"]) == with_defaults(current["hyper_parameters"])
    assert upgrade_checkpoint(upgraded)["hyper_parameters"] == upgraded["hyper_parameters"]  # idempotent


def test_the_retriever_of_a_version_1_checkpoint_follows_its_loss_weights() -> None:
    system = PHAModule(PHAConfig(tasks=TASKS[:2]), loss=LossConfig(lambda_ir=0.0, lambda_pro=0.0))
    assert system.model.retriever is None
    upgraded = upgrade_checkpoint(old_checkpoint(system))
    assert upgraded["hyper_parameters"]["arch"]["retriever"] is False
    assert load_system(upgraded).model.retriever is None


def test_a_version_1_setting_no_version_had_is_named_not_dropped() -> None:
    """Version-1 settings are architecture settings unless the migration lists them as training or
    linked ones: a key that is neither is refused by name when the model is built, never dropped."""
    checkpoint = old_checkpoint(PHAModule(PHAConfig(tasks=TASKS[:2])))
    checkpoint["hyper_parameters"]["adapter_width"] = 32
    upgraded = upgrade_checkpoint(checkpoint)
    with pytest.raises(ConfigError, match=r"unknown architecture settings \['adapter_width'\]"):
        load_system(upgraded)


@pytest.mark.slow
def test_weights_saved_before_the_calibration_settings_load_with_their_old_meaning(data: PHADataModule) -> None:
    """A version-1 checkpoint without ``hypernet_calibration`` / ``regression_target`` (written
    before they existed) was trained with the released heads and raw-scale regression: it loads
    with those and predicts exactly what the old model predicted."""
    seed_everything(0)
    arch = PHAConfig(tasks=TASKS, hypernet_calibration="none", regression_target="raw", hypernet_init_scale=100.0)
    old = PHAModule(arch).eval()
    checkpoint = old_checkpoint(old, drop=("hypernet_calibration", "regression_target"))
    batch = next(iter(data.task_dataloaders("validation")[3]))  # synth_score: regression
    loaded = load_system(checkpoint).eval()
    config = loaded.model.config
    assert (config.hypernet_calibration, config.regression_target) == ("none", "raw")
    torch.testing.assert_close(loaded.model.predict_values(batch), old.model.predict_values(batch), rtol=0, atol=0)


def test_a_model_built_with_other_settings_names_the_one_to_use() -> None:
    old = PHAModule(PHAConfig(tasks=TASKS, hypernet_calibration="none"))
    checkpoint = old_checkpoint(old, drop=("hypernet_calibration",))
    with pytest.raises(
        ConfigError, match=r"model.arch.hypernet_calibration='none'.*--model.arch.hypernet_calibration=none"
    ):
        PHAModule(PHAConfig(tasks=TASKS)).on_load_checkpoint(checkpoint)


def test_a_checkpoint_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, CHECKPOINT_VERSION_KEY: CHECKPOINT_VERSION + 1}, path)
    with pytest.raises(PHAError, match=rf"has checkpoint format {CHECKPOINT_VERSION + 1}; this pha-lightning reads"):
        read_checkpoint(str(path))


def test_format_1_bundles_still_load(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, data: PHADataModule
) -> None:
    """A bundle written before the model/system split (format 1: every training hyperparameter
    under ``hyperparameters``) loads and predicts the same; keys it predates take their legacy values."""
    ckpt = trained_checkpoint(tmp_path_factory)
    bundle = load_system(read_checkpoint(str(ckpt))).model.save_pretrained(tmp_path / "bundle")
    old = tmp_path / "old"
    record = format_2_copy(bundle, old)
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    record["hyperparameters"] = {k: v for k, v in version_1(hparams).items() if k != "transfer"}
    record["format_version"] = 1
    del record["config"]
    (old / CONFIG_NAME).write_text(json.dumps(record))
    served, reference = PHAModel.from_pretrained(old), PHAModel.from_pretrained(bundle)
    assert served.config == reference.config
    batch = next(iter(data.task_dataloaders("validation")[0]))
    assert torch.equal(served.predict_values(batch), reference.predict_values(batch))
    del record["hyperparameters"]["hypernet_calibration"]  # written before the setting existed
    (old / CONFIG_NAME).write_text(json.dumps(record))
    assert read_bundle_config(old)["config"]["hypernet_calibration"] == "none"


def format_2_copy(bundle: Path, old: Path) -> dict:
    """A copy of ``bundle`` as format 2 wrote it (weights in peft's file name, no ``weights_file``); its record."""
    shutil.copytree(bundle, old)
    record = json.loads((old / CONFIG_NAME).read_text())
    (old / WEIGHTS_NAME).rename(old / OLD_BUNDLE_WEIGHTS_NAME)
    record["files"] = {OLD_BUNDLE_WEIGHTS_NAME if k == WEIGHTS_NAME else k: v for k, v in record["files"].items()}
    del record["weights_file"]
    record["format_version"] = 2
    (old / CONFIG_NAME).write_text(json.dumps(record))
    return record


def test_format_2_bundles_with_the_old_weights_file_name_still_load(tmp_path: Path) -> None:
    """Format 2 kept the weights in ``adapter_model.safetensors`` (peft's name); format 3 renamed
    it ``pha_model.safetensors``. An old bundle loads with the same weights, and its SHA-256 is still checked."""
    seed_everything(0)
    model = PHAModel(PHAConfig(tasks=TASKS)).eval()
    with torch.no_grad():
        model.prototypes.weight.add_(1.0)  # not the init: the weights must come from the file
    bundle = model.save_pretrained(tmp_path / "bundle", precompute=True)
    assert (bundle / WEIGHTS_NAME).exists() and WEIGHTS_NAME == "pha_model.safetensors"
    old = tmp_path / "old"
    format_2_copy(bundle, old)
    served = PHAModel.from_pretrained(old, use_precomputed_adapters=False)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(served.state_dict()[name], value, rtol=0, atol=0)
    assert read_bundle_config(old)["weights_file"] == OLD_BUNDLE_WEIGHTS_NAME
    copy = served.save_pretrained(tmp_path / "resaved")  # written in the current format
    assert (copy / WEIGHTS_NAME).exists() and not (copy / OLD_BUNDLE_WEIGHTS_NAME).exists()
    (old / OLD_BUNDLE_WEIGHTS_NAME).write_bytes((old / OLD_BUNDLE_WEIGHTS_NAME).read_bytes()[:-8])
    with pytest.raises(PHAError, match="adapter_model.safetensors is corrupt or truncated"):
        PHAModel.from_pretrained(old)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("learning_rate", "model.learning_rate is now model.optim.learning_rate"),
        ("lambda_pro", "model.lambda_pro is now model.loss.lambda_pro"),
        ("adapter_dim", "model.adapter_dim is now model.arch.adapter_dim"),
        ("tasks", "model.tasks is linked from data.tasks: drop it"),
    ],
)
def test_a_flat_config_names_the_new_key(key: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(f"model:\n  {key}: 1\n")
    with pytest.raises(ConfigError, match=rf"^config file '{path}': {message} \(settings are grouped"):
        check_config_file(str(path))
    path.write_text(f"fit:\n  model:\n    {key}: 1\n")  # a config of one subcommand
    with pytest.raises(ConfigError, match=message):
        check_config_file(str(path))


def test_a_flat_option_names_the_new_key(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match=r"^--model.warmup_steps is now model.optim.warmup_steps"):
        check_option_names(["fit", "--model.warmup_steps=10"])
    check_option_names(["fit", "--model.optim.warmup_steps=10", "--model.transfer.checkpoint", "x"])
    err = pha_error(capsys, "fit", "--model.backbone", "x")
    assert err.count("\n") == 1 and err.startswith("pha: error: --model.backbone is now model.arch.backbone (")
