"""Training and evaluation speed of pha-lightning against peft + ``Trainer`` and AdapterHub + ``AdapterTrainer``, in one run.

    python benchmarks/peers.py --data-dir <data dir> --adapters-python /work/venv-adapters/bin/python \\
        --output results/peers/minilm.md

Same machine, same MiniLM, same examples: the training batches are drawn once from the project's
data module (the five local GLUE tasks, ``--n-train`` examples each, temperature-sampled mixed
batches of 32) and every tool trains on exactly those examples; evaluation runs every tool on the
same validation examples in the same batches of 128 (the project's order: per task, longest first).

* ``ours_*``: the project's system (``PHAModule``) under a Lightning ``Trainer`` as ``pha fit`` makes
  it (its AdamW and linear schedule, clipping 1.0; no logger or callbacks), on the batches as drawn;
* ``peft_lora``: one peft ``LoraModel`` with our LoRA settings (targets, r, alpha, dropout) + the
  same per-task heads, trained by the HF ``Trainer`` on the same examples in the same order,
  padded by ``DataCollatorWithPadding`` (identical batches: ours are padded the same way before
  chunking); ``ours_lora_padded`` is ours with chunking off (the peers' padded batches),
  ``ours_pha_fused_adamw`` PHA with ``model.optim.adamw_kernel: fused``; ``*_grouped``: the same with the Trainer's length grouping (``group_by_length``);
* ``adapterhub``: AdapterHub's parallel bottleneck adapter (``par_bn``, the reduction factor of our
  ``adapter_dim``, scaling 1.0: our ``adapter`` exactly, see ``formats/adapterhub.py``) + the
  same heads, trained by ``AdapterTrainer`` in ``--adapters-python`` (``adapters`` pins
  transformers 4.57; the worker, ``peers_worker.py``, runs there and exchanges files and JSON).

Each measurement is a fresh process with one torch thread; variants alternate order between
rounds and ratios are taken within a round. A step is timed from the trainer's step-begin to its
step-end hook (forward, backward, clipping, optimizer and scheduler step), after ``--warmup``
untimed steps; throughput counts real (non-padding) tokens only. CPU time is the headline (two
shared cores: the wall clock measures the other processes). Each round also times fp32 matrix
multiplies of the model's shapes (``gemm``), and in the first round every tool's training and
evaluation FLOPs are counted (``FlopCounterMode``), so the table states each one's share of the
measured GEMM peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from studylib.reports import command_line, write_report
from studylib.timing import load_average
from studylib.workloads import BACKBONE, SUITES, build, time_evaluation

WORKER = Path(__file__).with_name("peers_worker.py")
#: variant → (tool, project method, length grouping, the project's settings: ``arch`` and ``optim`` keyword arguments)
VARIANTS: dict[str, tuple[str, str, bool, dict]] = {
    "ours_lora": ("ours", "lora", False, {}),
    "ours_lora_padded": ("ours", "lora", False, {"arch": {"chunk_cost_tokens": None}}),
    "peft_lora": ("peft", "lora", False, {}),
    "peft_lora_grouped": ("peft", "lora", True, {}),
    "ours_adapter": ("ours", "adapter", False, {}),
    "ours_pha": ("ours", "pha", False, {}),
    "ours_pha_fused_adamw": ("ours", "pha", False, {"optim": {"adamw_kernel": "fused"}}),
    "adapterhub": ("adapterhub", "adapter", False, {}),
    "adapterhub_grouped": ("adapterhub", "adapter", True, {}),
}
#: (ours, peer) pairs whose ratios the report gives
PAIRS = [
    ("ours_lora", "peft_lora"),
    ("ours_lora", "peft_lora_grouped"),
    ("ours_lora_padded", "peft_lora"),
    ("ours_adapter", "adapterhub"),
    ("ours_adapter", "adapterhub_grouped"),
    ("ours_pha", "adapterhub"),
    ("ours_pha", "adapterhub_grouped"),
    ("ours_pha_fused_adamw", "ours_pha"),
]
#: (M, K, N) of the GEMM microbenchmark: a chunk's tokens through MiniLM's projections, FFN,
#: adapter and LoRA factors, and a large square product for the attainable peak
GEMM_SHAPES = [
    (1024, 384, 384),
    (1024, 384, 1536),
    (1024, 1536, 384),
    (1024, 384, 64),
    (1024, 384, 8),
    (2048, 2048, 2048),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("PHA_DATA_DIR"), help="the GLUE files")
    parser.add_argument(
        "--adapters-python", default=os.environ.get("PHA_ADAPTERS_PYTHON"), help="a Python with adapters"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--n-train", type=int, default=100, help="train examples per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--eval-examples", type=int, default=100, help="validation examples per task")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("results/peers/minilm.md"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args()


# ---------------------------------------------------------------------- the project's side


def build_system(method: str, our_args: dict):
    """The project's system as ``pha fit --config configs/glue_local_minilm.yaml --model.method <method>`` builds it."""
    from pha_lightning.model.config import PHAConfig
    from pha_lightning.training.settings import OptimConfig
    from pha_lightning.training.system import PHAModule

    torch.manual_seed(0)
    arch = PHAConfig(backbone=BACKBONE, tasks=SUITES["glue"]["tasks"], method=method, **our_args.get("arch", {}))
    optim = OptimConfig(learning_rate=3e-4, warmup_steps=100, **our_args.get("optim", {}))
    return PHAModule(arch, optim=optim)


