"""`pha export`, `pha retrieve` and `pha serve` read `--config` files of their own options and `--print_config` them,
with the one-line errors of the rest of `pha`; `pha fit` refuses LightningCLI's `--optimizer`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from production_fixtures import pha_error

from pha_lightning import PHAConfig, PHAModel
from pha_lightning.cli import main
from pha_lightning.formats.bundle import read_bundle_config


def printed_config(capsys: pytest.CaptureFixture, *args: str) -> dict:
    with pytest.raises(SystemExit) as done:
        main([*args, "--print_config"])
    assert done.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def write_yaml(path: Path, settings: object) -> str:
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def test_export_config_file_then_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_yaml(
        tmp_path / "export.yaml",
        {"ckpt_path": "a.ckpt", "output_dir": "out", "format": "peft", "tasks": ["x", "y"], "merge": True},
    )
    printed = printed_config(capsys, "export", "--config", config, "--tasks", "z", "--output_dir=elsewhere")
    assert printed == {
        "ckpt_path": "a.ckpt",
        "output_dir": "elsewhere",  # the command line wins
        "format": "peft",
        "precompute_adapters": False,
        "tasks": ["z"],
        "merge": True,
        "overwrite": False,
    }
    # what --print_config prints is a config file that reads back to the same options
    again = write_yaml(tmp_path / "printed.yaml", printed)
    assert printed_config(capsys, "export", "--config", again) == printed


def test_retrieve_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_yaml(
        tmp_path / "retrieve.yaml", {"ckpt_path": "m.ckpt", "tasks": ["cb", "copa"], "k": 8, "output_dir": "viz"}
    )
    printed = printed_config(capsys, "retrieve", "--config", config, "--k", "4")
    assert (printed["ckpt_path"], printed["tasks"], printed["k"], printed["output_dir"]) == (
        "m.ckpt",
        ["cb", "copa"],
        4,
        "viz",
    )
    assert printed["sources"] == 0 and printed["train_from_validation"] == []


def test_export_runs_from_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = PHAModel(PHAConfig(tasks=["synth_polarity", "synth_score"])).save_pretrained(tmp_path / "bundle")
    config = write_yaml(tmp_path / "export.yaml", {"ckpt_path": str(bundle), "output_dir": str(tmp_path / "copy")})
    main(["export", "--config", config])
    assert "wrote bundle" in capsys.readouterr().out
    assert read_bundle_config(tmp_path / "copy")["config"] == read_bundle_config(bundle)["config"]


@pytest.mark.parametrize(
    ("command", "settings", "message"),
    [
        ("export", {"ckpt": "a.ckpt"}, r"\['ckpt'\] are not options of pha export; valid: \['ckpt_path', "),
        ("export", ["ckpt_path", "a.ckpt"], "its top level is a list, not a mapping; a config file maps pha export's"),
        ("export", {"merge": "yes"}, "merge is a flag: true or false, got 'yes'"),
        ("export", {"ckpt_path": ["a", "b"]}, r"ckpt_path takes one value, got the list \['a', 'b'\]"),
        ("retrieve", {"k": {"n": 3}}, r"k takes a value, got the mapping \{'n': 3\}"),
        ("retrieve", {"k": 0, "ckpt_path": "m", "tasks": ["cb"]}, "--k must be >= 1, got 0"),
        ("export", {"output_dir": "x"}, r"the following arguments are required: --ckpt_path \(`pha export --help`"),
    ],
)
def test_bad_command_configs_are_one_line(
    command: str, settings: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_yaml(tmp_path / "bad.yaml", settings)
    err = pha_error(capsys, command, "--config", config)
    assert err.startswith("pha: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_missing_and_unparsable_config_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = pha_error(capsys, "export", "--config", str(tmp_path / "none.yaml"))
    assert "none.yaml' does not exist or cannot be read" in err
    (tmp_path / "broken.yaml").write_text("ckpt_path: [unclosed\n")
    err = pha_error(capsys, "retrieve", "--config", str(tmp_path / "broken.yaml"))
    assert "broken.yaml' is not valid YAML" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("option", [["--optimizer", "torch.optim.SGD"], ["--lr_scheduler.class_path=StepLR"]])
def test_fit_refuses_lightnings_optimizer_options(option: list[str], capsys: pytest.CaptureFixture) -> None:
    """auto_configure_optimizers=False: PHA's AdamW and warm-up schedule are never silently replaced."""
    err = pha_error(capsys, "fit", "--data.tasks=[synth_polarity]", *option)
    name = option[0].split(".")[0].split("=")[0]
    assert err == (
        f"pha: error: {name} is not an option of pha: PHA trains with AdamW and a linear warm-up and decay, set by "
        "model.optim.learning_rate, model.optim.weight_decay, model.optim.warmup_steps and model.optim.adam_epsilon\n"
    )


def test_an_optimizer_section_in_a_fit_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_yaml(tmp_path / "fit.yaml", {"optimizer": {"class_path": "torch.optim.SGD"}})
    err = pha_error(capsys, "fit", "--config", config, "--data.tasks=[synth_polarity]")
    assert err == f"pha: error: config file {config!r}: optimizer is not an option of pha: PHA trains with AdamW" + (
        " and a linear warm-up and decay, set by model.optim.learning_rate, model.optim.weight_decay, "
        "model.optim.warmup_steps and model.optim.adam_epsilon\n"
    )


def test_serve_config_file_then_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_yaml(tmp_path / "serve.yaml", {"ckpt_path": "bundle", "port": 9000, "max_batch_size": 8})
    printed = printed_config(capsys, "serve", "--config", config, "--port", "9001")
    assert printed == {
        "ckpt_path": "bundle",
        "host": "127.0.0.1",
        "port": 9001,  # the command line wins
        "max_batch_size": 8,
        "batch_timeout": 0.005,
        "predict_batch_size": 64,
        "max_body_bytes": 1_000_000,
        "accelerator": "auto",
        "devices": "auto",
        "workers_per_device": 1,
        "num_api_servers": None,
        "timeout": 30.0,
        "shutdown_timeout": 30.0,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ckpt_path=b", "--port=80"], r"--port must be in \[1024, 65535\], got 80"),
        (["--ckpt_path=b", "--host=localhost"], r"unknown --host 'localhost'; valid: \['127.0.0.1', '0.0.0.0', '::'\]"),
        (["--ckpt_path=b", "--max_batch_size=0"], r"--max_batch_size must be >= 1, got 0"),
        (["--ckpt_path=b", "--batch_timeout=-1"], r"--batch_timeout must be >= 0, got -1"),
        (["--ckpt_path=b", "--devices=0"], r"serve.devices must be an integer >= 1 or 'auto', got 0"),
        (["--port=9000"], r"the following arguments are required: ckpt_path \(`pha serve --help`"),
        (["--ckpt_path=/no/such/bundle"], r"ckpt_path '/no/such/bundle' does not exist; give a bundle"),
    ],
)
def test_bad_serve_options_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    err = pha_error(capsys, "serve", *args)
    assert err.startswith("pha: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_serve_without_litserve_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "litserve" else find_spec(name, *a)
    )
    err = pha_error(capsys, "serve", "--ckpt_path=bundle")
    assert "pha serve needs LitServe, which is not installed: pip install 'pha-lightning[serve]'" in err
