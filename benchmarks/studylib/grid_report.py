"""The report of a methods × sizes × seeds grid (sample_efficiency.py's studies), from its rows:
``table.md`` (per-task means, paired differences of PHA's variants against their baselines on the
same seeds, one line per run), the validation-only screening table, and ``plot.png``."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

from studylib.reports import mean_std, number


def collapsed(row: dict) -> bool:
    return bool(row.get("health") and row["health"]["warnings"])


def task_scores(row: dict) -> dict[str, float]:
    """Each task's mean test metric (the quantity ``test/avg`` averages), plus ``avg``."""
    per_task: dict[str, list[float]] = {}
    for key, value in row["test"].items():
        parts = key.split("/")
        if len(parts) == 3:
            per_task.setdefault(parts[1], []).append(value)
    scores = {task: statistics.mean(values) for task, values in per_task.items()}
    scores["avg"] = row["test"]["test/avg"]
    return scores


def summarise(rows: list[dict]) -> dict[tuple[str, int], dict[str, list[float]]]:
    groups: dict[tuple[str, int], dict[str, list[float]]] = {}
    for row in rows:
        cell = groups.setdefault((row["method"], row["n_train"]), {})
        for task, score in task_scores(row).items():
            cell.setdefault(task, []).append(score)
    return groups