def prepare(args: argparse.Namespace, folder: Path) -> None:
    """Write what every worker reads: the training and evaluation batches, the tasks, each method's initial heads."""
    from pha_lightning.formats.adapterhub import reduction_factor
    from pha_lightning.hub import resolve_backbone_path

    spec = {"suite": "glue", "data_dir": args.data_dir, "n_train": args.n_train, "batch_size": args.batch_size}
    spec |= {"eval_examples": args.eval_examples, "threads": args.threads, "method": "lora", "model_kwargs": {}}
    data, _ = build(spec)
    data.eval_batch_size = args.eval_batch_size
    loader = iter(data.train_dataloader())
    torch.save([next(loader) for _ in range(args.warmup + args.steps)], folder / "train.pt")
    torch.save([list(task) for task in data.val_dataloader()], folder / "eval.pt")
    systems = {method: build_system(method, {}) for method in ("lora", "adapter", "pha")}
    for method, system in systems.items():
        torch.save(system.model.heads.state_dict(), folder / f"heads_{method}.pt")
    model, lora = systems["adapter"].model, systems["lora"].model.config
    tasks = []
    for index, task in enumerate(model.heads.tasks):
        center, half = model.heads.regression_scale(index) if task.is_regression else (0.0, 1.0)
        tasks.append({"name": task.name, "num_labels": task.num_labels, "regression": task.is_regression})
        tasks[-1] |= {"center": center, "half": half}
    meta = {
        "backbone_path": resolve_backbone_path(BACKBONE),
        "tasks": tasks,
        "head_dropout": model.config.head_dropout,
        "loss": {k: getattr(systems["adapter"].loss_config, k) for k in ("label_smoothing", "regression_loss_weight")},
        "lora": {"r": lora.lora_rank, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout},
        "lora_targets": list(lora.lora_targets or ("query", "value")),
        "reduction_factor": reduction_factor(model.d_model, model.config.adapter_dim),
    }
    (folder / "tasks.json").write_text(json.dumps(meta, indent=2))


