"""Routing rules compared on a trained checkpoint: precision and coverage of calibrated routing with abstention.

    python benchmarks/routing_rules.py --ckpt_path <run dir>/checkpoints/<best>.ckpt --data-dir <data dir> \
        --output-dir results/routing/

Embeds the checkpoint's training examples (the ``n_train`` per task it trained on), validation and
test examples once (the retrieval vectors ``z`` and the mean hidden state at the retrieval point,
cached in ``--cache``), then scores every example against every task with each rule:

* ``prototype`` — the released rule: cosine of ``z`` with each task's prototype;
* ``knn`` — the mean cosine of ``z`` with its ``k`` nearest training examples of each task;
* ``multi_prototype`` — the largest cosine with ``c`` k-means centres of each task's training ``z``;
* ``probe`` / ``probe_features`` — a multinomial logistic regression fitted after training on the
  training examples' normalised ``z`` / mean hidden states at the retrieval point (weight decay
  chosen on validation).

Each rule is calibrated on validation exactly as ``pha fit`` calibrates the model
(:func:`pha_lightning.model.calibration.calibrate`: temperature, confusable groups, novelty
floor, threshold for ``--target-precision``); the rule is chosen by its validation coverage (the
precision being held at the target), and tested once. Writes ``summary.json`` (the chosen rule's
test precision and coverage over the tasks outside confusable groups, at the level of groups over
all tasks, and over all tasks; the groups; the threshold), ``rules.json`` and ``rules.md`` (every
rule, validation and test), ``per_task.md`` (per task, released and chosen rule) and
``curve.png`` (precision against coverage over all tasks as the threshold moves).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from studylib.checkpoints import model_and_data
from studylib.reports import write_portable
from studylib.routing import capped, measure, percent
from torch import Tensor
from torch.nn import functional as F

from pha_lightning.model.calibration import (
    RoutingConfig,
    calibrate,
    probabilities,
)
from pha_lightning.model.retriever import masked_mean

SPLITS = ("train", "validation", "test")
Scorer = Callable[[dict[str, Tensor]], Tensor]


# ---------------------------------------------------------------------------------------- embedding
@torch.no_grad()
def embed(ckpt_path: str, data_dir: str | None, test_max: int | None, cache: Path | None) -> dict[str, Any]:
    """``z``, pooled retrieval-point features and task ids of every split, the prototypes and task
    names; each split is added to ``cache`` as soon as it is embedded (a rerun starts after it)."""
    out: dict[str, Any] = torch.load(cache, weights_only=True) if cache is not None and cache.exists() else {}
    if all(split in out for split in SPLITS):
        return out
    model, data = model_and_data(ckpt_path, data_dir, ("fit", "test"))
    features: list[Tensor] = []
    hook = model.retriever.register_forward_hook(
        lambda _m, inputs, _out: features.append(masked_mean(inputs[0].float(), inputs[1]).cpu())
    )
    out |= {"tasks": data.tasks, "prototypes": model.prototypes.table().detach().float().cpu()}
    try:
        for split in (split for split in SPLITS if split not in out):
            z, ids = [], []
            for loader in data.task_dataloaders(split):
                for batch in capped(loader, test_max if split == "test" else None):
                    z.append(model.retrieval_forward(batch).float().cpu())
                    ids.append(batch["task_ids"])
            pooled = torch.cat(features)
            features.clear()
            out[split] = {"z": torch.cat(z), "features": pooled, "task_ids": torch.cat(ids)}
            print(f"embedded {split}: {len(out[split]['task_ids'])} examples", flush=True)
            if cache is not None:
                torch.save(out, cache)
    finally:
        hook.remove()
    return out


# ---------------------------------------------------------------------------------------- rules
def prototype_rule(emb: dict[str, Any]) -> Scorer:
    keys = F.normalize(emb["prototypes"], dim=-1)
    return lambda split: F.normalize(split["z"], dim=-1) @ keys.T


def knn_rule(emb: dict[str, Any], k: int) -> Scorer:
    train = emb["train"]
    bank, ids, num = F.normalize(train["z"], dim=-1), train["task_ids"], len(emb["tasks"])

    def score(split: dict[str, Tensor]) -> Tensor:
        sims = F.normalize(split["z"], dim=-1) @ bank.T
        return torch.stack(
            [sims[:, ids == t].topk(min(k, int((ids == t).sum())), dim=-1).values.mean(-1) for t in range(num)], -1
        )

    return score


def kmeans(points: Tensor, centres: int, steps: int = 50, seed: int = 0) -> Tensor:
    """Spherical k-means centres (unit vectors) of unit ``points``."""
    generator = torch.Generator().manual_seed(seed)
    means = points[torch.randperm(len(points), generator=generator)[:centres]].clone()
    for _ in range(steps):
        assign = (points @ means.T).argmax(-1)
        for c in range(len(means)):
            if (assign == c).any():
                means[c] = F.normalize(points[assign == c].mean(0), dim=0)
    return means


def multi_prototype_rule(emb: dict[str, Any], centres: int) -> Scorer:
    train = emb["train"]
    points, ids = F.normalize(train["z"], dim=-1), train["task_ids"]
    keys = [kmeans(points[ids == t], centres) for t in range(len(emb["tasks"]))]

    def score(split: dict[str, Tensor]) -> Tensor:
        z = F.normalize(split["z"], dim=-1)
        return torch.stack([(z @ k.T).max(-1).values for k in keys], -1)

    return score


def fit_probe(x: Tensor, y: Tensor, classes: int, weight_decay: float, steps: int = 300) -> torch.nn.Linear:
    """Multinomial logistic regression (full-batch L-BFGS, L2 ``weight_decay``)."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes).double()
    x, y = x.double(), y.long()
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe.eval()


