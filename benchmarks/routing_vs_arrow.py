"""Routing without task labels, Arrow against PHA's router: routing accuracy and the final predictions.

    python benchmarks/routing_vs_arrow.py --pha-ckpt <pha run>/checkpoints/<best>.ckpt \\
        --task-lora-ckpt <task_lora run>/checkpoints/<best>.ckpt --data-dir <data dir> \\
        --output-dir results/routing/arrow --cache <folder outside git>

Both checkpoints must hold the same tasks (the 18-task mix). Each model runs every validation and
test example (test: the fixed draw of at most ``--test-max-examples`` per task that
``routing_rules.py`` measures) once with its task label and once without; the outputs of each model
and split are kept in ``--cache`` as soon as they are made, so a rerun starts after them.

* **PHA** routes an example to the task whose prototype its retrieval vector is nearest (the
  released rule), or, calibrated on validation (temperature, confusable groups, novelty floor and
  the threshold for ``--target-precision``, exactly as ``pha fit`` calibrates), abstains.
* **Arrow** (``arrow``, peft's Arrow over the ``task_lora`` run's LoRAs) routes every token at every
  LoRA site. An example's *routing weight* on a task is its weight averaged over its tokens and the
  sites; its *Arrow task* is the task with the largest routing weight. The same calibration, fitted
  on those weights, gives Arrow a threshold with abstention too.

Final predictions, per task (the mean of its metrics, as ``test/avg`` averages them):

* ``labelled``: the task named (PHA, and ``task_lora`` for Arrow's library): the oracle;
* ``routed adapters``: the adapters chosen without the label, the head still the example's own task
  (Arrow as peft ships it: it routes the adapters; a task head has to be named);
* ``label-free``: the head of the routed task too (``pha predict`` without a task); an example sent
  to another task counts as wrong (its prediction is ``INVALID``, as an unparseable one is);
* ``calibrated``: label-free on the examples routed at the threshold, with the labelled score on the
  same examples beside it, and the share routed.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from studylib.checkpoints import model_and_data
from studylib.reports import write_portable
from studylib.routing import capped, measure, percent
from torch import Tensor

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.data.tasks import INVALID
from pha_lightning.model.calibration import RoutingConfig, calibrate, decide
from pha_lightning.model.lora import GeneratedLoRAUpdate, LoRALinear
from pha_lightning.model.pha import PHAModel
from pha_lightning.training.metrics import build_task_metrics

SPLITS = ("validation", "test")
#: routed sets with fewer examples than this get no task score (a correlation of a handful means nothing)
MIN_SCORED = 20


# ---------------------------------------------------------------------------------------- models
def split_batches(data: PHADataModule, split: str, most: int | None):  # noqa: ANN201
    """Every batch of ``split``, task by task, at most ``most`` examples per task (a fixed draw: on
    test with ``routing_rules.py``'s default, the examples it measures)."""
    for loader in data.task_dataloaders(split):
        yield from capped(loader, most)


def label_free(values: Tensor, routed: Tensor, own: Tensor) -> Tensor:
    """Predictions made with the routed task's head: ``INVALID`` (wrong) where it is not the example's own."""
    return torch.where(routed == own, values, torch.full_like(values, INVALID))


def common_fields(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    groups = batch.get("groups", torch.full_like(batch["task_ids"], -1))
    return {"task_ids": batch["task_ids"], "targets": batch["targets"].float(), "groups": groups}


@torch.no_grad()
def pha_batch(model: PHAModel, batch: dict[str, Tensor], split: str) -> dict[str, Tensor]:
    """PHA's prototype scores of a batch and, on test, its predictions labelled, with routed
    adapters, and label-free (the released rule: nearest prototype)."""
    if split == "validation":
        return {"task_ids": batch["task_ids"], "scores": model.retrieval_scores(model.retrieval_forward(batch))}
    own = batch["task_ids"]
    out = model(batch)
    scores = model.retrieval_scores(out["z"])
    routed = scores.argmax(-1)
    pooled = model({**batch, "task_ids": routed})["pooled"]  # generated from the routed task's prototype
    return {
        **common_fields(batch),
        "scores": scores,
        "labelled": model.heads.predictions(out["pooled"], own),
        "routed_adapters": model.heads.predictions(pooled, own),
        "label_free": label_free(model.heads.predictions(pooled, routed), routed, own),
    }


def arrow_sites(model: PHAModel) -> list[GeneratedLoRAUpdate]:
    """The updates of the model's LoRA sites, ordered by shape set and index."""
    updates = [m.update for m in model.backbone.modules() if isinstance(m, LoRALinear)]
    return sorted((u for u in updates if isinstance(u, GeneratedLoRAUpdate)), key=lambda u: (u.shape_set, u.index))


class ArrowWeights:
    """Every example's Arrow routing weights per LoRA site, ``(B, sites, tasks)``: its tokens' weights
    over the task LoRAs averaged over its tokens, and the share of its tokens whose largest weight is
    on each task; read at every site as the model runs (in length chunks: rows by ``batch["row"]``)."""

    def __init__(self, model: PHAModel) -> None:
        self.model = model
        self.sites = arrow_sites(model)
        self.hooks = [site.register_forward_hook(self.record) for site in self.sites]
        self.mean: Tensor | None = None
        self.top1: Tensor | None = None

    def start(self, examples: int) -> None:
        tasks = len(self.model.task_objects)
        self.mean = torch.zeros(examples, len(self.sites), tasks)
        self.top1 = torch.zeros(examples, len(self.sites), tasks)

    def record(self, site: GeneratedLoRAUpdate, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        rows = self.model.running_batch
        x = inputs[0]
        coeff = site.context.current("Arrow weights").coefficients(x, site.shape_set, site.index)
        coeff = coeff.reshape(*x.shape[:2], -1).float()  # (b, L, tasks)
        mask = rows["attention_mask"][:, : x.shape[1]].float()[..., None]
        tokens = mask.sum(1)
        s = self.sites.index(site)
        top1 = torch.nn.functional.one_hot(coeff.argmax(-1), coeff.shape[-1]).float()
        self.mean[rows["row"], s] = ((coeff * mask).sum(1) / tokens).cpu()
        self.top1[rows["row"], s] = ((top1 * mask).sum(1) / tokens).cpu()

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


@torch.no_grad()
def arrow_batch(
    arrow: PHAModel, library: PHAModel, weights: ArrowWeights, batch: dict[str, Tensor], split: str
) -> dict[str, Tensor]:
    """Arrow's routing weights of a batch and, on test, the library's labelled predictions
    (``task_lora``) and Arrow's with the example's own head and with its Arrow task's head."""
    own = batch["task_ids"]
    rows = {**batch, "row": torch.arange(len(own))}
    weights.start(len(own))
    pooled = arrow(rows)["pooled"]
    found = {"task_ids": own, "weights": weights.mean, "top1": weights.top1}
    if split == "validation":
        return found
    routed = weights.mean.mean(1).argmax(-1)
    return {
        **common_fields(batch),
        **found,
        "labelled": library.heads.predictions(library(batch)["pooled"], own),
        "routed_adapters": arrow.heads.predictions(pooled, own),
        "label_free": label_free(arrow.heads.predictions(pooled, routed), routed, own),
    }


def cache_file(cache: Path, name: str, ckpt_path: str, split: str, most: int | None) -> Path:
    """Where a model's outputs on a split are kept: named by the run folder and checkpoint they come
    from, and the examples per task drawn."""
    ckpt = Path(ckpt_path).resolve()
    return cache / f"{name}-{ckpt.parent.parent.name}-{ckpt.stem}-{split}{'' if most is None else f'-max{most}'}.pt"


def run_split(
    path: Path, split: str, batches: Callable[[], Any], step: Callable[[dict, str], dict]
) -> dict[str, Tensor]:
    """``step`` over every batch of ``split``, concatenated; read from ``path`` when it is there."""
    if path.exists():
        return torch.load(path, weights_only=True)
    parts: list[dict[str, Tensor]] = []
    for batch in batches():
        parts.append({k: v.detach().cpu() for k, v in step(batch, split).items()})
    out = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    torch.save(out, path)
    print(f"{path.name}: {len(out['task_ids'])} examples", flush=True)
    return out


def collect_pha(args: argparse.Namespace) -> tuple[list, dict[str, dict[str, Tensor]]]:
    """PHA's outputs on both splits (from the cache where it has them), and its tasks."""
    pha, data = model_and_data(args.pha_ckpt, args.data_dir, ("fit", "test"))
    out = {}
    for split in SPLITS:
        most = args.test_max_examples if split == "test" else None
        batches = lambda split=split, most=most: split_batches(data, split, most)  # noqa: E731
        path = cache_file(args.cache, "pha", args.pha_ckpt, split, most)
        out[split] = run_split(path, split, batches, lambda b, s: pha_batch(pha, b, s))
    return list(pha.task_objects), out


def collect_arrow(args: argparse.Namespace) -> tuple[list, dict[str, dict[str, Tensor]]]:
    """Arrow's outputs (and its library's labelled predictions) on both splits, and the tasks."""
    arrow, data = model_and_data(args.task_lora_ckpt, args.data_dir, ("fit", "test"), method="arrow")
    library = model_and_data(args.task_lora_ckpt, args.data_dir, ())[0]
    weights, out = ArrowWeights(arrow), {}
    try:
        for split in reversed(SPLITS):  # test first: the routing and predictions before the calibration
            most = args.test_max_examples if split == "test" else args.arrow_validation_max_examples
            batches = lambda split=split, most=most: split_batches(data, split, most)  # noqa: E731
            path = cache_file(args.cache, "arrow", args.task_lora_ckpt, split, most)
            out[split] = run_split(path, split, batches, lambda b, s: arrow_batch(arrow, library, weights, b, s))
    finally:
        weights.remove()
    return list(arrow.task_objects), out


# ---------------------------------------------------------------------------------------- measuring
def task_score(task: Any, preds: Tensor, targets: Tensor, groups: Tensor) -> float | None:
    """The mean of the task's metrics (×100) over these examples; ``None`` for fewer than :data:`MIN_SCORED`."""
    if len(preds) < MIN_SCORED:
        return None
    metrics = build_task_metrics(task)
    metrics.update(preds, targets, groups=groups)
    return float(torch.stack([v.float() for v in metrics.compute().values()]).mean())


def scores_of(name: str, split: dict[str, Tensor]) -> Tensor:
    """What a router scores every task by: PHA's prototype cosines, Arrow's mean routing weights."""
    return split["scores"] if name == "pha" else split["weights"].mean(1)


def evaluate(tasks: list, name: str, data: dict[str, dict[str, Tensor]], config: RoutingConfig) -> dict[str, Any]:
    """Per task and over all: routing accuracy, Arrow's weight shares, the final predictions' scores."""
    names = [t.name for t in tasks]
    val, test = data["validation"], data["test"]
    calibration = calibrate(scores_of(name, val), val["task_ids"], names, config)
    scores = scores_of(name, test).double()
    own = test["task_ids"]
    routing = measure(scores, own, calibration)
    routed = scores.argmax(-1) == own
    covered = torch.tensor([d.task is not None for d in decide(scores, calibration)])  # routed to the argmax
    per_task = {}
    for t, task in enumerate(tasks):
        m = own == t
        row = {"examples": int(m.sum()), "routed_right": float(routed[m].double().mean())}
        if name == "arrow":
            row["own_weight"] = float(test["weights"][m][:, :, t].mean())
            row["own_top1_tokens"] = float(test["top1"][m][:, :, t].mean())
        args = (test["targets"][m], test["groups"][m])
        for kind in ("labelled", "routed_adapters", "label_free"):
            row[kind] = task_score(task, test[kind][m], *args)
        c = m & covered
        row["calibrated"] = {
            **routing["per_task"][task.name],
            "label_free": task_score(task, test["label_free"][c], test["targets"][c], test["groups"][c]),
            "labelled": task_score(task, test["labelled"][c], test["targets"][c], test["groups"][c]),
        }
        per_task[task.name] = row
    overall = {
        "routed_right": float(routed.double().mean()),
        "routed_right_task_mean": mean(row["routed_right"] for row in per_task.values()),
        **{k: mean(row[k] for row in per_task.values()) for k in ("labelled", "routed_adapters", "label_free")},
        "calibration": {k: v for k, v in routing.items() if k != "per_task"}
        | {"groups": calibration.groups, "threshold": calibration.threshold, "validation": calibration.validation},
    }
    if name == "arrow":
        overall["own_weight"] = float(test["weights"][torch.arange(len(own)), :, own].mean())
        overall["own_weight_by_site"] = test["weights"][torch.arange(len(own)), :, own].mean(0).tolist()
    return {"overall": overall, "per_task": per_task}


def mean(values: Any) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values) / len(values)


# ---------------------------------------------------------------------------------------- report
def score(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def per_task_table(results: dict[str, dict[str, Any]]) -> str:
    """Routing per task: PHA's released rule, PHA calibrated (P / C), Arrow (argmax task, own weight), Arrow calibrated."""
    pha, arrow = results["pha"]["per_task"], results["arrow"]["per_task"]
    lines = [
        "| task | PHA nearest prototype | PHA calibrated P / C | Arrow task | Arrow own weight | Arrow own top-1 tokens | Arrow calibrated P / C |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in pha:
        p, a = pha[task], arrow[task]
        lines.append(
            f"| {task} | {percent(p['routed_right'])} | {percent(p['calibrated']['precision'])} / "
            f"{percent(p['calibrated']['coverage'])} | {percent(a['routed_right'])} | {percent(a['own_weight'])} | "
            f"{percent(a['own_top1_tokens'])} | {percent(a['calibrated']['precision'])} / {percent(a['calibrated']['coverage'])} |"
        )
    po, ao = results["pha"]["overall"], results["arrow"]["overall"]
    lines.append(
        f"| **all examples** | {percent(po['routed_right'])} | {percent(po['calibration']['all_precision'])} / "
        f"{percent(po['calibration']['all_coverage'])} | {percent(ao['routed_right'])} | {percent(ao['own_weight'])} | – | "
        f"{percent(ao['calibration']['all_precision'])} / {percent(ao['calibration']['all_coverage'])} |"
    )
    return "\n".join(lines)


def predictions_table(results: dict[str, dict[str, Any]]) -> str:
    """Task scores of the final predictions per task, labelled against unlabelled, both models."""
    pha, arrow = results["pha"]["per_task"], results["arrow"]["per_task"]
    lines = [
        "| task | PHA labelled | PHA routed adapters | PHA label-free | PHA calibrated (labelled) | "
        "task_lora labelled | Arrow routed adapters | Arrow label-free | Arrow calibrated (labelled) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(row: dict[str, Any]) -> str:
        c = row["calibrated"]
        return (
            f"{score(row['labelled'])} | {score(row['routed_adapters'])} | {score(row['label_free'])} | "
            f"{score(c['label_free'])} ({score(c['labelled'])})"
        )

    for task in pha:
        lines.append(f"| {task} | {cells(pha[task])} | {cells(arrow[task])} |")
    po, ao = results["pha"]["overall"], results["arrow"]["overall"]
    avg = lambda o: f"{score(o['labelled'])} | {score(o['routed_adapters'])} | {score(o['label_free'])} | –"  # noqa: E731
    lines.append(f"| **avg** | {avg(po)} | {avg(ao)} |")
    return "\n".join(lines)


COLLECT = {"pha": collect_pha, "arrow": collect_arrow}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pha-ckpt", required=True, help="a pha run's checkpoint (its best)")
    parser.add_argument("--task-lora-ckpt", required=True, help="a task_lora run's checkpoint: Arrow's library")
    parser.add_argument("--data-dir", help="the data directory, instead of the one the checkpoints recorded")
    parser.add_argument("--output-dir", type=Path, default=Path("results/routing/arrow"))
    parser.add_argument("--cache", type=Path, required=True, help="folder for each model's outputs (read if present)")
    parser.add_argument(
        "--test-max-examples", type=int, default=300, help="test examples per task, a fixed random draw (None: all)"
    )
    parser.add_argument(
        "--arrow-validation-max-examples",
        type=int,
        help="validation examples per task Arrow is calibrated on, a fixed random draw (default: all; PHA uses all)",
    )
    parser.add_argument(
        "--only",
        choices=list(COLLECT),
        help="only run this model over the splits into the cache (two processes side by side) and print its "
        "routing and scores over all tasks; no report written",
    )
    parser.add_argument("--target-precision", type=float, default=RoutingConfig().target_precision)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    collected = {name: collect(args) for name, collect in COLLECT.items() if args.only in (None, name)}
    config = RoutingConfig(target_precision=args.target_precision)
    if args.only is not None:  # this model's routing and scores over all tasks, no report
        tasks, data = collected[args.only]
        overall = evaluate(tasks, args.only, data, config)["overall"]
        print(json.dumps({k: v for k, v in overall.items() if k != "own_weight_by_site"}, indent=1))
        return
    tasks, data = collected["pha"][0], {name: found[1] for name, found in collected.items()}
    if [t.name for t in collected["arrow"][0]] != [t.name for t in tasks]:
        raise SystemExit(
            f"--task-lora-ckpt holds tasks {[t.name for t in collected['arrow'][0]]}, --pha-ckpt "
            f"{[t.name for t in tasks]}; both runs must be of the same task mix"
        )
    results = {name: evaluate(tasks, name, data[name], config) for name in ("pha", "arrow")}
    results["settings"] = {
        "pha_checkpoint": "<pha run>/checkpoints/" + Path(args.pha_ckpt).name,
        "task_lora_checkpoint": "<task_lora run>/checkpoints/" + Path(args.task_lora_ckpt).name,
        "test_max_examples_per_task": args.test_max_examples,
        "arrow_validation_max_examples_per_task": args.arrow_validation_max_examples,
        "target_precision": args.target_precision,
        "examples": {split: len(data["pha"][split]["task_ids"]) for split in SPLITS},
    }
    write_portable(args.output_dir / "results.json", json.dumps(results, indent=1) + "\n")
    tables = (
        f"## Routing, test\n\n{per_task_table(results)}\n\n## Final predictions, test\n\n{predictions_table(results)}\n"
    )
    write_portable(args.output_dir / "tables.md", tables)
    print(tables)


if __name__ == "__main__":
    main()
