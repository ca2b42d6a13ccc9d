"""AdapterHub exports (``par_bn`` on BERT) checked against the ``adapters`` package itself.

``adapters`` 1.3.0 pins ``transformers ~=4.57.6`` while pha-lightning needs transformers 5, so the
two cannot share an environment: this process exports and computes PHA's outputs, and a Python
that has ``adapters`` (this one if it can import it, else ``$PHA_ADAPTERS_PYTHON``) loads each
exported adapter into the plain backbone and computes its outputs. Without such a Python the
comparison is skipped; the refusals are checked either way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.errors import ConfigError
from pha_lightning.formats.adapterhub import ADAPTERHUB_CONFIG_NAME
from pha_lightning.hub import resolve_backbone_path
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.exports import write_adapterhub_export
from pha_lightning.model.pha import PHAModel

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


def adapters_python() -> str | None:
    """A Python that can import ``adapters``: this one, or ``$PHA_ADAPTERS_PYTHON``."""
    if importlib.util.find_spec("adapters") is not None:
        return sys.executable
    other = os.environ.get("PHA_ADAPTERS_PYTHON")
    if other and subprocess.run([other, "-c", "import adapters"], capture_output=True).returncode == 0:
        return other
    return None


#: loads every task's adapter with ``adapters`` into one model and saves each task's final states
ADAPTERS_RUN = """
import json, sys, torch
import adapters
from adapters.composition import BatchSplit
from transformers import AutoModel
request = json.load(open(sys.argv[1]))
dtype = getattr(torch, request["dtype"])
torch.set_default_dtype(dtype)  # adapters builds its modules in the default dtype before loading the weights
model = AutoModel.from_pretrained(request["base"], torch_dtype=dtype)
adapters.init(model)
for task, directory in request["adapters"].items():
    assert model.load_adapter(directory, use_safetensors=True, load_as=task) == task
model.to(dtype).eval()
inputs = torch.load(request["inputs"])
outputs = {}
for task in request["adapters"]:
    model.set_active_adapters(task)
    with torch.no_grad():
        outputs[task] = model(**inputs).last_hidden_state
split = request["batch_split"]  # a batch sorted by task: each task's rows through its own adapter
model.active_adapters = BatchSplit(*split["tasks"], batch_sizes=split["sizes"])
with torch.no_grad():
    outputs["batch_split"] = model(**inputs).last_hidden_state
