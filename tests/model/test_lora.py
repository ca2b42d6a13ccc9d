"""LoRA: the shared baseline against peft's LoraModel, generated LoRA against a per-example
reference, exact init transparency, and the settings' errors."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import seed_everything
from peft import LoraConfig, get_peft_model
from tolerances import FLOAT32_PATHS
from torch.nn import functional as F

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.adapters import AdapterContext
from pha_lightning.model.backbone import backbone_blocks, load_backbone
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.lora import GeneratedLoRAUpdate, LoRAHyperNetwork, LoRALinear, apply_lora_grouped
from pha_lightning.model.prototypes import PrototypeTable
from pha_lightning.model.retriever import masked_mean
from pha_lightning.training.health import health_report
from pha_lightning.training.settings import OptimConfig
from pha_lightning.training.system import PHAModule

pytestmark = pytest.mark.slow  # compares with peft and trains LoRA models

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]
ALL_TARGETS = ["query", "key", "value", "output", "ffn_in", "ffn_out"]
#: the same targets in peft's terms (a regex over module names: BERT's "output.dense" suffix would
#: also match the attention output)
PEFT_TARGETS = {
    ("encoder", ("query", "value")): ["query", "value"],
    ("encoder", ("output", "ffn_out")): r".*layer\.\d+\.(attention\.output|output)\.dense",
    ("seq2seq", tuple(ALL_TARGETS)): ["q", "k", "v", "o", "wi", "wo"],
}


def batch_for(backbone: str, size: int = 6) -> dict[str, torch.Tensor]:
    data = PHADataModule(tasks=TASKS, backbone=backbone, batch_size=size, max_source_length=32, seed=3)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def lora_pair(backbone: str, targets: tuple[str, ...], dropout: float) -> tuple[PHAModule, torch.nn.Module]:
    """``method: lora`` and peft's LoraModel on the same random backbone, with the same random factors."""
    seed_everything(0)
    ours = PHAModule(
        PHAConfig(
            backbone=backbone,
            tasks=TASKS,
            method="lora",
            backbone_init="random",
            lora_rank=4,
            lora_alpha=12.0,
            lora_dropout=dropout,
            lora_targets=list(targets),
            chunk_cost_tokens=None,
        )
    )
    seed_everything(0)
    base = load_backbone(backbone, "random")  # the same draws: the same frozen weights
    family = ours.model.family
    config = LoraConfig(r=4, lora_alpha=12.0, lora_dropout=dropout, target_modules=PEFT_TARGETS[(family, targets)])
    theirs = get_peft_model(base, config)
    sites = [(name, m) for name, m in ours.model.backbone.named_modules() if isinstance(m, LoRALinear)]
    assert len(sites) == len(ours.model.shared_adapters) > 0
    with torch.no_grad():
        for name, site in sites:
            torch.testing.assert_close(site.base.weight, base.get_submodule(name).base_layer.weight, rtol=0, atol=0)
            site.update.a.weight.normal_(0, 0.3)
            site.update.b.weight.normal_(0, 0.3)  # non-zero B: the update acts and A gets gradients
            peft_site = theirs.base_model.model.get_submodule(name)
            peft_site.lora_A["default"].weight.copy_(site.update.a.weight)
            peft_site.lora_B["default"].weight.copy_(site.update.b.weight)
    return ours, theirs


