"""The multi-task LoRA methods against peft itself, in float64 on tiny BERT and T5: ``poly`` and
``mhr`` against ``PolyModel`` (outputs and gradients), ``task_lora`` and ``arrow`` through their
per-task peft exports (``PeftModel`` per task, ``create_arrow_model`` over all of them), ``mtl_lora``
against AdapterHub's ``MTLLoRAConfig`` (in the ``adapters`` environment), mixed-task
batches run in chunks; and their settings' errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything
from peft import PeftModel, PolyConfig, get_peft_model
from peft.tuners.lora import ArrowConfig, create_arrow_model
from safetensors.torch import save_file

from pha_lightning.errors import ConfigError
from pha_lightning.hub import resolve_backbone_path
from pha_lightning.model.chunking import plan_chunks
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.exports import write_peft_export
from pha_lightning.model.lora import LoRALinear
from pha_lightning.model.multi_lora import ArrowLoRA, top_right_singular_vectors
from pha_lightning.model.pha import PHAModel
from pha_lightning.model.retriever import masked_mean
from pha_lightning.training.checkpoints import check_compatible
from tests.model.test_adapterhub_export import adapters_python
from tests.model.test_peft_export import TASKS, hf_inputs, load_base, mixed_batch, pha_outputs, served_outputs

pytestmark = pytest.mark.slow  # compares with peft on real (tiny) backbones

CLOSE = {"rtol": 1e-9, "atol": 1e-11}  # float64: only summation order differs
PEFT_TARGETS = {"encoder": ["query", "value"], "seq2seq": ["q", "v"]}


@pytest.fixture(scope="module")
def pretrained(pretrained_tiny: dict[str, str]) -> dict[str, str]:
    return pretrained_tiny


def bank_model(backbone: str, method: str, **settings: object) -> PHAModel:
    """A float64 model of ``method`` whose bank is far from its init (B = 0 would hide any mapping),
    run in length chunks (a small chunk cost: mixed batches split)."""
    seed_everything(0)
    defaults = {"lora_rank": 4, "lora_alpha": 1.0, "lora_dropout": 0.0, "chunk_cost_tokens": 1}
    config = PHAConfig(backbone=backbone, tasks=TASKS, method=method, **{**defaults, **settings})
    model = PHAModel(config).double().eval()
    with torch.no_grad():
        for name, p in model.lora_bank.named_parameters():
            p.normal_(0.0, 1.0 if name.startswith("logits") else 0.3)
    return model


def sites(model: PHAModel) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in model.backbone.named_modules() if isinstance(m, LoRALinear)]


def peft_poly(model: PHAModel, backbone: str) -> torch.nn.Module:
    """peft's ``PolyModel`` holding ``model``'s skills and router logits at every site."""
    splits, skills = model.config.skill_splits, model.config.poly_skills
    config = PolyConfig(
        r=4, n_tasks=len(TASKS), n_skills=skills, n_splits=splits, target_modules=PEFT_TARGETS[model.family]
    )
    theirs = get_peft_model(load_base(backbone), config).base_model.eval()
    bank = model.lora_bank
    with torch.no_grad():
        for name, site in sites(model):
            k, i = site.update.shape_set, site.update.index
            layer = theirs.model.get_submodule(name)
            layer.poly_lora_A["default"].copy_(bank.a[k][i].transpose(-1, -2))
            layer.poly_lora_B["default"].copy_(bank.b[k][i].transpose(-1, -2))
            layer.poly_router["default"].module_logits.copy_(bank.logits[k][i].flatten(1))
    return theirs


@pytest.mark.parametrize(("method", "splits"), [("poly", None), ("mhr", None), ("mhr", 2)])
@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_poly_and_mhr_equal_peft_poly(kind: str, method: str, splits: int | None, pretrained: dict) -> None:
    """A mixed-task batch, in chunks: the same outputs as peft's PolyModel given the task ids, and
    the same gradients of every skill factor and router logit."""
    model = bank_model(pretrained[kind], method, poly_skills=3, poly_splits=splits)
    theirs = peft_poly(model, pretrained[kind])
    batch = mixed_batch(pretrained[kind])
    got = chunked_outputs(model, batch)
    out = theirs(**hf_inputs(model, batch), task_ids=batch["task_ids"])
    if model.family == "seq2seq":
        got, expected = targets_only(got, batch), targets_only(out.logits, batch)
    else:
        expected = masked_mean(out.last_hidden_state, batch["attention_mask"])
    torch.testing.assert_close(got, expected, **CLOSE)
    got.square().sum().backward()
    expected.square().sum().backward()
    for name, site in sites(model):
        k, i = site.update.shape_set, site.update.index
        layer = theirs.model.get_submodule(name)
        bank = model.lora_bank
        torch.testing.assert_close(bank.a[k].grad[i].transpose(-1, -2), layer.poly_lora_A["default"].grad, **CLOSE)
        torch.testing.assert_close(bank.b[k].grad[i].transpose(-1, -2), layer.poly_lora_B["default"].grad, **CLOSE)
        logits_grad = layer.poly_router["default"].module_logits.grad
        torch.testing.assert_close(bank.logits[k].grad[i].flatten(1), logits_grad, **CLOSE)
    assert model.lora_bank.logits[0].grad.abs().sum() > 0


def chunked_outputs(model: PHAModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's forward in length chunks: the encoder's mean final states, T5's logits (zero
    past each example's target, where a chunk's logits end: :func:`targets_only`)."""
    assert plan_chunks(batch["attention_mask"], model.config.chunk_cost_tokens) is not None
    return model(batch)["lm_logits" if model.family == "seq2seq" else "pooled"]


