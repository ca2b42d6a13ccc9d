"""Routing rules compared on a trained checkpoint: precision and coverage of calibrated routing with abstention.

    python benchmarks/routing_rules.py --ckpt_path <run dir>/checkpoints/<best>.ckpt --data-dir <data dir> \
        --output-dir results/routing/ --unlabelled 300 1000

Embeds the checkpoint's training examples (the ``n_train`` per task it trained on), validation and
test examples once (the retrieval vectors ``z`` and pooled hidden states: the mean at the retrieval
point, its first token, the mean after the embeddings and after each block below it; cached in
``--cache``), then scores every example against every task with each rule:

* ``prototype`` — the released rule: cosine of ``z`` with each task's prototype;
* ``knn`` — the mean cosine of ``z`` with its ``k`` nearest training examples of each task;
* ``multi_prototype`` — the largest cosine with ``c`` k-means centres of each task's training ``z``;
* ``probe`` / ``probe_features`` / ``probe_<feature>`` — a multinomial logistic regression fitted
  after training on the training examples' normalised ``z`` / mean hidden states at the retrieval
  point / another pooled hidden state (``cls``, ``layer0`` … ``layer<split - 1>``); the probe and the
  unlabelled draw below are the package's (``probe_features`` on ``N`` texts is what
  ``model.routing.unlabelled_per_task: N`` ships, docs/routing.md, except that the product keeps the
  novelty floor on the prototype cosine).

``--unlabelled N ...`` fits the same rules (named ``... N=<N>``) on ``N`` unlabelled training texts
per task instead: routing needs only which task a text came from, and each task's training split
holds far more texts than the labelled ones a run trains on. The draw: the task's whole training
split as the checkpoint's data settings carve it (so no validation or test row), shuffled with seed
0, its first ``N`` rows (a larger ``N`` extends a smaller one), less any text that appears verbatim
in a validation or test split; the labelled examples may be among them.

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from studylib.checkpoints import model_and_data, recorded_data
from studylib.reports import write_portable
from studylib.routing import capped, measure, percent
from torch import Tensor
from torch.nn import Module
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torch.utils.hooks import RemovableHandle

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.model.backbone import load_backbone, retrieval_site, site_hidden_states
from pha_lightning.model.calibration import RoutingConfig, RoutingProbe, calibrate, probabilities
from pha_lightning.model.pha import PHAModel
from pha_lightning.model.retriever import masked_mean
from pha_lightning.training.routing_probe import unlabelled_draw, verbatim

SPLITS = ("train", "validation", "test")
UNLABELLED = "unlabelled"
#: per example and split, besides the pooled features: the retrieval vector, the task, the draw bound
NOT_FEATURES = ("z", "task_ids", "bound")
Scorer = Callable[[dict[str, Tensor]], Tensor]
Bank = dict[str, Tensor]


# ---------------------------------------------------------------------------------------- embedding
def pooling_hooks(model: PHAModel, sink: dict[str, list[Tensor]]) -> list[RemovableHandle]:
    """Hooks that add each batch's pooled hidden states to ``sink``: the first token at the
    retrieval point (``cls``) and the mean after the embeddings (``layer0``) and after every block
    below the retrieval point (``layer<i>``). The mean at the retrieval point (``features``, what the
    retriever pools and a routing probe scores) is the model's own (:meth:`PHAModel.retrieval_features`)."""

    def keep(name: str, hidden: Tensor) -> None:
        mask = model.running_batch["attention_mask"]
        sink.setdefault(name, []).append(masked_mean(hidden.float(), mask).cpu())

    def at_retriever(_module: Module, inputs: tuple[Tensor, Tensor], _output: Tensor) -> None:
        sink.setdefault("cls", []).append(inputs[0][:, 0].float().cpu())

    sites = {"layer0": model.backbone.embeddings}
    sites |= {f"layer{i}": retrieval_site(model.backbone, model.family, i) for i in range(1, model.split_layer)}
    handles = [model.retriever.register_forward_hook(at_retriever)]
    for name, site in sites.items():
        handles.append(site.register_forward_hook(lambda _m, _i, out, name=name: keep(name, site_hidden_states(out))))
    return handles