def write_table(rows: list[dict], path: Path, candidates: tuple[str, ...] = ()) -> str:
    """``table.md``: per-task means, paired differences (:func:`paired_cells`, ``candidates`` also
    paired with every other method) and one line per run."""
    groups = summarise(rows)
    tasks = sorted({t for cell in groups.values() for t in cell if t != "avg"})
    params = {row["method"]: row["trainable_params"] for row in rows}
    header = ["method", "n_train", "seeds", "trainable params", *tasks, "avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (method, n_train), cell in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        values = [mean_std(cell[t]) if t in cell else "—" for t in [*tasks, "avg"]]
        lines.append(f"| {method} | {n_train} | {len(cell['avg'])} | {params[method]:,} | " + " | ".join(values) + " |")
    text = "Test metrics ×100, mean ± std over seeds (each task's mean metric; avg = mean over tasks).\n\n" + "\n".join(
        lines
    )
    text += (
        "\n\n"
        + paired_differences(rows, candidates=candidates)
        + "\n\n"
        + paired_task_differences(rows, candidates=candidates)
        + "\n\nEvery run (collapsed: its health report warned, docs/training_health.md):\n\n"
        + runs_table(rows)
    )
    path.write_text(text + "\n")
    return text


def is_pha_family(method: str) -> bool:
    """PHA and its variants (ablations, PHA-LoRA), as opposed to the baselines they are compared with."""
    return method.startswith("pha")


def references_for(method: str) -> tuple[str, ...]:
    """The PHA variants a method is paired with: a ``<method>+label_words`` baseline with the PHA
    of the same output structure (``pha+label_words``); PHA's own variants (ablations, PHA-LoRA)
    with ``pha``; every other baseline with both generator outputs, ``pha`` and ``pha_lora``."""
    if "+" in method:
        return ("pha" + method[method.index("+") :],)
    return ("pha",) if is_pha_family(method) else ("pha", "pha_lora")


def paired_cells(
    keys: set[tuple[str, int, int]], candidates: tuple[str, ...] = ()
) -> Iterator[tuple[int, str, str, list[int]]]:
    """``(n_train, reference, baseline, seeds)`` for every baseline run on some of a reference's
    seeds (:func:`references_for`, and every method against each of ``candidates``, a variant
    that is to be compared with all of them) at that n_train; ``keys`` are the runs'
    ``(method, n_train, seed)``."""
    for n_train in sorted({n for _, n, _ in keys}):
        for method in sorted({m for m, n, _ in keys if n == n_train}):
            for reference in dict.fromkeys((*references_for(method), *candidates)):
                if method == reference:
                    continue
                seeds = sorted(s for m, n, s in keys if m == method and n == n_train and (reference, n, s) in keys)
                if seeds:
                    yield n_train, reference, method, seeds


def paired_differences(rows: list[dict], tie: float = 0.5, candidates: tuple[str, ...] = ()) -> str:
    """Per n_train, each PHA variant − its baselines on the same seeds (:func:`paired_cells`): mean
    difference of the test average, and wins / ties / losses (|difference| < ``tie`` is a tie)."""
    scores = {(r["method"], r["n_train"], r["seed"]): r["test"]["test/avg"] for r in rows}
    lines = [
        f"Paired differences of the test average, PHA variant − baseline, on the same seeds (tie: |d| < {tie}).",
        "",
        "| n_train | PHA variant | baseline | seeds | mean d | per seed | wins / ties / losses |",
        "|---|---|---|---|---|---|---|",
    ]
    for n_train, reference, method, seeds in paired_cells(set(scores), candidates):
        diffs = [scores[(reference, n_train, s)] - scores[(method, n_train, s)] for s in seeds]
        wins, ties = sum(d >= tie for d in diffs), sum(abs(d) < tie for d in diffs)
        per_seed = " ".join(f"{d:+.1f}" for d in diffs)
        lines.append(
            f"| {n_train} | {reference} | {method} | {len(seeds)} | {statistics.mean(diffs):+.1f} | {per_seed} | "
            f"{wins} / {ties} / {len(diffs) - wins - ties} |"
        )
    return "\n".join(lines)


def paired_task_differences(rows: list[dict], candidates: tuple[str, ...] = ()) -> str:
    """Where the paired differences come from: per n_train and pair (:func:`paired_cells`), the
    mean over the shared seeds of PHA variant − baseline on each task's mean test metric."""
    scores = {(r["method"], r["n_train"], r["seed"]): task_scores(r) for r in rows}
    tasks = sorted({t for cell in scores.values() for t in cell if t != "avg"})
    header = ["n_train", "PHA variant", "baseline", "seeds", *tasks, "avg"]
    lines = [
        "Per task, mean paired difference PHA variant − baseline (test metric ×100).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for n_train, reference, method, seeds in paired_cells(set(scores), candidates):
        pairs = [(scores[(reference, n_train, s)], scores[(method, n_train, s)]) for s in seeds]
        cells = [
            f"{statistics.mean(ours[t] - theirs[t] for ours, theirs in pairs):+.1f}"
            if all(t in ours and t in theirs for ours, theirs in pairs)
            else "—"
            for t in [*tasks, "avg"]
        ]
        lines.append(f"| {n_train} | {reference} | {method} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(rows: list[dict]) -> str:
    """One line per run: test average, the tested checkpoint's step, health, and a collapse mark."""
    lines = [
        "| run | lr | test avg | best step / last | best val avg | top-axis share | adapter/residual (LoRA: update/frozen) | collapsed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["n_train"], r["method"], r["seed"])):
        health = row.get("health") or {}
        cells = [
            row["run_id"],
            row.get("learning_rate") or "—",
            f"{row['test']['test/avg']:.1f}",
            f"{row.get('best_step', '—')} / {row.get('last_step', '—')}",
            number(row.get("best_val_avg"), ".1f"),
            number(health.get("max_top_axis_share"), ".2f"),
            number(_first_present(health.get("max_adapter_to_residual"), health.get("max_lora_to_base")), ".2f"),
            "yes" if collapsed(row) else "",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


#: the rows a screening is compared with: PHA's and PHA-LoRA's in the reference grid
SCREENING_REFERENCES: tuple[str, ...] = ("pha", "pha_lora")


def screening_table(rows: list[dict], references: list[dict], seed: int = 0) -> str:
    """Validation only, never test: each run's best validation average at ``seed`` and its health
    signature, beside PHA's and PHA-LoRA's rows of the reference grid (at their chosen rates)."""
    baseline = {r["n_train"]: r["best_val_avg"] for r in references if r["method"] == "pha" and r["seed"] == seed}
    picked = [r for r in references if r["method"] in SCREENING_REFERENCES] + rows
    lines = [
        f"Screening on validation (seed {seed}; the best validation checkpoint's val/avg; test is never read).",
        "",
        "| n_train | method | lr | val avg | Δ val vs pha | best step / last | top-axis share | "
        "adapter/residual (LoRA: update/frozen) | between-task spread per layer | commit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted((r for r in picked if r["seed"] == seed), key=lambda r: (r["n_train"], r["method"])):
        health, val = row.get("health") or {}, row.get("best_val_avg")
        reference = baseline.get(row["n_train"])
        spread = health.get("between_task_spread")
        cells = [
            row["n_train"],
            row["method"],
            row.get("learning_rate") or "—",
            number(val, ".1f"),
            "—" if val is None or reference is None else f"{val - reference:+.1f}",
            f"{row.get('best_step', '—')} / {row.get('last_step', '—')}",
            number(health.get("max_top_axis_share"), ".2f"),
            number(_first_present(health.get("max_adapter_to_residual"), health.get("max_lora_to_base")), ".2f"),
            " ".join(f"{v:.2f}" for v in spread) if spread else "—",
            row.get("git_commit", "")[:8],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _first_present(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def method_styles(methods: list[str]) -> dict[str, dict[str, str]]:
    """One distinct (colour, line, marker) per method: PHA's family solid with circles, baselines
    dashed with squares, so eleven methods never share a look (the default colour cycle has ten)."""
    import matplotlib

    colours = matplotlib.colormaps["tab20"].colors
    return {
        method: {
            "color": matplotlib.colors.to_hex(colours[(2 * i) % 20 + (2 * i) // 20 % 2]),
            "linestyle": "-" if is_pha_family(method) else "--",
            "marker": "o" if is_pha_family(method) else "s",
        }
        for i, method in enumerate(sorted(methods))
    }


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = summarise(rows)
    methods = sorted({m for m, _ in groups})
    styles = method_styles(methods)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, method in enumerate(methods):
        sizes = sorted(n for m, n in groups if m == method)
        scores = [groups[(method, n)]["avg"] for n in sizes]
        stds = [statistics.stdev(s) if len(s) > 1 else 0 for s in scores]
        dodge = 1 + 0.012 * (i - (len(methods) - 1) / 2)  # side by side: error bars at one size never overlap
        seeds = "/".join(str(len(s)) for s in scores)
        ax.errorbar(
            [n * dodge for n in sizes],
            [statistics.mean(s) for s in scores],
            yerr=stds,
            capsize=3,
            label=f"{method} ({seeds} seed{'' if seeds == '1' else 's'})",
            **styles[method],
        )
    all_sizes = sorted({n for _, n in groups})
    ax.set_xscale("log")
    ax.set_xticks(all_sizes, [str(n) for n in all_sizes])
    ax.minorticks_off()
    ax.set_xlabel("training examples per task (n_train)")
    ax.set_ylabel("average test score (mean ± std over seeds)")
    ax.set_title("Sample efficiency")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)  # outside: never over the data
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
