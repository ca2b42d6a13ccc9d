"""Training health: the numbers that tell a healthy PHA run from a collapsed one.

A run collapses when its adapters (generated ones above all) grow until they drown the residual
stream and every example's pooled features line up on one axis, so the task heads see no
difference between examples. This module measures that on a few evaluation batches, with plain
PyTorch (the Lightning callback that schedules it is :class:`pha_lightning.training.callbacks.TrainingHealth`):

* per block, ``‖adapter output‖ / ‖residual stream‖`` (root-mean-square over real tokens), or
  for LoRA ``‖scaling·B·A·x‖ / ‖W·x‖`` over the block's LoRA sites;
* per layer, the Frobenius norm of the shared and of the generated adapter matrices, and the
  between-task spread of the generated ones (0: every task gets the same adapter);
* per task, how far its prototype moved from its initial value (relative to that value);
* per task, the share of the pooled features' variance on their first principal axis.

What the thresholds mean and which settings to look at is in docs/training_health.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from pha_lightning.model.adapters import site_vectors
from pha_lightning.model.backbone import adapter_sites, backbone_blocks, num_blocks
from pha_lightning.model.lora import LoRALinear, reads_encoder_states

if TYPE_CHECKING:
    from pha_lightning.model.pha import PHAModel


def feature_spread(features: Tensor) -> tuple[float, float]:
    """``(top-axis share, offset)`` of a set of feature vectors ``(N, d)``.

    The share of their variance on the first principal axis (1: every example lies on one line),
    and the norm of their mean over their RMS distance to it (large: the examples sit in a tight
    cloud far from the origin). Both large: the examples look alike to a head reading them.
    """
    features = features.double()
    centred = features - features.mean(0)
    variance = torch.linalg.svdvals(centred) ** 2
    total = variance.sum()
    share = float(variance[0] / total) if total > 0 else 1.0
    rms = centred.pow(2).sum(1).mean().sqrt()
    return share, float(features.mean(0).norm() / rms) if rms > 0 else float("inf")


def between_task_spread(weights: Tensor) -> float:
    """How different the rows of ``weights (T, n)`` (one flattened adapter per task) are:
    ``sqrt(mean_t ‖W_t − W̄‖²) / sqrt(mean_t ‖W_t‖²)``; 0 when every task gets the same weights,
    ≈ 1 when they are unrelated."""
    weights = weights.double()
    scale = weights.pow(2).sum(1).mean().sqrt()
    if scale == 0:
        return 0.0
    return float((weights - weights.mean(0)).pow(2).sum(1).mean().sqrt() / scale)


@dataclass
class _BlockSums:
    adapter: float | Tensor = 0.0
    residual: float | Tensor = 0.0


def token_masks(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """The real tokens of a batch's input ``(B, T)`` and of its target ``(B, T')`` (T5; else ``None``)."""
    return batch["attention_mask"], batch["labels"] != -100 if "labels" in batch else None


@dataclass
class ResidualProbe:
    """Accumulates ``Σ‖adapter(x)‖²`` and ``Σ‖residual‖²`` (or a LoRA update's and its frozen
    layer's output) over real tokens, per adapted block, as tensors: differentiable when the
    forward is (the generated-adapter loudness term), plain numbers under ``no_grad`` (reports)."""

    sums: list[_BlockSums]
    decoder_from: int  # blocks from this index on read decoder tokens (T5); len(sums) for encoders
    model: PHAModel  # its running_batch: the token masks of the (chunk of the) batch being run

    def ratios(self) -> list[float]:
        return [float(s.adapter / s.residual) ** 0.5 if s.residual else 0.0 for s in self.sums]

    def squared_ratios(self, blocks: range) -> Tensor:
        """``Σ‖adapter‖² / Σ‖residual‖²`` of ``blocks``, with their graph (the squares of :meth:`ratios`)."""
        sums = [self.sums[b] for b in blocks]
        return torch.stack([torch.as_tensor(s.adapter) / torch.as_tensor(s.residual).clamp_min(1e-12) for s in sums])

    def record(self, block: int, adapter_out: Tensor, residual: Tensor, source: bool | None = None) -> None:
        """Add one sublayer's sums; ``source``: it reads the input's tokens (default: the
        encoder's blocks do, the decoder's read the target's)."""
        source = block < self.decoder_from if source is None else source
        batch = self.model.running_batch
        mask = None if batch is None else token_masks(batch)[0 if source else 1]
        if mask is None or mask.shape != residual.shape[:2]:
            raise RuntimeError(
                f"health probe: block {block} saw hidden states of shape {tuple(residual.shape[:2])}, "
                f"not the batch's {None if mask is None else tuple(mask.shape)}"
            )
        weight = mask.to(residual.dtype).unsqueeze(-1)
        self.sums[block].adapter = self.sums[block].adapter + (adapter_out.float().pow(2) * weight).sum()
        self.sums[block].residual = self.sums[block].residual + (residual.float().pow(2) * weight).sum()


def _decoder_from(model: PHAModel, blocks: int) -> int:
    """The first block that reads the target's tokens (T5's first decoder block; ``blocks`` for encoders)."""
    return num_blocks(model.backbone, model.family)[0] if model.family == "seq2seq" else blocks


@contextmanager
def _removing(handles: list[RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def probe_residuals(model: PHAModel) -> Iterator[ResidualProbe]:
    """Hooks on every adapted block for the duration of the ``with`` block (no blocks: a LoRA model)."""
    sites = adapter_sites(model.backbone, model.family)
    probe = ResidualProbe([_BlockSums() for _ in sites], _decoder_from(model, len(sites)), model)
    handles = []
    for block, site in enumerate(sites):
        captured: dict[str, Tensor] = {}
        handles.append(site.adapter.register_forward_hook(lambda _m, _i, out, c=captured: c.__setitem__("out", out)))
        handles.append(
            site.register_forward_hook(
                lambda m, inputs, _o, b=block, c=captured: probe.record(b, c.pop("out"), m.residual_of(*inputs))
            )
        )
    with _removing(handles):
        yield probe


def _hook_lora_site(probe: ResidualProbe, block: int, source: bool, site: LoRALinear) -> list[RemovableHandle]:
    """Record ``site``'s update (its output minus its frozen layer's) against the frozen output."""
    captured: dict[str, Tensor] = {}

    def keep_base(_module: nn.Module, _inputs: tuple, out: Tensor) -> None:
        captured["base"] = out

    def record(_module: nn.Module, _inputs: tuple, out: Tensor) -> None:
        base = captured.pop("base").float()
        probe.record(block, out.float() - base, base, source)

    return [site.base.register_forward_hook(keep_base), site.register_forward_hook(record)]


@contextmanager
def probe_lora(model: PHAModel) -> Iterator[ResidualProbe]:
    """Hooks on every LoRA site, summed per block (no blocks: a model without LoRA)."""
    blocks = backbone_blocks(model.backbone, model.family) if model.layout.kind == "lora" else []
    sites = [[(name, m) for name, m in block.named_modules() if isinstance(m, LoRALinear)] for block in blocks]
    probe = ResidualProbe([_BlockSums() for _ in sites], _decoder_from(model, len(sites)), model)
    handles = [
        handle
        for b, block_sites in enumerate(sites)
        for name, site in block_sites
        for handle in _hook_lora_site(probe, b, b < probe.decoder_from or reads_encoder_states(name), site)
    ]
    with _removing(handles):
        yield probe


def probe_adapters(model: PHAModel) -> contextlib.AbstractContextManager[ResidualProbe]:
    """The probe of the model's adapter kind: bottleneck adapters against the residual, or LoRA
    updates against their frozen outputs."""
    return probe_lora(model) if model.layout.kind == "lora" else probe_residuals(model)


@torch.no_grad()
def measure_batches(
    model: PHAModel, batches: Iterable[dict[str, Tensor]]
) -> tuple[list[float], list[float], dict[int, Tensor]]:
    """Adapter/residual and LoRA-update/frozen-output ratios per block (one of them empty), and the
    pooled features of each task id, over ``batches``.

    Pooled features: what an encoder's task heads read; for T5 the mean of the final encoder states.
    The batches run as training runs them, in length-sorted chunks when that pays (``chunk_cost_tokens``):
    the hooks read each chunk's own token masks, so the sums are the whole batch's (up to floating-point
    summation order) without the padding's work.
    """
    features: dict[int, list[Tensor]] = {}
    with probe_residuals(model) as adapters, probe_lora(model) as lora:
        for batch in batches:
            pooled = model(batch)["pooled"]
            for task in torch.unique(batch["task_ids"]).tolist():
                features.setdefault(task, []).append(pooled[batch["task_ids"] == task].float().cpu())
    return adapters.ratios(), lora.ratios(), {task: torch.cat(parts) for task, parts in features.items()}


@torch.no_grad()
def weight_report(model: PHAModel, initial_prototypes: Tensor | None) -> dict[str, Any]:
    """Adapter weight norms per layer, the generated adapters' between-task spread, prototype shift."""
    report: dict[str, Any] = {
        "shared_adapter_norm": [
            float(torch.cat([m.flatten() for m in a.matrices()]).norm()) for a in model.shared_adapters
        ]
    }
    all_tasks = torch.arange(len(model.task_objects), device=model.device)
    generated = model.batch_adapter_weights(all_tasks)
    if generated is not None:
        report["generated_adapter_norm"], report["generated_between_task_spread"] = [], []
        for per_task in site_vectors(generated):  # (T, sites, n): per generated layer (adapters) or LoRA site
            report["generated_adapter_norm"] += [float(v) for v in per_task.norm(dim=2).mean(0)]
            report["generated_between_task_spread"] += [
                between_task_spread(per_task[:, site]) for site in range(per_task.shape[1])
            ]
    if model.prototypes is not None and initial_prototypes is not None:
        table = model.prototypes.table().detach().float().cpu()
        start = initial_prototypes.float().cpu()
        shift = (table - start).norm(dim=1) / start.norm(dim=1).clamp_min(1e-12)
        report["prototype_shift"] = {t.name: float(s) for t, s in zip(model.task_objects, shift)}
    return report


def probe_batches(
    loaders: Iterable[Iterable[dict[str, Any]]], examples: int, device: torch.device
) -> list[dict[str, Tensor]]:
    """The first ``examples`` examples of each loader's first batch: what a health report reads."""
    batches = []
    for loader in loaders:
        batch = next(iter(loader), None)
        if batch is not None:
            batches.append({k: v[:examples].to(device) for k, v in batch.items() if isinstance(v, Tensor)})
    return batches


def adapter_matrices(model: PHAModel, task_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(the generated adapter matrices of ``task_ids``' tasks, every shared adapter matrix), flattened."""
    with torch.no_grad():
        generated = model.generated_weights(torch.unique(task_ids))
        shared = [m.flatten() for a in model.shared_adapters for m in a.matrices()]
        return torch.cat([m.flatten() for matrices in generated.matrix_sets() for m in matrices]), torch.cat(shared)


def one_step_change(
    model: PHAModel, loss: Callable[[dict[str, Tensor]], Tensor], batch: dict[str, Tensor], lr: float
) -> tuple[float, float]:
    """Mean |change| per element of the generated and of the shared adapter matrices (or LoRA
    factors) of ``model`` after one AdamW step of ``loss`` on ``batch`` (PHA; the change itself is
    what compares). ``loss``: e.g. the training system's, ``lambda b: system.loss_terms(b)["loss"]``."""
    generated_before, shared_before = adapter_matrices(model, batch["task_ids"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    loss(batch).backward()
    optimizer.step()
    generated_after, shared_after = adapter_matrices(model, batch["task_ids"])
    return float((generated_after - generated_before).abs().mean()), float((shared_after - shared_before).abs().mean())


@dataclass(frozen=True)
class HealthThresholds:
    """When a value means trouble (see docs/training_health.md for why these numbers)."""

    collapse_share: float = 0.9
    adapter_ratio: float = 0.5


def settings_to_check(report: dict[str, Any], *first: str) -> str:
    """The settings a warning names, ``first`` ones first: the hypernetwork's calibration only for a
    run that generates adapters (a shared-adapter run has no such setting to turn)."""
    names = [*first]
    if "generated_adapter_norm" in report:
        names.append("model.arch.hypernet_calibration (use 'width')")
    names.append("trainer.gradient_clip_val (1.0)")
    return ", ".join(names[:-1]) + " and " + names[-1]


def health_warnings(report: dict[str, Any], thresholds: HealthThresholds) -> list[str]:
    """Plain-language flags for a report, each naming the settings of this run's method to look at."""
    warnings = []
    shares = report.get("top_axis_share", {})
    collapsed = {task: share for task, share in shares.items() if share >= thresholds.collapse_share}
    if collapsed:
        listed = ", ".join(f"{task} {100 * share:.0f} %" for task, share in collapsed.items())
        warnings.append(
            f"representation collapse: the pooled features put at least {100 * thresholds.collapse_share:.0f} % of "
            f"their variance on one axis ({listed}), so the task heads barely see a difference between "
            "examples; look at " + settings_to_check(report, "model.optim.learning_rate", "model.optim.warmup_steps")
        )
    loud = [(b, r) for b, r in enumerate(report.get("adapter_to_residual", [])) if r >= thresholds.adapter_ratio]
    if loud:
        listed = ", ".join(f"block {b} {r:.2f}" for b, r in loud)
        warnings.append(
            f"adapters drown the residual stream: their output is at least {thresholds.adapter_ratio:.2f}× the "
            f"residual's norm ({listed}); look at " + settings_to_check(report, "model.optim.learning_rate")
        )
    return warnings


def health_report(
    model: PHAModel,
    batches: Iterable[dict[str, Tensor]],
    initial_prototypes: Tensor | None = None,
    thresholds: HealthThresholds = HealthThresholds(),
) -> dict[str, Any]:
    """Every health number of ``model`` on ``batches`` (see the module docstring), with warnings."""
    was_training = model.training
    model.eval()
    try:
        ratios, lora_ratios, features = measure_batches(model, batches)
        report: dict[str, Any] = {"adapter_to_residual": ratios, "lora_to_base": lora_ratios}
        report.update(weight_report(model, initial_prototypes))
    finally:
        model.train(was_training)
    report["top_axis_share"] = {
        model.task_objects[t].name: feature_spread(f)[0] for t, f in sorted(features.items()) if len(f) > 1
    }
    report["warnings"] = health_warnings(report, thresholds)
    return report


def format_health(report: dict[str, Any]) -> str:
    """The report as a few readable lines (printed at the end of ``fit``)."""

    def numbers(values: Iterable[float]) -> str:
        return " ".join(f"{v:.3g}" for v in values)

    lines = [
        f"{label} per block: {numbers(report[key])}"
        for key, label in (("adapter_to_residual", "adapter/residual"), ("lora_to_base", "LoRA update/frozen output"))
        if report.get(key)
    ]
    if report["shared_adapter_norm"]:
        lines.append(f"shared adapter norm per layer: {numbers(report['shared_adapter_norm'])}")
    if "generated_adapter_norm" in report:
        lines.append(f"generated adapter norm per layer (mean over tasks): {numbers(report['generated_adapter_norm'])}")
        lines.append(
            f"between-task spread of generated adapters per layer: {numbers(report['generated_between_task_spread'])}"
        )
    if "prototype_shift" in report:
        lines.append(
            "prototype shift from init: " + ", ".join(f"{k} {v:.3g}" for k, v in report["prototype_shift"].items())
        )
    lines.append(
        "pooled features, top-axis variance share: "
        + ", ".join(f"{k} {100 * v:.0f} %" for k, v in report["top_axis_share"].items())
    )
    lines.extend(f"WARNING: {w}" for w in report["warnings"])
    return "\n".join(lines)