@torch.no_grad()
def embed_loaders(model: PHAModel, loaders: Iterable[DataLoader], frozen: Module | None = None) -> dict[str, Tensor]:
    """``z``, every pooled feature of :func:`pooling_hooks` and the task ids of the loaders' examples;
    with ``frozen`` (the pretrained backbone, no adapter) also its last hidden states' mean
    (``frozen``, the sentence embedding of a sentence-transformers backbone) and first token (``frozen_cls``)."""
    sink: dict[str, list[Tensor]] = {}
    handles = pooling_hooks(model, sink)
    z, features, ids = [], [], []
    try:
        for loader in loaders:
            for batch in loader:
                vectors, pooled = model.retrieval_features(batch)
                z.append(vectors.float().cpu())
                features.append(pooled.cpu())
                ids.append(batch["task_ids"])
                if frozen is not None:
                    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
                    hidden = frozen(**inputs).last_hidden_state.float()
                    sink.setdefault("frozen", []).append(masked_mean(hidden, batch["attention_mask"]).cpu())
                    sink.setdefault("frozen_cls", []).append(hidden[:, 0].cpu())
    finally:
        for handle in handles:
            handle.remove()
    pooled = {"features": torch.cat(features), **{name: torch.cat(parts) for name, parts in sink.items()}}
    return {"z": torch.cat(z), **pooled, "task_ids": torch.cat(ids)}


def add_unlabelled(
    out: dict[str, Any],
    model: PHAModel,
    full: PHADataModule,
    seen: set,
    bounds: list[int],
    cache: Path | None,
    frozen: Module | None,
) -> None:
    """Embed the unlabelled draws up to each of ``bounds`` not yet in ``out`` (rows tagged with their
    bound), saving ``out`` to ``cache`` after each."""
    done = max((c["stop"] for c in out.get("unlabelled_draws", [])), default=0)
    seed = RoutingConfig().probe_seed  # the draw pha fit's routing probe makes
    for stop in (b for b in bounds if b > done):
        loaders, counts = unlabelled_draw(full, seen, done, stop, seed=seed)
        part = embed_loaders(model, [loader for loader in loaders if len(loader.dataset)], frozen)
        part["bound"] = torch.full((len(part["task_ids"]),), stop)
        old = out.get(UNLABELLED)
        out[UNLABELLED] = part if old is None else {k: torch.cat([old[k], part[k]]) for k in part}
        out.setdefault("unlabelled_draws", []).append({"start": done, "stop": stop, "seed": seed, **counts})
        print(f"embedded unlabelled rows {done}:{stop} per task: {len(part['task_ids'])} examples", flush=True)
        if cache is not None:
            torch.save(out, cache)
        done = stop


def embed(
    ckpt_path: str,
    data_dir: str | None,
    test_max: int | None,
    cache: Path | None,
    unlabelled: list[int],
    frozen: bool = False,
) -> dict[str, Any]:
    """Every split's embeddings (:func:`embed_loaders`; ``frozen``: with the pretrained backbone's
    too), the prototypes and task names, and the unlabelled draws of ``unlabelled`` rows per task;
    each part is added to ``cache`` as soon as it is embedded (a rerun starts after it)."""
    out: dict[str, Any] = torch.load(cache, weights_only=True) if cache is not None and cache.exists() else {}
    drawn = {c["stop"] for c in out.get("unlabelled_draws", [])}
    beyond = max(drawn, default=0)
    if any(n < beyond and n not in drawn for n in unlabelled):
        raise SystemExit(f"--unlabelled {unlabelled}: the cache holds the draws up to {sorted(drawn)}; use a new cache")
    if all(split in out for split in SPLITS) and all(n in drawn for n in unlabelled):
        return out
    model, data = model_and_data(ckpt_path, data_dir, ("fit", "test"))
    out |= {"tasks": data.tasks, "prototypes": model.prototypes.table().detach().float().cpu()}
    backbone = load_backbone(model.config.backbone).eval() if frozen else None
    for split in (split for split in SPLITS if split not in out):
        loaders = [capped(loader, test_max if split == "test" else None) for loader in data.task_dataloaders(split)]
        out[split] = embed_loaders(model, loaders, backbone)
        print(f"embedded {split}: {len(out[split]['task_ids'])} examples", flush=True)
        if cache is not None:
            torch.save(out, cache)
    if unlabelled:
        full = recorded_data(read_checkpoint(ckpt_path), data_dir, ("fit",), n_train=None, percent_train=None)
        add_unlabelled(out, model, full, verbatim(data), sorted(set(unlabelled)), cache, backbone)
    return out