@pytest.mark.parametrize(
    ("backbone", "targets"),
    [("tiny_bert", ("query", "value")), ("tiny_bert", ("output", "ffn_out")), ("tiny_t5", tuple(ALL_TARGETS))],
)
def test_shared_lora_equals_peft_lora_model(
    backbone: str, targets: tuple[str, ...], request: pytest.FixtureRequest
) -> None:
    """Same outputs and same factor gradients as peft, in training mode with dropout (same seed:
    the same masks, as both draw them in the same order)."""
    path = request.getfixturevalue(backbone)
    ours, theirs = lora_pair(path, targets, dropout=0.2)
    ours.train(), theirs.train()
    batch = batch_for(path)
    torch.manual_seed(1)
    if ours.model.family == "seq2seq":
        got = ours(batch)["lm_logits"]
        decoder_input_ids = theirs.base_model.model._shift_right(batch["labels"])
        torch.manual_seed(1)
        expected = theirs(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids
        ).logits
    else:
        got = ours(batch)["pooled"]
        torch.manual_seed(1)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        expected = masked_mean(theirs(**inputs).last_hidden_state, batch["attention_mask"])
    torch.testing.assert_close(got, expected, **FLOAT32_PATHS)  # another library: its own kernel path
    (got.square().sum()).backward()
    (expected.square().sum()).backward()
    for name, site in ((n, m) for n, m in ours.model.backbone.named_modules() if isinstance(m, LoRALinear)):
        peft_site = theirs.base_model.model.get_submodule(name)
        assert site.update.a.weight.grad.abs().sum() > 0
        torch.testing.assert_close(
            site.update.a.weight.grad, peft_site.lora_A["default"].weight.grad, rtol=1e-5, atol=1e-7
        )
        torch.testing.assert_close(
            site.update.b.weight.grad, peft_site.lora_B["default"].weight.grad, rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("method", ["lora", "pha", "hyperformer", "hyperdecoder"])
@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_t5"])
def test_lora_model_starts_exactly_as_the_backbone(method: str, backbone: str, request: pytest.FixtureRequest) -> None:
    """B = 0 (shared, and the generator's B head): bit-identical outputs to the bare backbone."""
    path = request.getfixturevalue(backbone)
    seed_everything(0)
    model = PHAModule(
        PHAConfig(
            backbone=path,
            tasks=TASKS,
            method=method,
            adapter_kind="lora",
            backbone_init="random",
            lora_targets=ALL_TARGETS,
            chunk_cost_tokens=None,
        )
    ).eval()
    seed_everything(0)
    base = load_backbone(path, "random").eval()
    batch = batch_for(path)
    with torch.no_grad():
        if model.model.family == "seq2seq":
            decoder_input_ids = base._shift_right(batch["labels"])
            expected = base(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                decoder_input_ids=decoder_input_ids,
            ).logits
            torch.testing.assert_close(model(batch)["lm_logits"], expected, rtol=0, atol=0)
        else:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            expected = masked_mean(base(**inputs).last_hidden_state, batch["attention_mask"])
            torch.testing.assert_close(model(batch)["pooled"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_t5"])
def test_health_reports_each_blocks_lora_update_against_its_frozen_output(
    backbone: str, request: pytest.FixtureRequest
) -> None:
    """``lora_to_base`` per block: ``sqrt(Σ‖scaling·B·A·x‖² / Σ‖W·x‖²)`` over the block's sites and
    real tokens, the factors applied by hand; T5's cross-attention keys and values read the input's tokens."""
    path = request.getfixturevalue(backbone)
    seed_everything(0)
    model = PHAModule(
        PHAConfig(backbone=path, tasks=TASKS, adapter_kind="lora", backbone_init="random", lora_targets=ALL_TARGETS)
    ).eval()
    for head in model.model.hypernetwork.b_heads:
        head.init_uniform(0.1)
    with torch.no_grad():
        for shared in model.model.shared_adapters:
            shared.b.weight.normal_(0.0, 0.1)
    batch = batch_for(path)
    report = health_report(model.model, [batch])

    blocks = backbone_blocks(model.model.backbone, model.model.family)
    inputs: list[tuple[int, LoRALinear, torch.Tensor]] = []
    handles = [
        site.register_forward_hook(lambda m, inp, _o, b=b: inputs.append((b, m, inp[0])))
        for b, block in enumerate(blocks)
        for site in block.modules()
        if isinstance(site, LoRALinear)
    ]
    with torch.no_grad():
        model(batch)
        weights = model.model.generated_weights(batch["task_ids"])
    for handle in handles:
        handle.remove()
    source = batch["attention_mask"].bool()
    target = batch["labels"] != -100 if model.model.family == "seq2seq" else None
    assert target is None or target.shape != source.shape  # the shape names which tokens a site reads
    sums = torch.zeros(len(blocks), 2, dtype=torch.float64)
    for block, site, x in inputs:
        if isinstance(site.update, GeneratedLoRAUpdate):
            a = weights.a[site.update.shape_set][weights.group_of, site.update.index]  # (B, r, d_in)
            b = weights.b[site.update.shape_set][weights.group_of, site.update.index]  # (B, d_out, r)
            update = torch.einsum("btr,bor->bto", torch.einsum("btd,brd->btr", x, a), b)
        else:
            update = x @ site.update.a.weight.T @ site.update.b.weight.T
        mask = source if x.shape[:2] == source.shape else target
        sums[block, 0] += (site.scaling * update)[mask].double().pow(2).sum()
        sums[block, 1] += site.base(x)[mask].double().pow(2).sum()
    expected = (sums[:, 0] / sums[:, 1]).sqrt().tolist()
    assert report["adapter_to_residual"] == []
    assert report["lora_to_base"] == pytest.approx(expected, rel=1e-4)
    assert min(expected) > 1e-3  # every block's update is non-zero, so the check has teeth


D_IN, D_OUT, R = 12, 20, 3
SITE_SHAPES = [(D_IN, D_IN), (D_IN, D_OUT), (D_IN, D_IN), (D_OUT, D_IN)]


def generator() -> tuple[LoRAHyperNetwork, PrototypeTable]:
    torch.manual_seed(0)
    hyper = LoRAHyperNetwork(SITE_SHAPES, R)
    for head in hyper.b_heads:
        head.init_uniform(0.5)  # B = 0 would hide a wrong grouping
    return hyper.double(), PrototypeTable(4, 64).double()


def reference_site(hyper: LoRAHyperNetwork, cond: torch.Tensor, x: torch.Tensor, site: int) -> torch.Tensor:
    """Every example's factors generated on their own, applied one example at a time."""
    shape_set, index = hyper_slot(hyper, site)
    rows = []
    for i in range(len(x)):
        w = hyper(cond[i : i + 1], torch.zeros(1, dtype=torch.long))
        rows.append(F.linear(F.linear(x[i], w.a[shape_set][0, index]), w.b[shape_set][0, index]))
    return torch.stack(rows)


def hyper_slot(hyper: LoRAHyperNetwork, site: int) -> tuple[int, int]:
    shape_set = next(k for k, sites in enumerate(hyper.sites_of) if site in sites)
    return shape_set, hyper.sites_of[shape_set].index(site)


@pytest.mark.parametrize("site", [1, 3])
# 40 rows: over GATHER_MAX_ROWS, sorted into groups instead of gathered
@pytest.mark.parametrize("task_ids", [[2, 0, 2, 1, 0, 3, 3, 2], [1, 1, 1], [3, 1, 0, 2, 2] * 8])
def test_grouped_lora_equals_per_example_forward_and_gradients(task_ids: list[int], site: int) -> None:
    ids = torch.tensor(task_ids)
    hyper, protos = generator()
    d_in = SITE_SHAPES[site][0]
    x = torch.randn(len(ids), 5, d_in, dtype=torch.float64, requires_grad=True)
    tasks, group_of = torch.unique(ids, return_inverse=True)
    out = apply_lora_grouped(x, hyper(protos.weight[tasks], group_of), *hyper_slot(hyper, site))
    params = [x, protos.weight, *hyper.parameters()]
    grads = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    ref = reference_site(hyper, protos.weight[ids], x, site)
    ref_grads = torch.autograd.grad(ref.square().sum(), params, allow_unused=True)
    # float64 so that only summation order differs: equal to rounding
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for got, expected in zip(grads, ref_grads):
        if expected is None:  # another shape set's heads
            assert got is None
        else:
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_per_example_lora_and_beams_equal_a_loop() -> None:
    """HyperDecoder's path: one factor set per example (batched matmuls), and generate()'s beam copies."""
    hyper, _ = generator()
    cond = torch.randn(5, 64, dtype=torch.float64)
    x = torch.randn(5, 3, D_OUT, dtype=torch.float64)
    context = AdapterContext()
    update = GeneratedLoRAUpdate(context, *hyper_slot(hyper, 3))
    with context.use(hyper(cond)):
        out = update(x)
        beams = update(x.repeat_interleave(2, dim=0))
    expected = reference_site(hyper, cond, x, 3)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(beams, expected.repeat_interleave(2, dim=0), rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="generated LoRA site 0 of shape set 2 ran without generated weights"):
        update(x)


def test_generated_a_starts_like_a_shared_a_and_b_at_zero() -> None:
    torch.manual_seed(0)
    hyper = LoRAHyperNetwork([(384, 384)], rank=8)
    w = hyper(torch.randn(4, 64))
    assert torch.count_nonzero(w.b[0]) == 0
    # a shared A is U(±1/sqrt(d_in)): standard deviation 1/sqrt(3·d_in)
    assert w.a[0].std().item() == pytest.approx((3 * 384) ** -0.5, rel=0.05)
    assert [h.multiplier for h in hyper.heads()] == [1 / 64, 1 / 64]


def test_eval_cache_serves_the_generated_lora(tiny_bert: str) -> None:
    model = PHAModule(PHAConfig(backbone=tiny_bert, tasks=TASKS, adapter_kind="lora", backbone_init="random")).eval()
    for head in model.model.hypernetwork.b_heads:
        head.init_uniform(0.1)
    ids = torch.tensor([3, 1, 3, 0])
    with torch.no_grad():
        cached = model.model.generated_weights(ids)
        again = model.model.generated_weights(ids)
    fresh = model.model.generated_weights(ids)
    assert again.a[0] is not None and torch.equal(cached.a[0], again.a[0])  # served from the cache
    for name, part in fresh.parts().items():
        # the cache generates one task at a time without autograd, ``fresh`` the batch's three tasks
        # at once with it: the same weights, along other kernels (1.3e-7 apart on an Intel Xeon)
        torch.testing.assert_close(cached.parts()[name], part.detach(), **FLOAT32_PATHS)
    torch.testing.assert_close(cached.group_of, fresh.group_of)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"lora_rank": 0}, "model.arch.lora_rank must be >= 1, got 0"),
        ({"lora_alpha": -1.0}, "model.arch.lora_alpha must be > 0, got -1.0"),
        ({"lora_dropout": 1.0}, r"model.arch.lora_dropout must be in \[0, 1\), got 1.0"),
        (
            {"lora_targets": ["query", "qv"]},
            r"lora_targets must be distinct names from \['query', .*'ffn_out'\], got \['query', 'qv'\]",
        ),
        ({"adapter_kind": "prefix"}, r"unknown model.arch.adapter_kind 'prefix'; valid: \['bottleneck', 'lora'\]"),
        (
            {"adapter_kind": "lora", "method": "task_adapter"},
            "adapter_kind 'lora' is not available for method 'task_adapter'",
        ),
    ],
)
def test_bad_lora_settings_are_named(setting: dict, message: str, tiny_bert: str) -> None:
    with pytest.raises(ValueError, match=message):
        PHAModule(PHAConfig(backbone=tiny_bert, tasks=TASKS, backbone_init="random", **setting))