def probe_rule(emb: dict[str, Any], key: str, weight_decay: float) -> Scorer:
    train = emb["train"]
    mean = train[key].mean(0) if key == "features" else 0.0

    def inputs(split: dict[str, Tensor]) -> Tensor:
        return F.normalize(split[key] - mean, dim=-1)

    probe = fit_probe(inputs(train), train["task_ids"], len(emb["tasks"]), weight_decay)
    return lambda split: probe(inputs(split).double()).detach()


def candidate_rules(emb: dict[str, Any]) -> dict[str, Scorer]:
    rules = {"prototype": prototype_rule(emb)}
    for k in (1, 5, 10, 20):
        rules[f"knn k={k}"] = knn_rule(emb, k)
    for c in (1, 2, 4, 8):  # c=1: the mean of each task's training z
        rules[f"multi_prototype c={c}"] = multi_prototype_rule(emb, c)
    for decay in (1e-4, 1e-3, 1e-2):
        rules[f"probe wd={decay:g}"] = probe_rule(emb, "z", decay)
        rules[f"probe_features wd={decay:g}"] = probe_rule(emb, "features", decay)
    return rules


# ---------------------------------------------------------------------------------------- measuring
def curve(scores: Tensor, targets: Tensor, temperature: float) -> tuple[list[float], list[float]]:
    """Precision against coverage over all tasks as the confidence threshold moves (no groups, no floor)."""
    best = probabilities(scores, temperature).max(-1)
    order = best.values.argsort(descending=True)
    hits = (best.indices == targets)[order].double()
    counts = torch.arange(1, len(hits) + 1, dtype=torch.float64)
    return (counts / len(hits)).tolist(), (hits.cumsum(0) / counts).tolist()