def bank_of(emb: dict[str, Any], bound: int | None) -> Bank:
    """The examples a rule is fitted on: the checkpoint's labelled training examples (``None``), or
    the unlabelled draw of ``bound`` rows per task."""
    if bound is None:
        return emb["train"]
    rows = emb[UNLABELLED]["bound"] <= bound
    return {key: value[rows] for key, value in emb[UNLABELLED].items()}


# ---------------------------------------------------------------------------------------- rules
def prototype_rule(prototypes: Tensor) -> Scorer:
    keys = F.normalize(prototypes, dim=-1)
    return lambda split: F.normalize(split["z"], dim=-1) @ keys.T


def knn_rule(bank: Bank, num_tasks: int, k: int, chunk: int = 1024) -> Scorer:
    """Each task's score: the mean cosine of ``z`` with its ``k`` nearest examples of that task in ``bank``."""
    points, ids = F.normalize(bank["z"], dim=-1), bank["task_ids"]
    per_task = [points[ids == t] for t in range(num_tasks)]

    def score(split: dict[str, Tensor]) -> Tensor:
        z = F.normalize(split["z"], dim=-1)
        parts = []
        for rows in z.split(chunk):  # (chunk, bank) similarities at a time
            parts.append(torch.stack([(rows @ p.T).topk(min(k, len(p)), dim=-1).values.mean(-1) for p in per_task], -1))
        return torch.cat(parts)

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


def multi_prototype_rule(bank: Bank, num_tasks: int, centres: int) -> Scorer:
    points, ids = F.normalize(bank["z"], dim=-1), bank["task_ids"]
    keys = [kmeans(points[ids == t], centres) for t in range(num_tasks)]

    def score(split: dict[str, Tensor]) -> Tensor:
        z = F.normalize(split["z"], dim=-1)
        return torch.stack([(z @ k.T).max(-1).values for k in keys], -1)

    return score


def probe_rule(bank: Bank, num_tasks: int, key: str, weight_decay: float) -> Scorer:
    """A probe (:class:`~pha_lightning.model.calibration.RoutingProbe`, what ``model.routing.unlabelled_per_task``
    ships for ``features``) on the normalised ``z`` or on a pooled feature, centred on the bank's mean."""
    shipped = RoutingConfig()  # the fit's other settings are the product's defaults
    probe = RoutingProbe.fit(
        bank[key], bank["task_ids"], num_tasks, weight_decay, shipped.probe_steps, shipped.probe_seed, centre=key != "z"
    )
    return lambda split: probe.scores(split[key])


def probe_name(key: str) -> str:
    return {"z": "probe", "features": "probe_features"}.get(key, f"probe_{key}")


def candidate_rules(emb: dict[str, Any], unlabelled: list[int]) -> dict[str, Scorer]:
    """Every rule measured: the released prototype, and each fitted rule on the labelled training
    examples and on every unlabelled draw (named ``... N=<rows per task>``)."""
    num = len(emb["tasks"])
    rules = {"prototype": prototype_rule(emb["prototypes"])}
    for bound in [None, *sorted(set(unlabelled))]:
        bank, suffix = bank_of(emb, bound), "" if bound is None else f" N={bound}"
        keys = [k for k in bank if k not in NOT_FEATURES and all(k in emb[s] for s in SPLITS[1:])]
        for k in (1, 5, 10, 20):
            rules[f"knn k={k}{suffix}"] = knn_rule(bank, num, k)
        for c in (1, 2, 4, 8):  # c=1: the mean of each task's training z
            rules[f"multi_prototype c={c}{suffix}"] = multi_prototype_rule(bank, num, c)
        for decay in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
            for key in ["z", *keys]:
                rules[f"{probe_name(key)} wd={decay:g}{suffix}"] = probe_rule(bank, num, key, decay)
    return rules