def test_pha_lora_checkpoint_bundle_and_predict_round_trip(tmp_path) -> None:
    """Checkpoints hold only the trainable weights; the checkpoint, its bundle (with and without
    precomputed LoRA factors) and the trained model predict the same; raw examples without a task
    are routed by the retriever."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from pha_lightning import PHAModel
    from pha_lightning.cli.export import export_checkpoint
    from pha_lightning.training.scripting import quiet_trainer

    seed_everything(0)
    data = PHADataModule(tasks=TASKS, n_train=16, batch_size=8, eval_batch_size=16, max_source_length=32)
    model = PHAModule(
        PHAConfig(tasks=TASKS, adapter_kind="lora"), optim=OptimConfig(learning_rate=1e-2, warmup_steps=0)
    )
    trainer = quiet_trainer(
        max_steps=3,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )
    trainer.fit(model, datamodule=data)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert set(saved) == {f"model.{n}" for n, p in model.model.named_parameters() if p.requires_grad}
    assert any(k.startswith("model.hypernetwork.b_heads.") for k in saved) and not any(
        k.startswith("model.arch.backbone.") for k in saved
    )
    assert model.model.hypernetwork.b_heads[0].weight.abs().sum() > 0  # trained: the generated B is no longer zero

    model.eval()
    loaded = PHAModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    export_checkpoint(ckpt, tmp_path / "bundle", precompute=True)
    served = PHAModel.from_pretrained(tmp_path / "bundle")
    assert set(served.generated_table) == {"generated.lora_a0", "generated.lora_b0"}
    plain = PHAModel.from_pretrained(tmp_path / "bundle", use_precomputed_adapters=False)
    data.setup("validate")
    batch = next(iter(data.train_dataloader()))  # mixed tasks
    expected = model.model.predict_values(batch)
    for other in (loaded.model, served, plain):
        torch.testing.assert_close(other.predict_values(batch), expected, rtol=0, atol=0)
    rows = served.predict([{"sentence": "the red cat near the park was lovely"}])
    assert rows[0]["routed"] is True and rows[0]["task"] in TASKS
    transfer_from_lora_checkpoint(str(ckpt))


def transfer_from_lora_checkpoint(ckpt: str) -> None:
    """Few-shot transfer takes the source's adapter kind and LoRA settings; top-1 init gives the
    new task the retrieved source task's generated LoRA factors."""
    from pha_lightning.training.transfer import TransferConfig, initialize_new_tasks

    target = "synth_polarity_heldout"
    model = PHAModule(PHAConfig(tasks=[target]), transfer=TransferConfig(ckpt, init="top1")).eval()
    assert (model.model.layout.kind, model.hparams.arch["lora_targets"]) == (
        "lora",
        None,
    )  # None: the default query, value
    support = PHADataModule(tasks=[target], batch_size=8, max_source_length=32, n_train=8, seed=3)
    support.setup("fit")
    best = initialize_new_tasks(model.model, model.transfer, support.task_dataloaders("train"))[target][0][0]
    with torch.no_grad():
        new, source = (model.model.generated_weights(torch.tensor([t])) for t in (0, 1 + TASKS.index(best)))
    for name, part in new.parts().items():
        torch.testing.assert_close(part, source.parts()[name], rtol=0, atol=0)