torch.save(outputs, request["outputs"])
"""


def pha_model(backbone: str, method: str, dtype: torch.dtype, std: float) -> PHAModel:
    """A bottleneck model whose adapters are far from their near-zero init (else any mapping would pass)."""
    seed_everything(0)
    config = PHAConfig(backbone=backbone, tasks=TASKS, method=method, adapter_dim=8, chunk_cost_tokens=None)
    model = PHAModel(config).to(dtype).eval()
    with torch.no_grad():
        for adapter in model.shared_adapters:
            for p in adapter.parameters():
                p.normal_(0.0, std)
        if model.task_adapters is not None:
            for p in model.task_adapters.parameters():
                p.normal_(0.0, std)
        if model.hypernetwork is not None:
            for p in model.hypernetwork.parameters():
                p.normal_(0.0, std)
    return model


def final_states(model: PHAModel, batch: dict[str, torch.Tensor], task: int) -> torch.Tensor:
    alone = {**batch, "task_ids": torch.full_like(batch["task_ids"], task)}
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        return model.run_backbone(alone, lambda: model.backbone(**inputs))[0].last_hidden_state


@pytest.mark.parametrize(
    ("backbone", "method", "dtype"),
    [
        ("bert", "pha", torch.float64),
        ("bert", "hyperformer", torch.float64),
        ("bert", "task_adapter", torch.float64),
        ("bert", "adapter", torch.float64),
        ("minilm", "pha", torch.float32),
    ],
)
def test_adapters_package_reproduces_each_task(
    backbone: str, method: str, dtype: torch.dtype, pretrained_tiny: dict, tmp_path: Path
) -> None:
    python = adapters_python()
    if python is None:
        pytest.skip("no Python with the adapters package (set PHA_ADAPTERS_PYTHON; adapters pins transformers 4.57)")
    path = pretrained_tiny["bert"] if backbone == "bert" else "pypi:all-MiniLM-L6-v2"
    model = pha_model(path, method, dtype, std=0.3 if backbone == "bert" else 0.02)
    out = write_adapterhub_export(model, tmp_path / "export")
    data = PHADataModule(tasks=TASKS, backbone=path, batch_size=6, max_source_length=24, seed=3)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    order = torch.argsort(batch["task_ids"], stable=True)
    batch = {k: v[order] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    present, sizes = torch.unique_consecutive(batch["task_ids"], return_counts=True)
    assert len(present) > 1
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    torch.save(inputs, tmp_path / "inputs.pt")
    request = {
        "base": resolve_backbone_path(path),
        "dtype": str(dtype).removeprefix("torch."),
        "adapters": {task: str(out / "adapterhub" / task) for task in TASKS},
        "inputs": str(tmp_path / "inputs.pt"),
        "outputs": str(tmp_path / "outputs.pt"),
        "batch_split": {"tasks": [TASKS[t] for t in present.tolist()], "sizes": sizes.tolist()},
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    env = {**os.environ, "PYTHONPATH": ""}  # the other environment's own transformers, no pha
    result = subprocess.run([python, "-c", ADAPTERS_RUN, str(tmp_path / "request.json")], env=env, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "outputs.pt")
    tolerance = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    expected = {task: final_states(model, batch, t) for t, task in enumerate(TASKS)}
    for task in TASKS:
        torch.testing.assert_close(got[task], expected[task], **tolerance)
    with torch.no_grad():  # PHA on the mixed batch, against adapters' BatchSplit of it
        mixed = model.run_backbone(batch, lambda: model.backbone(**inputs))[0].last_hidden_state
    torch.testing.assert_close(got["batch_split"], mixed, **tolerance)
    distinct = not torch.allclose(expected[TASKS[0]], expected[TASKS[1]])
    assert distinct == (method != "adapter")  # per-task adapters really differ; the shared one does not


def test_adapter_config_is_a_parallel_bottleneck_adapter(pretrained_tiny: dict, tmp_path: Path) -> None:
    model = pha_model(pretrained_tiny["bert"], "pha", torch.float32, std=0.1)
    out = write_adapterhub_export(model, tmp_path / "export", tasks=["synth_match"])
    config = json.loads((out / "adapterhub" / "synth_match" / ADAPTERHUB_CONFIG_NAME).read_text())
    bottleneck = config["config"]
    assert (bottleneck["is_parallel"], bottleneck["scaling"], bottleneck["non_linearity"]) == (True, 1.0, "relu")
    assert bottleneck["reduction_factor"] == 4 and config["hidden_size"] == 32  # 32 // 4 = adapter_dim 8
    assert (bottleneck["original_ln_after"], bottleneck["ln_before"], bottleneck["use_gating"]) == (True, False, False)
    assert (out / "adapterhub" / "synth_match" / "task_head.safetensors").exists()
    card = (out / "adapterhub" / "synth_match" / "README.md").read_text()
    assert "adapters.init(model)" in card and "use_safetensors=True" in card


@pytest.mark.parametrize(
    ("kind", "settings", "message"),
    [
        ("t5", {"method": "pha"}, "on T5 AdapterHub's parallel adapter reads the residual stream before"),
        ("bert", {"method": "pha", "adapter_kind": "lora"}, "adapters are LoRA: export them with --format peft"),
        ("bert", {"method": "hyperdecoder"}, "generates adapters from each example's own retrieval vector"),
        ("bert", {"method": "finetune"}, "trains the backbone itself"),
        ("bert", {"method": "pha", "adapter_dim": 5}, "no factor gives adapter_dim 5 for hidden size 32"),
    ],
)
def test_models_without_an_exact_adapterhub_adapter_are_refused(
    kind: str, settings: dict, message: str, pretrained_tiny: dict, tmp_path: Path
) -> None:
    model = PHAModel(PHAConfig(backbone=pretrained_tiny[kind], tasks=TASKS, **settings))
    with pytest.raises(ConfigError, match=message):
        write_adapterhub_export(model, tmp_path / "export")
    assert not (tmp_path / "export").exists()
