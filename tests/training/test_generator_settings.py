"""L_apart (``model.loss.lambda_apart``), L_ratio (``model.loss.lambda_adapter_ratio``) and the
hypernetwork heads' own weight decay (``model.optim.hypernet_head_weight_decay``): against
hand-computed formulas and the health report, off by default."""

from __future__ import annotations

import itertools

import pytest
import torch
from lightning.pytorch import seed_everything
from torch.nn import functional as F

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.errors import ConfigError
from pha_lightning.model.adapters import GeneratedWeights
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.lora import GeneratedLoRA
from pha_lightning.training.health import between_task_spread, health_report
from pha_lightning.training.losses import between_task_similarity
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.settings import LossConfig, OptimConfig
from pha_lightning.training.system import PHAModule

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


def hand_similarity(vector_sets: list[torch.Tensor]) -> torch.Tensor:
    """Per site of every set, the mean cosine over task pairs (one pair at a time), floored at 0;
    then the mean over sites."""
    per_site = [
        torch.stack(
            [
                F.cosine_similarity(vectors[s, site], vectors[t, site], dim=0)
                for s, t in itertools.combinations(range(vectors.shape[0]), 2)
            ]
        ).mean()
        for vectors in vector_sets
        for site in range(vectors.shape[1])
    ]
    return torch.stack(per_site).clamp_min(0.0).mean()


def test_between_task_similarity_against_pairwise_cosines() -> None:
    torch.manual_seed(0)
    tasks, layers, d, r = 4, 3, 5, 2
    down_w, up_w = torch.randn(tasks, layers, d, r), torch.randn(tasks, layers, r, d)
    weights = GeneratedWeights(down_w, torch.randn(tasks, layers, r), up_w, torch.randn(tasks, layers, d),
                               group_of=torch.arange(tasks))  # fmt: skip
    flat = torch.cat([down_w.flatten(2), up_w.flatten(2)], dim=2)  # the matrices, not the biases
    torch.testing.assert_close(between_task_similarity(weights), hand_similarity([flat]))
    down_w[:, 0] += 3.0 * torch.randn(1, d, r)  # layer 0 shared: similar; the others unrelated (~0, some < 0)
    up_w[:, 0] += 3.0 * torch.randn(1, r, d)
    flat = torch.cat([down_w.flatten(2), up_w.flatten(2)], dim=2)
    assert float(hand_similarity([flat[:, :1]])) > 0.5
    torch.testing.assert_close(between_task_similarity(weights), hand_similarity([flat]))

    opposite = GeneratedWeights(*(torch.cat([t[:1], -t[:1]]) for t in (down_w, weights.down_b, up_w, weights.up_b)),
                                group_of=torch.arange(2))  # fmt: skip
    assert float(between_task_similarity(opposite)) == 0.0  # anti-parallel adapters are not rewarded: cos −1 → 0

    # LoRA: two shape sets of different sizes, every site counted once
    a = (torch.randn(tasks, 2, r, d), torch.randn(tasks, 1, r, 7))
    b = (torch.randn(tasks, 2, d, r), torch.randn(tasks, 1, 3, r))
    lora = GeneratedLoRA(a, b, group_of=torch.arange(tasks))
    sets = [torch.cat([a[k].flatten(2), b[k].flatten(2)], dim=2) for k in range(2)]
    torch.testing.assert_close(between_task_similarity(lora), hand_similarity(sets))


def test_between_task_similarity_is_the_health_spread_for_equal_norms() -> None:
    """For adapters of equal norms, ``spread² = (T−1)/T·(1 − L_apart)``: the term acts on exactly the
    number the health report calls the between-task spread."""
    torch.manual_seed(1)
    tasks = 5
    shared = torch.randn(1, 1, 6, 4)
    down_w = F.normalize((shared + 0.5 * torch.randn(tasks, 1, 6, 4)).flatten(1), dim=1).view(tasks, 1, 6, 4)
    weights = GeneratedWeights(down_w, torch.zeros(tasks, 1, 4), torch.zeros(tasks, 1, 4, 6), torch.zeros(tasks, 1, 6),
                               group_of=torch.arange(tasks))  # fmt: skip
    similarity = float(between_task_similarity(weights))
    spread = between_task_spread(down_w.flatten(1))
    assert spread**2 == pytest.approx((tasks - 1) / tasks * (1 - similarity), rel=1e-6)
    one_task = GeneratedWeights(down_w[:1], weights.down_b[:1], weights.up_w[:1], weights.up_b[:1], torch.zeros(1))
    with pytest.raises(ValueError, match="at least 2 tasks, got 1"):
        between_task_similarity(one_task)


