"""Calibrated routing with abstention (docs/routing.md): how sure the retriever is, and when to say "none".

The retriever scores an example against every task (the cosine of its retrieval vector with each
prototype). A temperature fitted on validation by negative log-likelihood turns the scores into
probabilities; tasks the router confuses with each other on validation (mutually, at least
``group_confusion`` of each one's examples, at most ``max_group_size`` tasks) form **confusable
groups**. An example goes to the most probable task or group; its confidence is that task's (or
the group's summed) probability. It is routed only when that is a single task and the confidence
reaches the threshold chosen on validation for ``target_precision``; otherwise it is abstained,
with the reason. Plain PyTorch: the training callback fits a :class:`Calibration`, the model,
its bundle and :class:`pha_lightning.routing.Router` apply it.

With ``unlabelled_per_task`` > 0 the scores are a linear probe's instead (:class:`RoutingProbe`,
fitted after training on unlabelled training texts over the pooled hidden states at the retrieval
point), calibrated the same way; the novelty floor stays on the prototype cosine, since a probe's
logits do not say "unlike every task".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from pha_lightning.errors import ConfigError
from pha_lightning.validation import FRACTION, NON_NEGATIVE, SEED, SIZE, Range, check_settings, setting

#: the temperatures tried when fitting (log-spaced): cosine scores live in [-1, 1]
TEMPERATURES = torch.logspace(-2, 1, 301, dtype=torch.float64)


@dataclass(frozen=True)
class RoutingConfig:
    """How routing is calibrated on validation at the end of each validation (``model.routing``)."""

    target_precision: float = setting(0.95, Range(0, 1, low_open=True))
    """The share of routed validation examples that must go to their own task: the abstention
    threshold is the lowest confidence that keeps the routed examples at least this precise."""
    group_confusion: float = setting(0.2, FRACTION)
    """Two tasks are confusable when each sends at least this share of its validation examples to
    the other (nearest task); confusable tasks form groups, whose examples are abstained."""
    max_group_size: int = setting(4, Range(2, integer=True))
    """The most tasks one confusable group holds (the most confused pairs are joined first)."""
    novelty_quantile: float = setting(0.01, FRACTION)
    """Examples less similar to their nearest prototype than this share of validation examples are
    unlike every trained task and abstained (0: only those below the least similar one)."""
    unlabelled_per_task: int = setting(0, Range(0, integer=True))
    """0: route by the nearest prototype (the released rule). N > 0: at the end of ``pha fit`` (or
    by ``pha calibrate``) fit a linear probe over the pooled hidden state at the retrieval point on
    up to N unlabelled training texts per task, and route by it (docs/routing.md)."""
    probe_weight_decay: float = setting(1e-6, NON_NEGATIVE)
    """The probe's L2 penalty (on its weights, not its bias)."""
    probe_seed: int = setting(0, SEED)
    """Seeds the shuffle each task's training split is drawn from and the probe's initial weights."""
    probe_steps: int = setting(300, SIZE)
    """The most L-BFGS iterations of the probe fit (full batch)."""

    def __post_init__(self) -> None:
        check_settings("model.routing", RoutingConfig, asdict(self))


def fit_probe(x: Tensor, y: Tensor, classes: int, weight_decay: float, steps: int, seed: int) -> torch.nn.Linear:
    """Multinomial logistic regression in float64 (full-batch L-BFGS, L2 ``weight_decay`` on the
    weights), every class weighted by the inverse of its count, so tasks with fewer texts weigh as
    much (equal counts: the plain loss). ``seed`` draws the initial weights (the global random
    state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = torch.nn.Linear(x.shape[1], classes).double()
    x, y = x.double(), y.long()
    counts = torch.bincount(y, minlength=classes).double()
    balance = counts.sum() / (classes * counts.clamp_min(1))
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y, weight=balance) + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return probe.eval()


@dataclass
class RoutingProbe:
    """A linear probe that scores pooled features against every trained task: the features, less
    ``mean`` (the training texts' mean), normalised, times ``weight`` plus ``bias``, in float64."""

    weight: Tensor
    """``(tasks, features)``."""
    bias: Tensor
    """``(tasks,)``."""
    mean: Tensor
    """``(features,)``: centring the features first spreads them around the origin before normalising."""

    #: the names its tensors travel under (a checkpoint's ``pha_routing``, ``routing_probe.safetensors``)
    TENSORS = ("weight", "bias", "mean")

    @classmethod
    def fit(
        cls,
        features: Tensor,
        task_ids: Tensor,
        num_tasks: int,
        weight_decay: float,
        steps: int,
        seed: int,
        centre: bool = True,
    ) -> RoutingProbe:
        """Fit on ``features (N, d)`` of texts of known ``task_ids``; ``centre`` false: no centring."""
        mean = features.mean(0) if centre else torch.zeros(features.shape[1], dtype=features.dtype)
        probe = fit_probe(F.normalize(features - mean, dim=-1), task_ids, num_tasks, weight_decay, steps, seed)
        return cls(probe.weight.detach().clone(), probe.bias.detach().clone(), mean.detach().clone())

    def scores(self, features: Tensor) -> Tensor:
        """The probe's logits ``(B, tasks)`` in float64."""
        x = F.normalize(features - self.mean.to(features), dim=-1).double()
        return F.linear(x, self.weight.to(x.device), self.bias.to(x.device))

    def tensors(self) -> dict[str, Tensor]:
        return {f"probe.{name}": getattr(self, name).detach().cpu().contiguous() for name in self.TENSORS}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor]) -> RoutingProbe:
        missing = [f"probe.{name}" for name in cls.TENSORS if f"probe.{name}" not in tensors]
        if missing:
            raise ConfigError(f"the routing calibration names a probe, but its tensors {missing} are missing")
        return cls(*(tensors[f"probe.{name}"] for name in cls.TENSORS))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RoutingProbe) and all(
            torch.equal(getattr(self, name), getattr(other, name)) for name in self.TENSORS
        )


