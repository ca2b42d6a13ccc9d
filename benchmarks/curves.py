"""Validation curves and training health of finished runs, from their TensorBoard logs.

    python benchmarks/curves.py results/converged --runs pha-n100-s0-lr0.001 adapter-n100-s0-lr0.001

For every run directory ``<output-dir>/runs/<run id>`` (as ``sample_efficiency.py`` writes them)
it reads ``val/avg``, the largest top-axis share of the pooled features and the largest
adapter/residual ratio (LoRA: update/frozen output) at each validation, and the training loss;
it writes ``curves.md`` (one table per run) and ``curves.png`` (validation average against
step, one line per run) into the output directory. The TensorBoard logs themselves are not committed; these files are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studylib.reports import write_portable
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_run(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{series: {step: value}}`` of one run, merged over its TensorBoard logs (a resumed run
    logs into a new version folder; the later log wins at the steps both hold)."""
    log_dirs = sorted({path.parent for path in run_dir.rglob("events.out.tfevents.*")})
    if not log_dirs:
        raise SystemExit(f"no TensorBoard log under {run_dir}")
    merged: dict[str, dict[int, float]] = {}
    for log_dir in log_dirs:
        events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            merged.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    tags = list(merged)

    def series(tag: str) -> dict[int, float]:
        return merged.get(tag, {})

    ratios = [series(t) for t in tags if t.startswith(("health/adapter_to_residual/", "health/lora_to_base/"))]
    return {
        "val/avg": series("val/avg"),
        "train/loss": series("train/loss"),
        "max_top_axis_share": series("health/max_top_axis_share"),
        "max_adapter_to_residual": {step: max(r[step] for r in ratios) for step in ratios[0]} if ratios else {},
    }


def nearest_loss(losses: dict[int, float], step: int, window: int) -> float | None:
    """Mean training loss over the ``window`` logged steps up to ``step`` (smooths the batch noise)."""
    recent = [value for s, value in sorted(losses.items()) if s <= step][-window:]
    return sum(recent) / len(recent) if recent else None


def at_validation(series: dict[int, float], step: int) -> float | None:
    """The health value of the validation logged at ``step``: Lightning logs ``val/avg`` at the
    last training step's index and the health callback at the global step, one later."""
    return series.get(step, series.get(step + 1))


def run_table(run_id: str, data: dict[str, dict[int, float]]) -> str:
    lines = [
        f"### {run_id}",
        "",
        "| step | val avg | train loss (mean of last 5 logs) | top-axis share | adapter/residual (LoRA: update/frozen) |",
        "|---|---|---|---|---|",
    ]
    for step, value in sorted(data["val/avg"].items()):
        loss = nearest_loss(data["train/loss"], step, 5)
        share = at_validation(data["max_top_axis_share"], step)
        ratio = at_validation(data["max_adapter_to_residual"], step)
        cells = [
            str(step),
            f"{value:.1f}",
            "—" if loss is None else f"{loss:.3f}",
            "—" if share is None else f"{share:.2f}",
            "—" if ratio is None else f"{ratio:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    best = max(data["val/avg"].items(), key=lambda kv: kv[1], default=None)
    if best:
        lines += ["", f"best validation average {best[1]:.1f} at step {best[0]}"]
    return "\n".join(lines)


def write_plot(curves: dict[str, dict[str, dict[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for run_id, data in curves.items():
        steps = sorted(data["val/avg"])
        ax.plot(steps, [data["val/avg"][s] for s in steps], marker="o", markersize=3, label=run_id)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation average")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="a sample_efficiency.py output directory")
    parser.add_argument("--runs", nargs="+", help="run ids (default: every run under <output_dir>/runs)")
    args = parser.parse_args()
    run_ids = args.runs or sorted(p.name for p in (args.output_dir / "runs").iterdir() if p.is_dir())
    curves = {run_id: read_run(args.output_dir / "runs" / run_id) for run_id in run_ids}
    text = "Validation curves (val/avg, the fixed validation subset) and training health at each validation.\n\n"
    text += "\n\n".join(run_table(run_id, data) for run_id, data in curves.items())
    write_portable(args.output_dir / "curves.md", text + "\n")
    write_plot(curves, args.output_dir / "curves.png")
    print(text)


if __name__ == "__main__":
    main()
