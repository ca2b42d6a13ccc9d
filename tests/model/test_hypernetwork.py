"""Grouped (once-per-task) adapter generation against a per-example reference."""

from __future__ import annotations

import math

import pytest
import torch
from tolerances import FLOAT64_PATHS

from pha_lightning.model.adapters import AdapterContext, GeneratedAdapter, apply_bottleneck, apply_grouped
from pha_lightning.model.hypernetwork import HyperNetwork
from pha_lightning.model.prototypes import PrototypeTable

D_MODEL, R, LAYERS = 24, 8, 3


def reference_per_example(
    hyper: HyperNetwork, protos: PrototypeTable, x: torch.Tensor, task_ids: torch.Tensor, layer: int
) -> torch.Tensor:
    """Generate every example's weights on its own and apply them one example at a time."""
    rows = []
    for i, task in enumerate(task_ids.tolist()):
        w = hyper(protos.weight[task : task + 1], torch.zeros(1, dtype=torch.long))
        rows.append(apply_bottleneck(x[i], w.down_w[0, layer], w.down_b[0, layer], w.up_w[0, layer], w.up_b[0, layer]))
    return torch.stack(rows)


def grouped(
    hyper: HyperNetwork, protos: PrototypeTable, x: torch.Tensor, task_ids: torch.Tensor, layer: int
) -> torch.Tensor:
    tasks, group_of = torch.unique(task_ids, return_inverse=True)
    return apply_grouped(x, hyper(protos.weight[tasks], group_of), layer)


def _models(seed: int = 0) -> tuple[HyperNetwork, PrototypeTable]:
    torch.manual_seed(seed)
    hyper = HyperNetwork(D_MODEL, R, LAYERS, init_scale=1.0)  # large init: differences would show
    return hyper.double(), PrototypeTable(4, 64).double()


# 40 rows: over GATHER_MAX_ROWS, so the rows are sorted into groups instead of gathered
@pytest.mark.parametrize("task_ids", [[2, 0, 2, 1, 0, 3, 3, 2], [1, 1, 1], [3, 0], [3, 1, 0, 2, 2] * 8])
def test_grouped_generation_equals_per_example_forward_and_gradients(task_ids: list[int]) -> None:
    ids = torch.tensor(task_ids)
    hyper, protos = _models()
    x = torch.randn(len(ids), 5, D_MODEL, dtype=torch.float64, requires_grad=True)

    out = grouped(hyper, protos, x, ids, layer=1)
    grads = torch.autograd.grad(out.square().sum(), [x, protos.weight, *hyper.parameters()])
    ref = reference_per_example(hyper, protos, x, ids, layer=1)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, protos.weight, *hyper.parameters()])

    # float64 so that only summation order differs: equal to rounding
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_hypernetwork_runs_once_per_distinct_task() -> None:
    hyper, protos = _models()
    seen = []
    hyper.trunk.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape))
    ids = torch.tensor([0, 2, 2, 0, 0, 2])
    tasks, group_of = torch.unique(ids, return_inverse=True)
    weights = hyper(protos.weight[tasks], group_of)
    assert seen == [torch.Size([2, LAYERS, 128])]  # 2 tasks × all layers in one call
    assert weights.down_w.shape == (2, LAYERS, D_MODEL, R)


def test_generated_adapter_layer_reads_context_and_expands_beams() -> None:
    hyper, protos = _models()
    context = AdapterContext()
    adapter = GeneratedAdapter(context, layer=2)
    ids = torch.tensor([0, 3])
    x = torch.randn(4, 2, D_MODEL, dtype=torch.float64)  # each example repeated twice, as generate() does for beams
    tasks, group_of = torch.unique(ids, return_inverse=True)
    with context.use(hyper(protos.weight[tasks], group_of)):
        out = adapter(x)
    ref = reference_per_example(hyper, protos, x, ids.repeat_interleave(2), layer=2)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="layer 2 ran without generated weights"):
        adapter(x)


@pytest.mark.parametrize("calibration", ["width", "none"])
def test_head_initialisation_follows_method_bounds(calibration: str) -> None:
    """The effective head weights (stored weight × multiplier) follow method.md's bounds either way."""
    hyper = HyperNetwork(d_model=96, bottleneck=16, num_layers=2, calibration=calibration)
    scale, g = 1e-3, 64
    effective = {
        name: head.weight * head.multiplier for name, head in zip(("down_w", "down_b", "up_w", "up_b"), hyper.heads())
    }
    assert effective["down_w"].abs().max() <= scale * math.sqrt(3 / (g * 96)) * (1 + 1e-6)
    assert effective["up_w"].abs().max() <= scale * math.sqrt(3 / (g * 16)) * (1 + 1e-6)
    assert effective["up_b"].abs().max() <= scale * math.sqrt(3 / g) * (1 + 1e-6)
    # the bound is actually reached (uniform init, not a much smaller one)
    assert effective["down_w"].abs().max() > 0.9 * scale * math.sqrt(3 / (g * 96))
    assert hyper.down_w.multiplier == (1 / g if calibration == "width" else 1.0)
    for head in hyper.heads():
        assert torch.count_nonzero(head.bias) == 0
    assert hyper.trunk[-1].eps == 1e-6


def test_calibrated_heads_compute_the_released_function_at_init() -> None:
    """Same seed, same draws: the calibrated network generates the released weights (to rounding),
    and the released parametrisation is plain ``W·g + b`` as in method.md."""
    torch.manual_seed(0)
    released = HyperNetwork(D_MODEL, R, LAYERS, calibration="none").double()
    torch.manual_seed(0)
    calibrated = HyperNetwork(D_MODEL, R, LAYERS, calibration="width").double()
    cond = torch.randn(3, 64, dtype=torch.float64)
    old, new = released(cond), calibrated(cond)
    for part in ("down_w", "down_b", "up_w", "up_b"):
        torch.testing.assert_close(getattr(new, part), getattr(old, part), rtol=1e-9, atol=1e-15)
    g = released.trunk(
        torch.cat([cond[:, None].expand(-1, LAYERS, -1), released.layer_embeddings.weight[None].expand(3, -1, -1)], -1)
    )
    # nn.Linear adds its bias inside the product (addmm); the hand-written product adds it after
    torch.testing.assert_close(old.up_b, g @ released.up_b.weight.T + released.up_b.bias, **FLOAT64_PATHS)


def test_unknown_calibration_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown hypernet_calibration 'muP'; valid: \['width', 'none'\]"):
        HyperNetwork(D_MODEL, R, LAYERS, calibration="muP")


def test_per_example_generation_equals_a_loop() -> None:
    """HyperDecoder's path: one weight set per example, applied as one batched matmul."""
    hyper, _ = _models()
    cond = torch.randn(5, 64, dtype=torch.float64)
    x = torch.randn(5, 3, D_MODEL, dtype=torch.float64)
    weights = hyper(cond)
    assert weights.per_example
    out = apply_grouped(x, weights, layer=0)
    rows = []
    for i in range(5):
        w = hyper(cond[i : i + 1], torch.zeros(1, dtype=torch.long))
        rows.append(apply_bottleneck(x[i], w.down_w[0, 0], w.down_b[0, 0], w.up_w[0, 0], w.up_b[0, 0]))
    torch.testing.assert_close(out, torch.stack(rows), rtol=1e-10, atol=1e-12)
    beams = x.repeat_interleave(2, dim=0)  # generate() with 2 beams: copies are contiguous
    torch.testing.assert_close(apply_grouped(beams, weights, layer=0), torch.stack(rows).repeat_interleave(2, dim=0))