@pytest.fixture(scope="module")
def data() -> PHADataModule:
    dm = PHADataModule(tasks=TASKS, batch_size=16, max_source_length=24, temperature=2.0)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def batch(data: PHADataModule) -> dict[str, torch.Tensor]:
    return next(iter(data.train_dataloader()))


def system(tiny_bert: str, loss: LossConfig = LossConfig(), optim: OptimConfig = OptimConfig(), **arch) -> PHAModule:
    seed_everything(0)
    return PHAModule(PHAConfig(backbone=tiny_bert, backbone_init="random", tasks=TASKS, **arch), loss, optim)


def test_lambda_apart_adds_the_term_over_every_task(tiny_bert: str, batch: dict[str, torch.Tensor]) -> None:
    released = system(tiny_bert, hypernet_init_scale=10.0).eval().loss_terms(batch)  # eval: no dropout draws
    assert set(released) == {"ce", "l_ir", "l_pro", "loss"}  # default: no L_apart, the released loss
    torch.testing.assert_close(released["loss"], released["ce"] + 0.1 * released["l_ir"] + 0.1 * released["l_pro"])

    apart = system(tiny_bert, LossConfig(lambda_apart=0.5), hypernet_init_scale=10.0).eval()
    terms = apart.loss_terms(batch)
    expected = between_task_similarity(apart.model.generated_weights(torch.arange(len(TASKS))))
    torch.testing.assert_close(terms["l_apart"], expected)
    torch.testing.assert_close(terms["loss"], released["loss"] + 0.5 * expected)  # same model, same seed
    assert 0.5 < float(expected.detach()) < 1.0  # tasks' adapters start alike: there is something to push apart

    apart.zero_grad()
    terms["l_apart"].backward()  # the term alone reaches the prototypes and the hypernetwork
    assert apart.model.prototypes.weight.grad.abs().sum() > 0
    assert apart.model.hypernetwork.up_w.weight.grad.abs().sum() > 0


def loud_system(tiny_bert: str, adapter_kind: str, loss: LossConfig = LossConfig()) -> PHAModule:
    """Generated adapters far from zero (a large init; LoRA: ``B`` heads' biases drawn too), chunked per length."""
    model = system(tiny_bert, loss, hypernet_init_scale=10.0, chunk_cost_tokens=0, adapter_kind=adapter_kind)
    if adapter_kind == "lora":
        with torch.no_grad():
            for head in model.model.hypernetwork.b_heads:
                head.bias.normal_(0.0, 0.5)
    return model.eval()  # eval: no dropout draws, the same numbers in both systems


@pytest.mark.parametrize("adapter_kind", ["bottleneck", "lora"])
def test_lambda_adapter_ratio_is_the_health_reports_loudness_of_generated_blocks(
    tiny_bert: str, batch: dict[str, torch.Tensor], adapter_kind: str
) -> None:
    """L_ratio = mean over generated blocks of (adapter/residual)², the health report's number
    (LoRA: update/frozen output), measured through the chunked training forward."""
    model = loud_system(tiny_bert, adapter_kind, LossConfig(lambda_adapter_ratio=2.0))
    terms = model.loss_terms(batch)
    report = health_report(model.model, [batch])
    ratios = report["lora_to_base" if adapter_kind == "lora" else "adapter_to_residual"]
    generated = torch.tensor(ratios[model.model.split_layer :], dtype=torch.float64)
    assert float(generated.min()) > 1e-3  # loud enough for the comparison to have teeth
    assert float(terms["l_ratio"].detach()) == pytest.approx(float(generated.square().mean()), rel=1e-4)
    released = loud_system(tiny_bert, adapter_kind).loss_terms(batch)
    assert "l_ratio" not in released  # default: the released loss
    torch.testing.assert_close(terms["loss"], released["loss"] + 2.0 * terms["l_ratio"])

    model.zero_grad()
    terms["l_ratio"].backward()  # it quiets the generator: every head of the hypernetwork gets its gradient
    assert all(p.grad.abs().sum() > 0 for head in model.model.hypernetwork.heads() for p in head.parameters())