def flops_of(run) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def our_worker(spec: dict) -> dict:
    """Train and evaluate the project's system on the prepared batches, in this process."""
    from lightning.pytorch import Callback
    from torch.utils.data import DataLoader

    from pha_lightning.training.scripting import quiet_trainer

    folder = Path(spec["folder"])
    batches, evaluation = torch.load(folder / "train.pt"), torch.load(folder / "eval.pt")
    system = build_system(spec["method"], spec["our_args"])
    system.eval()
    with torch.no_grad():
        init_loss = float(system.loss_terms(batches[0])["ce"])
    steps: list[dict] = []

    class StepTimer(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.start = (time.perf_counter(), time.process_time())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            wall, cpu = self.start
            mask = batch["attention_mask"]
            steps.append({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu})
            steps[-1] |= {"real_tokens": int(mask.sum()), "padded_tokens": mask.numel()}

    trainer = quiet_trainer(
        devices=1,
        max_steps=len(batches),
        gradient_clip_val=1.0,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[StepTimer()],
    )
    trainer.fit(system, train_dataloaders=DataLoader(batches, batch_size=None))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sample = batches if spec["count_flops"] else []
    system.train()
    flops = flops_of(lambda: [system.loss_terms(b)["loss"].backward() for b in sample]) if sample else 0.0
    system.zero_grad(set_to_none=True)
    time_evaluation(system, evaluation[:1], False)  # warm-up
    eval_s, eval_cpu_s, _ = time_evaluation(system, evaluation, False)
    eval_flops = flops_of(lambda: time_evaluation(system, evaluation, False)) if sample else None
    tokens = sum(int(b["attention_mask"].sum()) for b in sample)
    optimizer = trainer.optimizers[0]
    return {
        "steps": steps[spec["warmup"] :],
        "train_peak_mib": peak,
        "init_loss": init_loss,
        "trainable_params": system.model.trainable_parameter_counts()[0],
        "train_flops_per_real_token": flops / tokens if tokens else None,
        "eval_s": eval_s,
        "eval_cpu_s": eval_cpu_s,
        "eval_examples": sum(len(b["task_ids"]) for task in evaluation for b in task),
        "eval_flops": eval_flops,
        "optimizer": f"{type(optimizer).__name__} (foreach={optimizer.defaults.get('foreach')}, "
        f"fused={optimizer.defaults.get('fused')})",
        "versions": {"torch": torch.__version__},
    }


def gemm_worker(spec: dict) -> dict:
    """fp32 GFLOP/s (per CPU second and per wall second) of ``torch.mm`` at each of :data:`GEMM_SHAPES`."""
    rates = {}
    for m, k, n in GEMM_SHAPES:
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        torch.mm(a, b, out=out)  # warm-up
        repeats = max(1, int(2e9 // (2 * m * k * n)))  # about 2 GFLOP per measurement
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            torch.mm(a, b, out=out)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        flops = 2 * m * k * n * repeats
        rates[f"{m}x{k}x{n}"] = {"gflop_per_cpu_s": flops / cpu / 1e9, "gflop_per_s": flops / wall / 1e9}
    return {"gemm": rates}


def worker(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    load_before = load_average()
    result = gemm_worker(spec) if spec["variant"] == "gemm" else our_worker(spec)
    return {**result, "load_average": [load_before, load_average()]}


# ---------------------------------------------------------------------- the run


def command_for(spec: dict, adapters_python: str | None) -> list[str]:
    tool = VARIANTS[spec["variant"]][0] if spec["variant"] in VARIANTS else "ours"
    if tool == "ours":
        return [sys.executable, __file__, "--worker", json.dumps(spec)]
    python = adapters_python if tool == "adapterhub" else sys.executable
    return [python, str(WORKER), json.dumps(spec)]


def run_measurement(spec: dict, adapters_python: str | None) -> dict:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(spec["threads"]),
    }
    out = subprocess.run(command_for(spec, adapters_python), capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{spec['variant']} (round {spec['round']}) failed:\n{out.stderr[-3000:]}")
    return {**spec, **json.loads(out.stdout.strip().splitlines()[-1])}


def specs(args: argparse.Namespace, folder: Path) -> list[dict]:
    """Every measurement of the run, in order: per round a GEMM measurement, then the variants (alternating order)."""
    meta = json.loads((folder / "tasks.json").read_text())
    common = {"folder": str(folder), "threads": args.threads, "steps": args.steps, "warmup": args.warmup}
    common |= {"batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size}
    common |= {"learning_rate": 3e-4, "warmup_steps": 100}
    common |= {"lora": {**meta["lora"], "targets": meta["lora_targets"]}, "reduction_factor": meta["reduction_factor"]}
    out = []
    for round_ in range(args.rounds):
        out.append({**common, "variant": "gemm", "round": round_})
        for name in args.variants if round_ % 2 == 0 else args.variants[::-1]:
            tool, method, grouped, our_args = VARIANTS[name]
            out.append(
                {**common, "variant": name, "round": round_, "tool": tool, "method": method, "our_args": our_args}
            )
            out[-1] |= {"group_by_length": grouped, "count_flops": round_ == 0}
    return out


def derived(row: dict) -> dict:
    """Throughputs of one measurement from its per-step records."""
    steps = row["steps"]
    real = sum(s["real_tokens"] for s in steps)
    return {
        "train_tok_per_cpu_s": real / sum(s["cpu_s"] for s in steps),
        "train_tok_per_s": real / sum(s["wall_s"] for s in steps),
        "median_step_cpu_s": statistics.median(s["cpu_s"] for s in steps),
        "real_share": real / sum(s["padded_tokens"] for s in steps),
        "eval_ex_per_cpu_s": row["eval_examples"] / row["eval_cpu_s"],
        "eval_ex_per_s": row["eval_examples"] / row["eval_s"],
    }


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if not args.data_dir:
        raise SystemExit("peers.py needs --data-dir (or PHA_DATA_DIR): the GLUE files")
    if any(VARIANTS[v][0] == "adapterhub" for v in args.variants) and not args.adapters_python:
        raise SystemExit(
            "the adapterhub variants need --adapters-python (or PHA_ADAPTERS_PYTHON): a Python with adapters"
        )
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prepare(args, Path(tmp))
        for spec in specs(args, Path(tmp)):
            row = run_measurement(spec, args.adapters_python)
            row |= derived(row) if spec["variant"] != "gemm" else {}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "steps"}), flush=True)
    report(args, rows)


# ---------------------------------------------------------------------- the report


def median_of(rows: list[dict], variant: str, key: str) -> float:
    return statistics.median(r[key] for r in rows if r["variant"] == variant)


def ratio(rows: list[dict], ours: str, peer: str, key: str) -> str:
    """Median (and range) over rounds of ``ours``'s ``key`` over ``peer``'s in the same round."""
    peers = {r["round"]: r[key] for r in rows if r["variant"] == peer}
    values = [r[key] / peers[r["round"]] for r in rows if r["variant"] == ours and r["round"] in peers]
    if not values:
        return "–"
    return f"{statistics.median(values):.2f}" + (f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else "")


def gemm_peak(rows: list[dict]) -> tuple[dict[str, tuple[float, float]], float]:
    """Per shape the median GFLOP/CPU-s and GFLOP/s over rounds, and the peak: the best shape's median per CPU-s."""
    gemm = [r["gemm"] for r in rows if r["variant"] == "gemm"]
    shapes = {
        shape: (
            statistics.median(g[shape]["gflop_per_cpu_s"] for g in gemm),
            statistics.median(g[shape]["gflop_per_s"] for g in gemm),
        )
        for shape in gemm[0]
    }
    return shapes, max(cpu for cpu, _ in shapes.values())


def flop_cells(row: dict, peak: float) -> tuple[str, str]:
    """Achieved training and evaluation GFLOP per CPU second, and their share of the GEMM peak."""
    train = row["train_flops_per_real_token"] * row["train_tok_per_cpu_s"] / 1e9
    evaluation = row["eval_flops"] / row["eval_cpu_s"] / 1e9
    return f"{train:.1f} ({100 * train / peak:.0f} %)", f"{evaluation:.1f} ({100 * evaluation / peak:.0f} %)"


def variant_lines(rows: list[dict], peak: float) -> list[str]:
    lines = [
        "| variant | trainable params | loss at init | train real tok/CPU-s | train real tok/s (wall) | "
        "median step CPU-s | real-token share | peak MiB | eval ex/CPU-s | eval ex/s (wall) | "
        "train FLOPs/real token | train GFLOP/CPU-s (% of peak) | eval GFLOP/CPU-s (% of peak) | optimizer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["variant"] for r in rows if r["variant"] != "gemm"):
        first = next(r for r in rows if r["variant"] == name and r["count_flops"])
        train_flops, eval_flops = flop_cells(first, peak)
        cells = [
            name,
            f"{first['trainable_params']:,}",
            f"{first['init_loss']:.6f}",
            f"{median_of(rows, name, 'train_tok_per_cpu_s'):.0f}",
            f"{median_of(rows, name, 'train_tok_per_s'):.0f}",
            f"{median_of(rows, name, 'median_step_cpu_s'):.3f}",
            f"{median_of(rows, name, 'real_share'):.2f}",
            f"{median_of(rows, name, 'train_peak_mib'):.0f}",
            f"{median_of(rows, name, 'eval_ex_per_cpu_s'):.1f}",
            f"{median_of(rows, name, 'eval_ex_per_s'):.1f}",
            f"{first['train_flops_per_real_token'] / 1e6:.1f} M",
            train_flops,
            eval_flops,
            first["optimizer"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ratio_lines(rows: list[dict]) -> list[str]:
    present = {r["variant"] for r in rows}
    lines = [
        "| ours / peer | train real tok/CPU-s | train real tok/s (wall) | eval ex/CPU-s | eval ex/s (wall) | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for ours, peer in PAIRS:
        if {ours, peer} <= present:
            keys = ("train_tok_per_cpu_s", "train_tok_per_s", "eval_ex_per_cpu_s", "eval_ex_per_s", "train_peak_mib")
            lines.append(f"| {ours} / {peer} | " + " | ".join(ratio(rows, ours, peer, k) for k in keys) + " |")
    return lines


def report(args: argparse.Namespace, rows: list[dict]) -> None:
    """The markdown tables and every measurement as JSON lines beside them."""
    shapes, peak = gemm_peak(rows)
    loads = [x for r in rows for x in r["load_average"]]
    versions = {k: v for r in rows for k, v in r.get("versions", {}).items() if k != "torch"}
    command = command_line()
    lines = [
        f"# pha-lightning against peft and AdapterHub ({BACKBONE}, local GLUE mix, n_train {args.n_train})",
        "",
        f"`{command}`",
        "",
        f"{args.steps} timed steps after {args.warmup} untimed, batch {args.batch_size}; evaluation of "
        f"{args.eval_examples} validation examples per task in batches of {args.eval_batch_size}; {args.rounds} "
        f"interleaved rounds, one process per measurement, {args.threads} torch thread(s); {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {', '.join(f'{k} {v}' for k, v in sorted(versions.items()))}; "
        f"1-minute load average {min(loads):.1f}–{max(loads):.1f}. Medians over rounds; FLOPs counted in round 0.",
        "",
        *variant_lines(rows, peak),
        "",
        "Ratios within a round (median, range over rounds):",
        "",
        *ratio_lines(rows),
        "",
        f"fp32 `torch.mm`, {args.threads} thread(s) (median over rounds; peak = {peak:.1f} GFLOP/CPU-s):",
        "",
        "| M×K×N | GFLOP/CPU-s | GFLOP/s (wall) |",
        "|---|---|---|",
        *(f"| {shape} | {cpu:.1f} | {wall:.1f} |" for shape, (cpu, wall) in shapes.items()),
        "",
    ]
    write_report(args.output, lines, rows, command)


if __name__ == "__main__":
    main()
