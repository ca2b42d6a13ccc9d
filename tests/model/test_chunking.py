"""Length-aware execution (pha_lightning/model/chunking.py): chunked and padded batches give the same
losses and gradients, for every adapter method, on encoder-only and T5 backbones."""

from __future__ import annotations

import pytest
import torch

from pha_lightning.model.chunking import partition, plan_chunks
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.system import PHAModule

pytestmark = pytest.mark.slow  # runs every method on MiniLM and T5

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]
METHODS = ["pha", "adapter", "hyperformer", "hyperdecoder", "task_adapter"]
#: the multi-task LoRA methods (their banks' B drawn non-zero, so their updates matter)
LORA_BANK_METHODS = ["task_lora", "poly", "mhr", "mtl_lora", "arrow"]
#: lengths of a batch like the local GLUE mix: many short examples, a few long ones
LENGTHS = [12, 9, 30, 64, 11, 14, 52, 7, 25, 40, 13, 70, 10, 28, 12, 33]


def mixed_batch(model: PHAModule, lengths: list[int]) -> dict[str, torch.Tensor]:
    """A right-padded mixed-task batch with the given input lengths (T5: targets of varied lengths)."""
    gen = torch.Generator().manual_seed(0)
    size, width = len(lengths), max(lengths)
    mask = (torch.arange(width) < torch.tensor(lengths).unsqueeze(1)).long()
    task_ids = torch.arange(size) % len(TASKS)
    targets = [
        float(torch.rand((), generator=gen) * 5)
        if model.model.task_objects[t].is_regression
        else float(torch.randint(model.model.task_objects[t].num_labels, (), generator=gen))
        for t in task_ids.tolist()
    ]
    batch = {
        "input_ids": torch.randint(5, 1000, (size, width), generator=gen) * mask,
        "attention_mask": mask,
        "task_ids": task_ids,
        "targets": torch.tensor(targets),
    }
    if model.model.family == "seq2seq":
        target_lengths = torch.tensor([1 + i % 4 for i in range(size)]).unsqueeze(1)
        labels = torch.randint(5, 1000, (size, 4), generator=gen)
        batch["labels"] = labels.masked_fill(torch.arange(4) >= target_lengths, -100)
    else:
        batch["token_type_ids"] = (torch.arange(width) >= torch.tensor(lengths).unsqueeze(1) // 2).long() * mask
    return batch


def losses_and_grads(model: PHAModule, batch: dict[str, torch.Tensor], cost: int | None) -> tuple[dict, dict]:
    """Loss terms and the gradient of every trainable parameter, with chunking set to ``cost``."""
    model.model.config.chunk_cost_tokens = cost
    model.zero_grad(set_to_none=True)
    terms = model.loss_terms(batch)
    terms["loss"].backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


def assert_same(reference: tuple[dict, dict], other: tuple[dict, dict], rtol: float) -> None:
    """Every loss term, and every parameter's gradient as a whole, agree to ``rtol`` (relative norm)."""
    for ref, oth in zip(reference, other):
        assert ref.keys() == oth.keys()
        for name in ref:
            error = (ref[name] - oth[name]).norm() / ref[name].norm().clamp_min(1e-30)
            assert error <= rtol, f"{name}: relative error {float(error):.2e}"


def equivalence_model(backbone: str, method: str, init: str, dtype: torch.dtype) -> PHAModule:
    """A model whose adapters matter (large init), without dropout (eval mode) so both paths are deterministic."""
    torch.manual_seed(0)
    model = PHAModule(
        PHAConfig(
            backbone=backbone,
            tasks=TASKS,
            method=method,
            backbone_init=init,
            hypernet_init_scale=1.0,
            shared_adapter_init_gain=1.0,
            adapter_dim=8,
        )
    )
    if model.model.lora_bank is not None:
        with torch.no_grad():
            for b in model.model.lora_bank.b:
                b.normal_(0.0, 0.3)
    return model.to(dtype).eval()


@pytest.mark.parametrize("method", METHODS + LORA_BANK_METHODS)
@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_t5"])
def test_chunked_matches_padded_in_float64(method: str, backbone: str, request: pytest.FixtureRequest) -> None:
    model = equivalence_model(request.getfixturevalue(backbone), method, "random", torch.float64)
    batch = mixed_batch(model, LENGTHS)
    assert len(plan_chunks(batch["attention_mask"], 0)) > 4  # the test exercises many chunks
    padded = losses_and_grads(model, batch, None)
    assert_same(padded, losses_and_grads(model, batch, 0), rtol=1e-12)
    assert_same(padded, losses_and_grads(model, batch, 16), rtol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_chunked_matches_padded_on_minilm_in_float32(method: str) -> None:
    model = equivalence_model("pypi:all-MiniLM-L6-v2", method, "pretrained", torch.float32)
    batch = mixed_batch(model, LENGTHS)
    assert_same(losses_and_grads(model, batch, None), losses_and_grads(model, batch, 0), rtol=1e-5)


def test_hypernetwork_runs_once_per_batch_not_per_chunk(tiny_bert: str) -> None:
    model = equivalence_model(tiny_bert, "pha", "random", torch.float32)
    calls = []
    model.model.hypernetwork.register_forward_hook(lambda *_: calls.append(1))
    batch = mixed_batch(model, LENGTHS)
    losses_and_grads(model, batch, 0)
    assert len(calls) == 1


def test_partition_is_optimal_and_covers_every_example() -> None:
    lengths = [5, 50, 6, 48, 7, 5, 49]
    assert partition(lengths, cost_tokens=0) == [[1], [6], [3], [4], [2], [0, 5]]  # no padding at all
    assert partition(lengths, cost_tokens=10) == [[1, 6, 3], [4, 2, 0, 5]]  # 3·50 + 4·7 + 2·10
    assert partition(lengths, cost_tokens=10_000) == [[1, 6, 3, 4, 2, 0, 5]]


def test_plan_runs_a_uniform_batch_whole_and_off_means_off() -> None:
    mask = torch.ones(8, 20, dtype=torch.long)
    assert plan_chunks(mask, 0) is None
    mask[:4, 10:] = 0
    assert plan_chunks(mask, None) is None
    chunks = plan_chunks(mask, 0)
    assert [(c.rows.tolist(), c.width) for c in chunks] == [([4, 5, 6, 7], 20), ([0, 1, 2, 3], 10)]