# ---------------------------------------------------------------------------------------- measuring
def shipped_probes(
    emb: dict[str, Any], candidates: dict[str, Scorer], unlabelled: list[int], config: RoutingConfig
) -> dict[str, dict[str, Any]]:
    """What ``model.routing.unlabelled_per_task: N`` routes, for every ``N`` drawn: the rule
    ``probe_features`` at the setting's weight decay, its novelty floor on the prototype cosine (as
    the product keeps it) instead of the probe's own logits. Measured apart: not a candidate."""
    prototype = prototype_rule(emb["prototypes"])
    tasks, out = list(emb["tasks"]), {}
    for n in sorted(set(unlabelled)):
        name = f"{probe_name('features')} wd={RoutingConfig().probe_weight_decay:g} N={n}"
        val, test = emb["validation"], emb["test"]
        scorer = candidates[name]
        calibration = calibrate(scorer(val), val["task_ids"], tasks, config, similarity=prototype(val))
        measured = measure(scorer(test), test["task_ids"], calibration, similarity=prototype(test))
        out[name] = {
            "validation": calibration.validation,
            "test": {k: v for k, v in measured.items() if k != "per_task"},
            "groups": calibration.groups,
            "threshold": calibration.threshold,
            "similarity_floor": calibration.similarity_floor,
        }
        print(f"shipped {name} (prototype floor): {json.dumps(out[name])}", flush=True)
    return out


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
    parser.add_argument(
        "--unlabelled",
        type=int,
        nargs="*",
        default=[],
        help="also fit the rules on this many unlabelled training texts per task (several: one draw, nested)",
    )
    parser.add_argument(
        "--frozen",
        action="store_true",
        help="also pool the pretrained backbone's last hidden states (a new cache: every split is embedded so)",
    )
    parser.add_argument("--target-precision", type=float, default=RoutingConfig().target_precision)
    parser.add_argument("--group-confusion", type=float, default=RoutingConfig().group_confusion)
    args = parser.parse_args()
    emb = embed(args.ckpt_path, args.data_dir, args.test_max_examples, args.cache, args.unlabelled, args.frozen)
    config = RoutingConfig(target_precision=args.target_precision, group_confusion=args.group_confusion)
    tasks = list(emb["tasks"])
    rows, curves = {}, {}
    candidates = candidate_rules(emb, args.unlabelled)
    for name, scorer in candidates.items():
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
    shipped = shipped_probes(emb, candidates, args.unlabelled, config)
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
        "shipped_probe": shipped,
        "unlabelled_draws": [
            {k: dict(zip(tasks, v)) if isinstance(v, list) else v for k, v in draw.items()}
            for draw in emb.get("unlabelled_draws", [])
            if draw["stop"] <= max(args.unlabelled, default=0)
        ],
    }
    write_portable(args.output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_portable(args.output_dir / "rules.json", json.dumps(rows, indent=1) + "\n")
    write_portable(args.output_dir / "rules.md", rules_table(rows) + "\n")
    (args.output_dir / "per_task.md").write_text(
        per_task_table(tasks, rows["prototype"]["test"], best["test"], chosen) + "\n"
    )
    shown = {"prototype", chosen}  # and the best fitted on each bank (labelled, every unlabelled draw)
    for suffix in ["", *(f" N={n}" for n in sorted(set(args.unlabelled)))]:
        fitted = [n for n in rows if n != "prototype" and (n.endswith(suffix) if suffix else "N=" not in n)]
        shown.add(max(fitted, key=lambda n: rows[n]["validation"]["coverage"]))
    plot({name: curves[name] for name in rows if name in shown}, args.target_precision, args.output_dir / "curve.png")
    print(rules_table(rows))
    print(json.dumps({k: v for k, v in summary.items() if k != "released"}, indent=1))


if __name__ == "__main__":
    main()