def plot(curves: dict[str, tuple[list[float], list[float]]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, (coverage, precision) in curves.items():
        ax.plot(coverage, precision, label=name)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("coverage (share of test examples routed)")
    ax.set_ylabel("precision (routed to their own task)")
    ax.set_title("Routing over all 18 tasks, test split: confidence threshold swept", fontsize=10)
    ax.set_ylim(0.3, 1.01)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rules_table(rows: dict[str, dict[str, Any]]) -> str:
    head = "| rule | val coverage | test distinguishable P / C | test groups P / C | test all P / C | groups |"
    lines = [head, "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        t = row["test"]
        lines.append(
            f"| {name} | {percent(row['validation']['coverage'])} | {percent(t['distinguishable_precision'])} / "
            f"{percent(t['distinguishable_coverage'])} | {percent(t['group_precision'])} / {percent(t['group_coverage'])} | "
            f"{percent(t['all_precision'])} / {percent(t['all_coverage'])} | "
            + "; ".join("{" + ", ".join(g) + "}" for g in row["groups"])
            + " |"
        )
    return "\n".join(lines)


def per_task_table(tasks: list[str], released: dict, chosen: dict, chosen_name: str) -> str:
    lines = [
        f"| task | prototype P | prototype C | {chosen_name} P | {chosen_name} C |",
        "|---|---|---|---|---|",
    ]
    for task in tasks:
        a, b = released["per_task"][task], chosen["per_task"][task]
        lines.append(
            f"| {task} | {percent(a['precision'])} | {percent(a['coverage'])} | {percent(b['precision'])} | {percent(b['coverage'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--data-dir", help="the data directory, instead of the one the checkpoint recorded")
    parser.add_argument("--output-dir", type=Path, default=Path("results/routing"))
    parser.add_argument("--cache", type=Path, help="embeddings cache (.pt): read if present, else written")
    parser.add_argument(
        "--test-max-examples", type=int, default=300, help="test examples per task, a fixed random draw (None: all)"
    )
    parser.add_argument("--target-precision", type=float, default=RoutingConfig().target_precision)
    parser.add_argument("--group-confusion", type=float, default=RoutingConfig().group_confusion)
    args = parser.parse_args()
    emb = embed(args.ckpt_path, args.data_dir, args.test_max_examples, args.cache)
    config = RoutingConfig(target_precision=args.target_precision, group_confusion=args.group_confusion)
    tasks = list(emb["tasks"])
    rows, curves = {}, {}
    for name, scorer in candidate_rules(emb).items():
        val, test = scorer(emb["validation"]), scorer(emb["test"])
        calibration = calibrate(val, emb["validation"]["task_ids"], tasks, config)
        rows[name] = {
            "validation": calibration.validation,
            "test": measure(test, emb["test"]["task_ids"], calibration),
            "groups": calibration.groups,
            "threshold": calibration.threshold,
            "temperature": calibration.temperature,
            "similarity_floor": calibration.similarity_floor,
        }
        curves[name] = curve(test, emb["test"]["task_ids"], calibration.temperature)
        print(f"{name}: validation coverage {percent(calibration.validation['coverage'])}", flush=True)
    chosen = max(rows, key=lambda name: rows[name]["validation"]["coverage"])  # precision held at the target
    args.output_dir.mkdir(parents=True, exist_ok=True)
    best = rows[chosen]
    summary = {
        "rule": chosen,
        "released_rule": "prototype",  # the rule pha's router applies; the others are measured here only
        **{k: v for k, v in best["test"].items() if k != "per_task"},
        "groups": best["groups"],
        "threshold": best["threshold"],
        "temperature": best["temperature"],
        "similarity_floor": best["similarity_floor"],
        "target_precision": args.target_precision,
        "group_confusion": args.group_confusion,
        "released": {k: v for k, v in rows["prototype"]["test"].items() if k != "per_task"}
        | {"groups": rows["prototype"]["groups"], "threshold": rows["prototype"]["threshold"]},
        "checkpoint": "<run dir>/checkpoints/" + Path(args.ckpt_path).name,
        "examples": {split: len(emb[split]["task_ids"]) for split in SPLITS},
        "test_max_examples_per_task": args.test_max_examples,
    }
    write_portable(args.output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_portable(args.output_dir / "rules.json", json.dumps(rows, indent=1) + "\n")
    write_portable(args.output_dir / "rules.md", rules_table(rows) + "\n")
    (args.output_dir / "per_task.md").write_text(
        per_task_table(tasks, rows["prototype"]["test"], best["test"], chosen) + "\n"
    )
    shown = {
        "prototype",
        chosen,
        max((n for n in rows if n.startswith("knn")), key=lambda n: rows[n]["validation"]["coverage"]),
    }
    plot({name: curves[name] for name in rows if name in shown}, args.target_precision, args.output_dir / "curve.png")
    print(rules_table(rows))
    print(json.dumps({k: v for k, v in summary.items() if k != "released"}, indent=1))


if __name__ == "__main__":
    main()