def targets_only(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """T5 logits at the target positions (what the loss reads), zero elsewhere."""
    return logits * batch["labels"].ne(-100)[..., None]


def test_poly_samples_each_example_in_training(pretrained: dict) -> None:
    """Training draws a relaxed-Bernoulli mixture per example (peft's router): two examples of one
    task get different LoRAs, each mixture sums to one over the skills."""
    model = bank_model(pretrained["bert"], "poly").train()
    weights = model.lora_bank(torch.tensor([0, 0, 1]))
    assert weights.per_example and weights.a[0].shape[0] == 3
    assert not torch.allclose(weights.a[0][0], weights.a[0][1])
    mixture = model.lora_bank.mixture(model.lora_bank.logits[0][:, [0, 0]])
    torch.testing.assert_close(mixture.sum(-1), torch.ones(mixture.shape[:-1], dtype=torch.float64))


@pytest.mark.parametrize("method", ["task_lora", "poly", "mhr", "mtl_lora"])
@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_peft_export_serves_each_task(kind: str, method: str, pretrained: dict, tmp_path: Path) -> None:
    """``pha export --format peft``: every task's LoRA (task_lora's own, Poly's mixture at evaluation,
    MTL-LoRA's ``(Σ p·B)·(Λ·A)``)
    loaded by peft computes what the model computes for a mixed batch; the tasks really differ."""
    model = bank_model(pretrained[kind], method)
    out = write_peft_export(model, tmp_path / "export")
    batch = mixed_batch(pretrained[kind])
    expected = pha_outputs(model, batch)
    peft = PeftModel.from_pretrained(load_base(pretrained[kind]), out / "peft" / TASKS[0], adapter_name=TASKS[0])
    for task in TASKS[1:]:
        peft.load_adapter(out / "peft" / task, adapter_name=task)
    names = [TASKS[t] for t in batch["task_ids"].tolist()]
    got = served_outputs(peft.eval(), hf_inputs(model, batch), adapter_names=names)
    if model.family == "seq2seq":
        got, expected = targets_only(got, batch), targets_only(expected, batch)
    torch.testing.assert_close(got, expected, **CLOSE)
    alone = {**batch, "task_ids": torch.zeros_like(batch["task_ids"])}
    assert not torch.allclose(pha_outputs(model, alone), expected)


@pytest.mark.parametrize("kind", ["bert", "t5"])
@pytest.mark.parametrize(("top_k", "temperature"), [(2, 1.0), (3, 0.5)])
def test_arrow_equals_peft_arrow_over_the_exported_library(
    kind: str, top_k: int, temperature: float, pretrained: dict, tmp_path: Path
) -> None:
    """``arrow`` in evaluation computes what peft's ``create_arrow_model`` computes over the model's
    per-task LoRAs (its peft export), for a mixed batch whose task labels it ignores."""
    model = bank_model(pretrained[kind], "arrow", arrow_top_k=top_k, arrow_temperature=temperature)
    with torch.no_grad():  # a clear top singular direction: peft's 15 power iterations converge
        for a in model.lora_bank.a:
            a[..., 0, :] *= 8.0
    out = write_peft_export(model, tmp_path / "export")
    batch = mixed_batch(pretrained[kind])
    with torch.no_grad():
        got = chunked_outputs(model, batch)
        relabelled = chunked_outputs(model, {**batch, "task_ids": torch.zeros_like(batch["task_ids"])})
    config = ArrowConfig(top_k=top_k, router_temperature=temperature, rng_seed=0)
    arrow = create_arrow_model(load_base(pretrained[kind]), [str(out / "peft" / t) for t in TASKS], config).eval()
    expected = served_outputs(arrow, hf_inputs(model, batch))
    if model.family == "encoder":
        expected = masked_mean(expected, batch["attention_mask"])
    else:
        got, relabelled, expected = (targets_only(t, batch) for t in (got, relabelled, expected))
    # peft finds the prototypes by float32 power iterations; ours are exact (the rest is float64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(relabelled, got, **CLOSE)  # no task label is read
    model.train()  # training: task_lora (each example through its task's LoRA)
    with torch.no_grad():
        trained_as = chunked_outputs(model, batch)
    assert not torch.allclose(trained_as, got)


def test_arrow_prototypes_are_top_singular_vectors() -> None:
    """The exact prototypes: ``|v·ṽ| = 1`` against the top right singular vector of ``B·A``."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 2, 4, 10, dtype=torch.float64), torch.randn(3, 2, 12, 4, dtype=torch.float64)
    got = top_right_singular_vectors(a, b)
    expected = torch.linalg.svd(b @ a).Vh[..., 0, :]
    torch.testing.assert_close((got * expected).sum(-1).abs(), torch.ones(3, 2, dtype=torch.float64))


def test_arrow_routes_each_token_to_its_top_k() -> None:
    """A token aligned with one task's prototype alone gets that task's update (top_k 1)."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 1, 2, 5, dtype=torch.float64), torch.randn(3, 1, 6, 2, dtype=torch.float64)
    protos = top_right_singular_vectors(a, b)
    routed = ArrowLoRA((a,), (b,), (protos,), 1, 1.0, torch.zeros(1, dtype=torch.long))
    x = protos[2, 0][None, None]  # (1 example, 1 token, d_in)
    top = (x[0] @ protos[:, 0].T).abs().argmax()
    torch.testing.assert_close(routed.apply(x, 0, 0)[0, 0], b[top, 0] @ a[top, 0] @ x[0, 0])


def test_arrow_coefficients_are_the_weights_its_update_mixes() -> None:
    """Each token's routing weights (what the routing benchmark reads) are the softmax of its ``top_k``
    largest ``|x·v_t|`` over the temperature, zero elsewhere, and the update is exactly the tasks'
    updates mixed by them."""
    torch.manual_seed(0)
    a, b = torch.randn(4, 2, 3, 7, dtype=torch.float64), torch.randn(4, 2, 5, 3, dtype=torch.float64)
    protos = top_right_singular_vectors(a, b)
    routed = ArrowLoRA((a,), (b,), (protos,), 2, 0.7, torch.zeros(2, dtype=torch.long))
    x = torch.randn(2, 3, 7, dtype=torch.float64)  # 2 examples of 3 tokens
    coeff = routed.coefficients(x, 0, 1)
    tokens = x.reshape(6, 7)
    scores = (tokens @ protos[:, 1].T).abs()
    for t in range(6):
        top = scores[t].topk(2)
        expected = torch.zeros(4, dtype=torch.float64)
        expected[top.indices] = torch.softmax(top.values / 0.7, dim=0)
        torch.testing.assert_close(coeff[t], expected, **CLOSE)
    mixed = torch.stack([sum(coeff[t, e] * b[e, 1] @ a[e, 1] @ tokens[t] for e in range(4)) for t in range(6)])
    torch.testing.assert_close(routed.apply(x, 0, 1), mixed.reshape(2, 3, 5), **CLOSE)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "poly", "poly_splits": 2}, "poly_splits 2 cuts Poly's skills into heads, which is method 'mhr'"),
        ({"method": "mhr", "poly_splits": 1}, "poly_splits 1 makes MHR Poly; use method 'poly'"),
        ({"method": "mhr", "poly_splits": 0}, "poly_splits"),
        ({"method": "poly", "poly_skills": 0}, "poly_skills"),
        ({"method": "arrow", "arrow_top_k": 5}, "arrow_top_k 5 is more than the 4 task LoRAs"),
        ({"method": "arrow", "arrow_temperature": 0.0}, "arrow_temperature"),
    ],
)
def test_bad_settings_are_named(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PHAConfig(tasks=TASKS, **settings)


def test_mhr_splits_must_divide_the_sites(pretrained: dict) -> None:
    with pytest.raises(ConfigError, match=r"poly_splits 5 must divide every LoRA site's input and output width"):
        PHAModel(PHAConfig(backbone=pretrained["bert"], tasks=TASKS, method="mhr", poly_splits=5))


#: builds AdapterHub's MTL-LoRA (one MTLLoRAConfig adapter per task, A and B shared) with the given
#: weights, runs the batch with ``task_ids`` through ``MultiTask`` and saves the outputs
MTL_LORA_RUN = """
import json, sys, torch
import adapters
from adapters import MTLLoRAConfig
from adapters.composition import MultiTask
from safetensors.torch import load_file
from transformers import AutoModel, T5ForConditionalGeneration
request = json.load(open(sys.argv[1]))
torch.set_default_dtype(torch.float64)  # adapters builds its modules in the default dtype
kind = T5ForConditionalGeneration if request["t5"] else AutoModel
model = kind.from_pretrained(request["base"], dtype=torch.float64)
adapters.init(model)
config = MTLLoRAConfig(r=request["rank"], alpha=request["alpha"], dropout=0.0, n_up_projection=request["up"],
                       weights_sharpness=request["sharpness"])
for task in request["tasks"]:
    model.add_adapter(task, config)
model.share_parameters(adapter_names=request["tasks"])
model.active_adapters = MultiTask(*request["tasks"])
weights = load_file(request["weights"])
params = dict(model.named_parameters())
missing = sorted(set(params) - set(weights) - {n for n, p in params.items() if ".loras." not in n and "shared_parameters" not in n})
assert not missing, missing
with torch.no_grad():
    for name, value in weights.items():
        params[name].copy_(value)
model.eval()
inputs = load_file(request["inputs"])
with torch.no_grad():
    out = model(**inputs)
torch.save(out.logits if request["t5"] else out.last_hidden_state, request["outputs"])
"""


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_mtl_lora_equals_adapterhub_mtl_lora(kind: str, pretrained: dict, tmp_path: Path) -> None:
    """``mtl_lora`` on a mixed batch in chunks computes what AdapterHub's MTL-LoRA computes with the
    batch's ``task_ids`` (run in the ``adapters`` environment, skipped without one, as the AdapterHub export)."""
    python = adapters_python()
    if python is None:
        pytest.skip("no Python with the adapters package (set PHA_ADAPTERS_PYTHON; adapters pins transformers 4.57)")
    model = bank_model(pretrained[kind], "mtl_lora", lora_alpha=6.0, mtl_up_projections=3, mtl_sharpness=0.5)
    bank, shared = model.lora_bank, ",".join(TASKS)
    weights = {}
    for name, site in sites(model):
        k, i = site.update.shape_set, site.update.index
        weights[f"{name}.shared_parameters.{shared}.lora_A"] = bank.a[k][i]
        weights[f"{name}.shared_parameters.{shared}.lora_B"] = bank.b[k][i]
        for t, task in enumerate(TASKS):
            weights[f"{name}.loras.{task}.weights"] = bank.mix[k][i, t]
            weights[f"{name}.loras.{task}.task_specific.values"] = bank.scales[k][i, t]
    save_file({n: w.detach().contiguous() for n, w in weights.items()}, tmp_path / "weights.safetensors")
    batch = mixed_batch(pretrained[kind])
    inputs = {**hf_inputs(model, batch), "task_ids": batch["task_ids"]}
    save_file({n: v.contiguous() for n, v in inputs.items()}, tmp_path / "inputs.safetensors")
    request = {
        "base": resolve_backbone_path(pretrained[kind]), "t5": model.family == "seq2seq", "tasks": TASKS,
        "rank": 4, "alpha": 6.0, "up": 3, "sharpness": 0.5, "weights": str(tmp_path / "weights.safetensors"),
        "inputs": str(tmp_path / "inputs.safetensors"), "outputs": str(tmp_path / "outputs.pt"),
    }  # fmt: skip
    (tmp_path / "request.json").write_text(json.dumps(request))
    env = {**os.environ, "PYTHONPATH": ""}  # the other environment's own transformers, no pha
    result = subprocess.run([python, "-c", MTL_LORA_RUN, str(tmp_path / "request.json")], env=env, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    expected = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        got = chunked_outputs(model, batch)
    if model.family == "seq2seq":
        got, expected = targets_only(got, batch), targets_only(expected, batch)
        # the adapters environment's transformers 4.57 takes T5's attention softmax in float32
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(got, masked_mean(expected, batch["attention_mask"]), **CLOSE)


def test_mtl_lora_is_one_lora_per_task(pretrained: dict) -> None:
    """Task ``t``'s factors are ``Λ_t·A`` and ``Σ_i softmax(w_t / sharpness)_i·B_i`` (AdapterHub's
    formula, in its order of products), and the tasks differ."""
    model = bank_model(pretrained["bert"], "mtl_lora", mtl_sharpness=0.5)
    bank = model.lora_bank
    x = torch.randn(5, bank.a[0].shape[-1], dtype=torch.float64)
    weights = bank(torch.tensor([2, 0]))
    for g, t in enumerate([0, 2]):
        p = (bank.mix[0][0, t] / 0.5).exp()
        per_up = x @ bank.a[0][0].T @ torch.diag(bank.scales[0][0, t]) @ bank.b[0][0].transpose(-1, -2)
        expected = (p[:, None, None] * per_up).sum(0) / p.sum()
        torch.testing.assert_close(x @ weights.a[0][g, 0].T @ weights.b[0][g, 0].T, expected, **CLOSE)
    assert not torch.allclose(weights.b[0][0], weights.b[0][1])


@pytest.mark.parametrize("method", ["task_lora", "poly", "mhr", "mtl_lora", "arrow"])
def test_bundle_serves_the_same_predictions(method: str, pretrained: dict, tmp_path: Path) -> None:
    """``save_pretrained`` / ``from_pretrained`` keep the bank: the served model predicts a mixed batch
    and raw examples (``pha predict``'s path) as the trained one does."""
    model = bank_model(pretrained["bert"], method).float()
    served = PHAModel.from_pretrained(model.save_pretrained(tmp_path / "bundle")).eval()
    assert served.config.method == method
    batch = mixed_batch(pretrained["bert"])
    torch.testing.assert_close(served.predict_values(batch), model.predict_values(batch))
    examples = [{"task": "synth_polarity", "sentence": "the red cat near the park was lovely"}]
    assert served.predict(examples) == model.predict(examples)


def test_arrow_serves_a_task_lora_checkpoint_and_nothing_else() -> None:
    """An ``arrow`` configuration loads a ``task_lora`` checkpoint (the same weights) and back; any
    other method's checkpoint is refused, naming both methods."""
    saved = {"tasks": TASKS, "method": "task_lora"}
    check_compatible(saved, {"tasks": TASKS, "method": "arrow"}, "run.ckpt")
    check_compatible({**saved, "method": "arrow"}, {"tasks": TASKS, "method": "task_lora"}, "run.ckpt")
    with pytest.raises(ConfigError, match=r"run.ckpt was trained with model.arch.method='poly', but .* 'arrow'"):
        check_compatible({**saved, "method": "poly"}, {"tasks": TASKS, "method": "arrow"}, "run.ckpt")