def test_hypernet_head_weight_decay_decays_the_heads_alone(tiny_bert: str) -> None:
    released = system(tiny_bert)
    trainable = [p for p in released.parameters() if p.requires_grad]
    groups = released.parameter_groups()
    assert len(groups) == len(trainable) and all(g is p for g, p in zip(groups, trainable))  # one group, as released

    model = system(tiny_bert, optim=OptimConfig(weight_decay=0.01, hypernet_head_weight_decay=0.5))
    heads = {id(p) for head in model.model.hypernetwork.heads() for p in head.parameters()}
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=0.1, weight_decay=0.01)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None  # no gradient step: the decay alone
    optimizer.step()
    for name, p in model.named_parameters():
        if p.requires_grad:
            factor = 1 - 0.1 * (0.5 if id(p) in heads else 0.01)
            torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)
    assert len(heads) == 8  # weight and bias of down_w, down_b, up_w, up_b


def test_generator_settings_name_bad_values(tiny_bert: str) -> None:
    with pytest.raises(ConfigError, match="model.loss.lambda_apart must be >= 0, got -0.1"):
        LossConfig(lambda_apart=-0.1)
    with pytest.raises(ConfigError, match=r"model.optim.hypernet_head_weight_decay must be >= 0 or None, got -1"):
        OptimConfig(hypernet_head_weight_decay=-1)
    with pytest.raises(ConfigError, match="lambda_apart 0.1 .*method 'adapter' on 4 task"):
        system(tiny_bert, LossConfig(lambda_apart=0.1), method="adapter")
    with pytest.raises(ConfigError, match="lambda_apart 0.1 .*method 'hyperdecoder'"):
        system(tiny_bert, LossConfig(lambda_apart=0.1), method="hyperdecoder")
    with pytest.raises(ConfigError, match="lambda_adapter_ratio 0.1 acts on the hypernetwork.*'adapter' has none"):
        system(tiny_bert, LossConfig(lambda_adapter_ratio=0.1), method="adapter")
    with pytest.raises(ConfigError, match="hypernet_head_weight_decay 0.1 acts on the hypernetwork.*'task_adapter'"):
        system(tiny_bert, optim=OptimConfig(hypernet_head_weight_decay=0.1), method="task_adapter")


def test_every_mechanism_trains_through_the_trainer_and_logs_its_terms(tiny_bert: str, data: PHADataModule) -> None:
    """Two steps of ``fit`` with all four mechanisms: the optimiser has the heads' own group, the
    terms are logged as ``train/l_ratio`` and ``train/l_apart``, the output scale has moved off 0."""
    model = system(
        tiny_bert,
        LossConfig(lambda_adapter_ratio=0.1, lambda_apart=0.1),
        OptimConfig(learning_rate=1e-2, warmup_steps=0, weight_decay=0.01, hypernet_head_weight_decay=1.0),
        generated_output_scale="task_layer",
    )
    trainer = quiet_trainer(max_steps=2, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    groups = trainer.optimizers[0].param_groups
    heads = [p for head in model.model.hypernetwork.heads() for p in head.parameters()]
    assert [g["weight_decay"] for g in groups] == [0.01, 1.0]
    assert len(groups[1]["params"]) == len(heads) and all(a is b for a, b in zip(groups[1]["params"], heads))
    assert {"train/l_ratio", "train/l_apart", "train/ce"} <= set(trainer.callback_metrics)
    assert model.model.hypernetwork.output_scale.head.bias.abs().item() > 0