@dataclass
class Calibration:
    """What routing needs besides the scores: fitted on validation, stored in checkpoints and bundles."""

    tasks: list[str]
    """The task names, in score order."""
    temperature: float
    """Divides the scores before the softmax."""
    threshold: float | None
    """The lowest confidence routed; ``None``: no threshold reached the target, every example abstains."""
    target_precision: float
    similarity_floor: float
    """The least cosine with the nearest prototype routed (``novelty_quantile`` of validation)."""
    groups: list[list[str]] = field(default_factory=list)
    """The confusable groups, each a list of task names."""
    validation: dict[str, float | None] = field(default_factory=dict)
    """Precision (``None`` when nothing was routed) and coverage of routing on the validation
    examples it was fitted on, and their number."""
    added_tasks: list[str] = field(default_factory=list)
    """Tasks added by few-shot transfer, in front of ``tasks`` as in the model. The trained tasks
    route as before; an example unlike every one of them may go to the nearest added task."""
    added_floor: float | None = None
    """The least cosine to an added task's prototype routed to it (``novelty_quantile`` of the
    added tasks' validation examples); ``None``: not yet calibrated, added tasks get no example."""
    probe: RoutingProbe | None = None
    """The linear probe that scores the trained tasks (``None``: the prototype cosines score them)."""
    probe_fit: dict[str, Any] | None = None
    """How the probe was fitted: texts per task asked for and found, weight decay, seed, steps."""

    def to_dict(self, with_tensors: bool = False) -> dict[str, Any]:
        """The calibration as plain data: JSON (a bundle's or router's ``config.json``; the probe's
        tensors travel in ``routing_probe.safetensors``), or ``with_tensors`` (a checkpoint's
        ``pha_routing``) holding them too, under ``probe_tensors``. Without a probe it is the record
        of the nearest-prototype rule as it always was."""
        record = {k: v for k, v in asdict(replace(self, probe=None)).items() if k != "probe"}
        if self.probe_fit is None:
            del record["probe_fit"]
        if with_tensors and self.probe is not None:
            record["probe_tensors"] = self.probe_tensors()
        return record

    def probe_tensors(self) -> dict[str, Tensor]:
        """The routing probe's tensors (none without a probe)."""
        return self.probe.tensors() if self.probe is not None else {}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], tensors: Mapping[str, Tensor] | None = None) -> Calibration:
        """The calibration of :meth:`to_dict`; a probe's ``tensors`` when they travel apart from it."""
        record = dict(record)
        stored = record.pop("probe_tensors", None)
        tensors = stored if tensors is None else tensors
        probe = RoutingProbe.from_tensors(tensors or {}) if record.get("probe_fit") is not None else None
        return cls(**record, probe=probe)

    def with_added_tasks(self, names: list[str]) -> Calibration:
        """This calibration for the model with ``names`` added in front (few-shot transfer)."""
        return replace(self, added_tasks=list(names), added_floor=None)

    def units(self) -> list[list[int]]:
        """Every task alone, or its confusable group, as lists of task indices (each task in one unit)."""
        index = {name: i for i, name in enumerate(self.tasks)}
        grouped = [[index[name] for name in group] for group in self.groups]
        inside = {i for group in grouped for i in group}
        return grouped + [[i] for i in range(len(self.tasks)) if i not in inside]

    def describe(self) -> str:
        """The lines ``pha fit`` prints: threshold, validation precision and coverage, groups."""
        floor = (
            f"; examples less similar than {self.similarity_floor:.3f} to every prototype are unlike every trained task"
        )
        if self.threshold is None:
            head = f"no confidence threshold reaches precision {self.target_precision} on validation: every example without a task is abstained"
        else:
            v = self.validation
            head = (
                f"threshold {self.threshold:.4f} (confidence; temperature {self.temperature:.4g}) for precision "
                f"{self.target_precision}: on validation {100 * v['precision']:.1f} % of routed examples right, "
                f"{100 * v['coverage']:.1f} % of examples routed"
            )
        head += floor
        groups = "; ".join("{" + ", ".join(g) + "}" for g in self.groups) or "none"
        if self.probe_fit is not None:
            fit = self.probe_fit
            head += (
                f"; scored by a linear probe over the pooled hidden state at the retrieval point, fitted on "
                f"{fit['texts']} unlabelled training texts (up to {fit['unlabelled_per_task']} per task)"
            )
        text = f"routing: {head}\nconfusable task groups (name these tasks explicitly): {groups}"
        if self.added_tasks:
            floor = "not calibrated" if self.added_floor is None else f"similarity floor {self.added_floor:.3f}"
            text += f"\nadded tasks {self.added_tasks} ({floor}) take only examples unlike every trained task"
        return text


