"""Few-shot transfer to new tasks through the retriever (docs/method.md, "Inference and new tasks").

A trained PHA model meets a new task with a handful of examples. The retriever embeds them, the
mean normalised vector is scored against every source prototype by cosine, and the new task's
prototype starts from the best-scoring row (``top1``, the paper's procedure), from a
softmax-weighted mix of the ``m`` best rows (``mix``: a new task may relate to several source
tasks), from the mean of all rows (``mean``) or at random (``random``); then a short tuning on the
support examples follows. What is tuned is configurable (:data:`TUNE_MODES`).

The source model takes the new tasks in front (:meth:`PHAModel.add_tasks`: their ids are the data
module's ids); the source tasks' weights stay fixed unless ``tune`` includes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from pha_lightning.errors import ConfigError
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.model.prediction import retrieval_batches
from pha_lightning.validation import POSITIVE, SIZE, Choice, check_settings, setting

if TYPE_CHECKING:
    from pha_lightning.model.pha import PHAModel

Init = Literal["top1", "mix", "mean", "random"]
Tune = Literal["prototype", "hypernetwork", "all"]
INITS: tuple[str, ...] = get_args(Init)
#: ``prototype``: the new rows (and, for encoder backbones, the new task heads) only;
#: ``hypernetwork``: plus the hypernetwork; ``all``: every PHA parameter, source rows and heads too.
TUNE_MODES: tuple[str, ...] = get_args(Tune)
#: Methods whose checkpoints can take new tasks: PHA, and HyperFormer (a fresh task embedding, the baseline).
TRANSFER_METHODS: tuple[str, ...] = ("pha", "hyperformer")


@dataclass(frozen=True)
class TransferConfig:
    """Few-shot transfer (``model.transfer``): adapt a trained PHA checkpoint to the tasks being trained now."""

    checkpoint: str
    """The multi-task PHA checkpoint whose tasks are the sources."""
    init: Init = setting("top1", Choice(INITS))
    """How the new prototypes start: ``top1``, ``mix``, ``mean`` or ``random``."""
    mix_top_m: int = setting(3, SIZE)
    """``mix``: how many of the best-scoring source rows are mixed."""
    mix_temperature: float = setting(0.1, POSITIVE)
    """``mix``: softmax temperature over their cosine scores."""
    tune: Tune = setting("hypernetwork", Choice(TUNE_MODES))
    """Which parameters train: ``prototype``, ``hypernetwork`` or ``all`` (see ``TUNE_MODES``). The
    default won every measured new task (results/transfer_defaults); ``prototype`` is the paper's
    procedure and the one that leaves the source tasks' outputs exactly as they were."""

    def __post_init__(self) -> None:
        check_settings("model.transfer", TransferConfig, asdict(self))


def read_source(config: TransferConfig, backbone: str, new_tasks: list[str]) -> dict:
    """The source checkpoint, checked against what the transfer asks for."""
    source = read_checkpoint(config.checkpoint)
    arch = source["hyper_parameters"]["arch"]
    method = arch["method"]
    if method not in TRANSFER_METHODS:
        raise ConfigError(
            f"transfer needs a checkpoint of {list(TRANSFER_METHODS)}; {config.checkpoint!r} was trained with method {method!r}"
        )
    if method == "hyperformer" and config.init != "random":
        raise ConfigError(
            f"a HyperFormer checkpoint has no retriever: transfer init must be 'random', got {config.init!r}"
        )
    if arch["backbone"] != backbone:
        raise ConfigError(
            f"checkpoint {config.checkpoint!r} was trained on backbone {arch['backbone']!r}, "
            f"but the config asks for {backbone!r}"
        )
    overlap = sorted(set(new_tasks) & set(arch["tasks"]))
    if overlap:
        raise ConfigError(f"tasks {overlap} are already source tasks of {config.checkpoint!r}; transfer adds new tasks")
    return source


def set_trainable(model: PHAModel, tune: Tune) -> None:
    """Freeze everything, then unfreeze what ``tune`` names (new rows and new heads always)."""
    model.requires_grad_(False)
    model.prototypes.added.requires_grad_(True)
    if model.heads is not None:
        for head in list(model.heads)[: model.num_added_tasks]:  # a slice of TaskHeads cannot rebuild itself
            head.requires_grad_(True)
    if tune == "hypernetwork":
        model.hypernetwork.requires_grad_(True)
    if tune == "all":
        for part in (model.shared_adapters, model.hypernetwork, model.retriever, model.prototypes, model.heads):
            if part is not None:
                part.requires_grad_(True)


