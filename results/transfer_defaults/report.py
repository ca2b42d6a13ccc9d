"""Tables of the transfer-defaults study (NOTES.md): every init × tune arm and the fresh baselines,
mean ± std over seeds, and paired differences with each seed's value.

    python results/transfer_defaults/report.py   # writes results/transfer_defaults/table.md

Rows: ``<target>/tune_<tune>/runs.jsonl`` (PHA transfers, one folder per ``--tune``) and
``<target>/fresh/runs.jsonl`` (fresh adapter / LoRA) beside this file, and the held-out tasks of the
many-task grid from ``results/many_tasks/transfer/runs.jsonl`` (tune hypernetwork only).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELD_OUT = HERE.parent / "many_tasks" / "transfer" / "runs.jsonl"
INITS = ("top1", "mix", "mean", "random")
TUNES = ("prototype", "hypernetwork", "all")
ARMS = (*(f"{init}/{tune}" for tune in TUNES for init in INITS), "adapter", "lora", "task_adapter")
#: (a, b): the questions the study asks, read as a − b on the same support set and test split
COMPARISONS = (
    ("top1/hypernetwork", "top1/prototype"),
    ("random/hypernetwork", "random/prototype"),
    ("top1/all", "top1/hypernetwork"),
    ("top1/prototype", "random/prototype"),
    ("top1/hypernetwork", "random/hypernetwork"),
    ("top1/all", "random/all"),
    ("mix/hypernetwork", "top1/hypernetwork"),
    ("mean/hypernetwork", "top1/hypernetwork"),
    ("top1/hypernetwork", "adapter"),
    ("random/hypernetwork", "adapter"),
    ("top1/prototype", "adapter"),
    ("top1/hypernetwork", "lora"),
)
TIE = 0.5  # test points: a difference below this is a tie


def arm(row: dict) -> str:
    variant = row["variant"]
    return f"{variant.removeprefix('pha_')}/{row['tune']}" if variant.startswith("pha_") else variant


def load() -> dict[tuple[str, str, int, int], float]:
    """Test score (×100, the target's mean metric) by (arm, target, k, seed)."""
    files = sorted(HERE.glob("*/*/runs.jsonl")) + ([HELD_OUT] if HELD_OUT.exists() else [])
    scores = {}
    for path in files:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            scores[(arm(row), row["target"], row["k"], row["seed"])] = row["test"]["test/avg"]
    return scores


def means(scores: dict) -> list[str]:
    cells = sorted({(t, k) for _, t, k, _ in scores})
    arms = [a for a in ARMS if any(key[0] == a for key in scores)]
    lines = ["| target | k | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for target, k in cells:
        values = []
        for name in arms:
            got = [v for (a, t, kk, _), v in scores.items() if (a, t, kk) == (name, target, k)]
            spread = f" ± {statistics.stdev(got):.1f}" if len(got) > 1 else ""
            values.append(f"{statistics.mean(got):.1f}{spread}" if got else "—")
        lines.append(f"| {target} | {k} | " + " | ".join(values) + " |")
    return lines


def paired(scores: dict) -> list[str]:
    cells = sorted({(t, k) for _, t, k, _ in scores})
    lines = [
        "| a − b | target | k | mean | per seed |",
        "|---|---|---|---|---|",
    ]
    for a, b in COMPARISONS:
        for target, k in cells:
            seeds = sorted(
                s for (x, t, kk, s) in scores if (x, t, kk) == (a, target, k) and (b, target, k, s) in scores
            )
            if seeds:
                diffs = [scores[(a, target, k, s)] - scores[(b, target, k, s)] for s in seeds]
                each = " ".join(f"{d:+.1f}" for d in diffs)
                lines.append(f"| {a} − {b} | {target} | {k} | {statistics.mean(diffs):+.1f} | {each} |")
    return lines


def pooled(scores: dict, targets: set[str]) -> list[str]:
    lines = ["| a − b | mean | wins / ties / losses | pairs |", "|---|---|---|---|"]
    for a, b in COMPARISONS:
        diffs = [
            v - scores[(b, t, k, s)]
            for (x, t, k, s), v in scores.items()
            if x == a and t in targets and (b, t, k, s) in scores
        ]
        if diffs:
            won, tied = sum(d >= TIE for d in diffs), sum(abs(d) < TIE for d in diffs)
            lines.append(
                f"| {a} − {b} | {statistics.mean(diffs):+.1f} | {won} / {tied} / {len(diffs) - won - tied} | {len(diffs)} |"
            )
    return lines


def main() -> None:
    scores = load()
    held_out = {t for (_, t, _, _) in scores if t in ("cr", "subj", "trec_fine")}
    new = {t for (_, t, _, _) in scores} - held_out
    text = [
        "Test score ×100 (each target's mean metric), mean ± std over seeds; arms are init/tune of PHA",
        "transfer (30 steps, lr 1e-3) and fresh models trained on the k examples alone (30 steps).",
        "",
        *means(scores),
        "",
        f"Paired differences pooled over the new tasks ({', '.join(sorted(new))}) × k × seeds "
        f"(a tie: |a − b| < {TIE}):",
        "",
        *pooled(scores, new),
        "",
        f"The same pooled over the held-out tasks of the many-task grid ({', '.join(sorted(held_out))}; "
        "hypernetwork tuning only):",
        "",
        *pooled(scores, held_out),
        "",
        "Paired differences per target and k, with each seed's value:",
        "",
        *paired(scores),
    ]
    (HERE / "table.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