@dataclass
class Decision:
    """The routing of one example: the task index or ``None``, the confidence, and why it abstained."""

    task: int | None
    confidence: float
    reason: str | None = None
    #: abstained as unlike every trained task
    novel: bool = False


def probabilities(scores: Tensor, temperature: float) -> Tensor:
    """``softmax(scores / T)`` per example, in float64."""
    return torch.softmax(scores.double() / temperature, dim=-1)


def fit_temperature(scores: Tensor, targets: Tensor) -> float:
    """The temperature of least validation NLL (searched on :data:`TEMPERATURES`)."""
    scores, targets = scores.double(), targets.long()
    nll = torch.stack([torch.nn.functional.cross_entropy(scores / t, targets) for t in TEMPERATURES])
    return float(TEMPERATURES[int(nll.argmin())])


def confusable_groups(nearest: Tensor, targets: Tensor, num_tasks: int, config: RoutingConfig) -> list[list[int]]:
    """Groups of tasks whose validation examples go to each other (both ways, at least
    ``group_confusion`` of each), joined from the most confused pair down, none above ``max_group_size``."""
    counts = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
    counts.index_put_((targets.long(), nearest.long()), torch.ones(len(targets), dtype=torch.float64), accumulate=True)
    share = counts / counts.sum(1, keepdim=True).clamp_min(1)
    mutual = torch.minimum(share, share.T)
    pairs = sorted(
        ((float(mutual[i, j]), i, j) for i in range(num_tasks) for j in range(i + 1, num_tasks)),
        reverse=True,
    )
    group_of = {i: {i} for i in range(num_tasks)}
    for strength, i, j in pairs:
        if strength < config.group_confusion or not strength:
            break
        if group_of[i] is group_of[j] or len(group_of[i]) + len(group_of[j]) > config.max_group_size:
            continue
        merged = group_of[i] | group_of[j]
        for task in merged:
            group_of[task] = merged
    groups = {frozenset(g) for g in group_of.values() if len(g) > 1}
    return sorted(sorted(g) for g in groups)


def unit_choice(probs: Tensor, units: list[list[int]]) -> tuple[Tensor, Tensor]:
    """The most probable unit of every example (its index in ``units``) and its summed probability."""
    unit_probs = torch.stack([probs[:, unit].sum(-1) for unit in units], dim=-1)
    best = unit_probs.max(-1)
    return best.indices, best.values


def choose_threshold(confidence: Tensor, correct: Tensor, target: float) -> float | None:
    """The lowest confidence such that the examples at or above it are at least ``target`` right."""
    order = confidence.argsort(descending=True)
    conf, hits = confidence[order], correct[order].double()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    last_of_value = torch.ones(len(conf), dtype=torch.bool)  # cut only between distinct confidences
    last_of_value[:-1] = conf[1:] < conf[:-1]
    good = torch.nonzero((precision >= target) & last_of_value).flatten()
    return None if len(good) == 0 else float(conf[int(good.max())])