@torch.no_grad()
def retrieval_vectors(model: PHAModel, loaders: list[DataLoader]) -> tuple[Tensor, Tensor]:
    """Retrieval vectors ``z`` of every example the loaders yield, with the loaders' task ids.

    ``z`` depends only on the parts before the retrieval point (frozen blocks and shared
    adapters), not on the task id, so it is the same whatever task the example is labelled with.
    """
    was_training = model.training
    model.eval()
    vectors, task_ids = [], []
    for z, _, ids in retrieval_batches(model, loaders):
        vectors.append(z.float().cpu())
        task_ids.append(ids.cpu())
    model.train(was_training)
    return torch.cat(vectors), torch.cat(task_ids)


def prototype_scores(z: Tensor, prototypes: Tensor) -> Tensor:
    """Cosine between the mean normalised retrieval vector of a task and every prototype row."""
    query = F.normalize(F.normalize(z, dim=-1).mean(0), dim=0)
    return F.normalize(prototypes, dim=-1) @ query


def initial_row(scores: Tensor, rows: Tensor, config: TransferConfig) -> Tensor:
    """The starting prototype of one new task, from the source ``rows`` (raw) and their ``scores``."""
    if config.init == "top1":
        return rows[scores.argmax()].clone()
    if config.init == "mix":
        top = scores.topk(min(config.mix_top_m, len(scores)))
        weights = torch.softmax(top.values / config.mix_temperature, dim=0)
        return weights @ rows[top.indices]
    return rows.mean(0)  # "mean"; "random" needs no scores (see initialize_new_tasks)


def initialize_new_tasks(
    model: PHAModel, config: TransferConfig, support: list[DataLoader], seed: int = 0
) -> dict[str, list[tuple[str, float]]]:
    """Set each new task's prototype (and, for ``top1`` on encoder backbones, its head) from retrieval.

    ``support`` holds one loader per new task (its few examples). Returns, per new task, the
    source tasks ranked by cosine score.
    """
    num_new = model.num_added_tasks
    sources = [t.name for t in model.task_objects[num_new:]]
    source_rows = model.prototypes.weight.detach()
    rankings: dict[str, list[tuple[str, float]]] = {}
    if config.init == "random":  # no retrieval needed (and HyperFormer has no retriever)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for new_id in range(num_new):
                row = torch.randn(source_rows.shape[1], generator=generator) * model.config.prototype_init_std
                model.prototypes.added[new_id] = row.to(model.prototypes.added)
        return rankings
    for new_id, loader in enumerate(support):
        z, _ = retrieval_vectors(model, [loader])
        scores = prototype_scores(z, source_rows.float().cpu())
        order = scores.argsort(descending=True).tolist()
        rankings[model.task_objects[new_id].name] = [(sources[i], float(scores[i])) for i in order]
        row = initial_row(scores, source_rows.float().cpu(), config)
        with torch.no_grad():
            model.prototypes.added[new_id] = row.to(model.prototypes.added)
        if config.init == "top1":
            model.copy_head(new_id, num_new + order[0])
    return rankings


#: Retrieval initialisation paid off only where the nearest source task scored at least this
#: (TREC fine from TREC coarse, 0.98: +10 test points over a random start); below it (0.57-0.86 for
#: tasks of a source's kind, 0.67-0.87 for tasks unlike every source) it tied or lost up to 3 on
#: average (results/transfer_defaults, docs/usage.md "When retrieval initialisation helps").
CLOSE_SOURCE_SCORE = 0.9


def distant_source_advice(rankings: dict[str, list[tuple[str, float]]], init: Init) -> str | None:
    """One line naming the new tasks whose nearest source is not close enough for a retrieved start to
    help (``init`` top1 or mix copy from it), and what to use instead; ``None`` when there are none."""
    if init not in ("top1", "mix"):
        return None
    distant = {task: ranked[0] for task, ranked in rankings.items() if ranked and ranked[0][1] < CLOSE_SOURCE_SCORE}
    if not distant:
        return None
    named = ", ".join(f"{task} (nearest {source} {score:+.3f})" for task, (source, score) in distant.items())
    return (
        f"transfer ({init}): {named} resemble no source task closely (score < {CLOSE_SOURCE_SCORE}); a retrieved "
        "start did not help such tasks in the measurements (docs/usage.md, 'When retrieval initialisation helps'): "
        "consider --model.transfer.init random"
    )


def format_rankings(rankings: dict[str, list[tuple[str, float]]]) -> str:
    lines = []
    for task, ranked in rankings.items():
        lines.append(f"{task}: " + ", ".join(f"{name} {score:+.3f}" for name, score in ranked))
    return "\n".join(lines)