def decide(similarity: Tensor, calibration: Calibration, features: Tensor | None = None) -> list[Decision]:
    """Route (or abstain) every example of ``similarity (B, tasks)``, the cosines with every
    prototype, as ``calibration`` says: the trained tasks first, exactly as before any task was
    added, scored by the calibration's probe over ``features`` (the pooled hidden states at the
    retrieval point) when it has one; an example unlike all of them goes to the nearest added task
    when it is similar enough to it."""
    added = len(calibration.added_tasks)
    if similarity.shape[-1] != added + len(calibration.tasks):
        raise ConfigError(
            f"the routing calibration covers {added + len(calibration.tasks)} tasks "
            f"{calibration.added_tasks + calibration.tasks}, the model scores {similarity.shape[-1]}: recalibrate it "
            "on validation examples of every task"
        )
    trained = similarity[:, added:]
    if calibration.probe is not None:
        if features is None:
            raise ConfigError("this routing calibration scores by a probe over pooled features; none were given")
        decisions = decide_trained(calibration.probe.scores(features), calibration, trained)
    else:
        decisions = decide_trained(trained, calibration)
    for i, decision in enumerate(decisions):
        if decision.task is not None:
            decision.task += added
        elif decision.novel and added and calibration.added_floor is not None:
            best = similarity[i, :added].max(-1)
            if float(best.values) >= calibration.added_floor:
                confidence = float(probabilities(similarity[i, :added], calibration.temperature).max())
                decisions[i] = Decision(int(best.indices), confidence)
    return decisions


def decide_trained(scores: Tensor, calibration: Calibration, similarity: Tensor | None = None) -> list[Decision]:
    """:func:`decide` over the trained tasks' ``scores`` alone (indices into ``calibration.tasks``);
    ``similarity``: the prototype cosines the novelty floor reads, when the scores are not them."""
    units = calibration.units()
    chosen, confidence = unit_choice(probabilities(scores, calibration.temperature), units)
    nearest = (scores if similarity is None else similarity).max(-1)
    decisions = []
    for unit_index, conf, closest, task in zip(
        chosen.tolist(), confidence.tolist(), nearest.values.tolist(), nearest.indices.tolist()
    ):
        unit = units[unit_index]
        names = [calibration.tasks[i] for i in unit]
        if closest < calibration.similarity_floor:
            reason = (
                f"unlike every trained task: similarity {closest:.3f} to the nearest, {calibration.tasks[task]}, "
                f"is below {calibration.similarity_floor:.3f} (the least similar validation examples)"
            )
        elif calibration.threshold is None:
            reason = f"no confidence threshold reached precision {calibration.target_precision} on validation"
        elif len(unit) > 1:
            reason = f"the router cannot tell tasks {names} apart (confusable on validation)"
        elif conf < calibration.threshold:
            reason = (
                f"confidence {conf:.2f} for {names[0]} below the threshold {calibration.threshold:.2f} "
                f"chosen for precision {calibration.target_precision}"
            )
        else:
            decisions.append(Decision(unit[0], conf))
            continue
        novel = closest < calibration.similarity_floor
        decisions.append(Decision(None, conf, f"{reason}; name the task to predict", novel))
    return decisions


def calibrate(
    scores: Tensor, targets: Tensor, tasks: list[str], config: RoutingConfig, similarity: Tensor | None = None
) -> Calibration:
    """Fit the temperature, the confusable groups and the threshold on validation ``scores`` of
    examples of known task ``targets``; the novelty floor on ``similarity`` (the prototype cosines,
    when the scores are a probe's; by default the scores themselves)."""
    scores, targets = scores.double().cpu(), targets.long().cpu()
    nearest = (scores if similarity is None else similarity.double().cpu()).max(-1).values
    temperature = fit_temperature(scores, targets)
    floor = float(torch.quantile(nearest, config.novelty_quantile))
    groups = confusable_groups(scores.argmax(-1), targets, len(tasks), config)
    named = [[tasks[i] for i in g] for g in groups]
    draft = Calibration(tasks, temperature, 0.0, config.target_precision, floor, named)
    units = draft.units()
    chosen, confidence = unit_choice(probabilities(scores, temperature), units)
    single = torch.tensor([len(units[u]) == 1 for u in chosen.tolist()]) & (nearest >= floor)
    routed_task = torch.tensor([units[u][0] for u in chosen.tolist()])
    correct = routed_task == targets
    # novel and group-routed examples abstain whatever the threshold: it is chosen on the others
    threshold = choose_threshold(confidence[single], correct[single], config.target_precision) if single.any() else None
    draft.threshold = threshold
    routed = single & (confidence >= threshold) if threshold is not None else torch.zeros_like(single)
    draft.validation = {
        "precision": float(correct[routed].double().mean()) if routed.any() else None,
        "coverage": float(routed.double().mean()),
        "examples": len(targets),
    }
    return draft


def calibrate_added(calibration: Calibration, scores: Tensor, config: RoutingConfig) -> Calibration:
    """Fit the added tasks' floor on the scores ``(B, added + trained)`` of their validation examples."""
    nearest = scores[:, : len(calibration.added_tasks)].double().max(-1).values
    return replace(calibration, added_floor=float(torch.quantile(nearest.cpu(), config.novelty_quantile)))
