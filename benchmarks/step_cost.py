"""Training-step cost of PHA and its baselines, as ratios to the shared-adapter step, in one run.

    python benchmarks/step_cost.py                       # MiniLM + a t5-small-shaped random T5, CPU
    python benchmarks/step_cost.py --backbones t5-small-shape --batch-size 128 --d-model 768 --device cuda

Every (backbone, method) pair runs in its own process on the same inputs (a mixed-task batch of
``--batch-size`` × ``--seq-len`` tokens; 4 tasks), so peak memory (max RSS on CPU, peak allocated
on CUDA) is that variant's alone. Each process times ``--steps`` optimizer steps after
``--warmup`` unmeasured ones and reports the median wall time and the median CPU time of the
process (the work done: with ``OMP_NUM_THREADS=1`` it stays comparable when other processes
share the cores, where wall time does not). ``pha_per_example`` is PHA with the
per-example reference path: the hypernetwork runs for every example and the weights are
materialised per example — the cost that grouped generation avoids. ``lora`` is shared LoRA
(query and value projections, rank 8) and ``pha_lora`` PHA generating LoRA factors.

``--backbone-settings`` adds the big-backbone options as a second axis, e.g.
``float32 bfloat16 float32+ckpt bfloat16+ckpt``: the frozen backbone's dtype
(``model.arch.backbone_dtype``), and ``+ckpt`` for activation checkpointing per block; the table
then also gives each row's ratio to the same method on the first setting.

Writes a markdown table (and the raw JSON lines with ``--jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from studylib.records import write_rows
from studylib.reports import write_portable
from studylib.study import method_settings
from studylib.workloads import optimizer_step
from transformers import T5Config

METHODS = (
    "adapter",
    "pha",
    "pha_per_example",
    "lora",
    "pha_lora",
    "task_adapter",
    "hyperformer",
    "hyperdecoder",
    "finetune",
)
TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


def t5_small_shape(d_model: int) -> T5Config:
    """t5-small's architecture (6+6 blocks, 8 heads, vocabulary 32128), widened to ``d_model`` if asked."""
    return T5Config(
        vocab_size=32128,
        d_model=d_model,
        d_ff=4 * d_model,
        d_kv=d_model // 8,
        num_layers=6,
        num_heads=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def make_batch(model, batch_size: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A mixed-task batch: every task present, full-length inputs, targets valid for each task."""
    gen = torch.Generator().manual_seed(0)
    vocab = model.model.backbone.config.vocab_size
    task_ids = torch.arange(batch_size) % len(TASKS)
    targets = torch.tensor(
        [
            float(torch.randint(0, max(model.model.task_objects[t].num_labels, 2), (1,), generator=gen))
            for t in task_ids.tolist()
        ]
    )
    batch = {
        "input_ids": torch.randint(5, vocab, (batch_size, seq_len), generator=gen),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "task_ids": task_ids,
        "targets": targets,
    }
    if model.model.family == "seq2seq":
        labels = torch.randint(5, vocab, (batch_size, 4), generator=gen)
        labels[:, -1] = 1  # eos
        batch["labels"] = labels
    return {k: v.to(device) for k, v in batch.items()}


def module_args(method: str) -> dict[str, str]:
    """The architecture settings of a method's override file (configs/methods/); ``pha_per_example``
    is PHA, timed on another path."""
    return method_settings(method.removesuffix("_per_example"))["model"]["arch"]


def backbone_options(setting: str) -> dict[str, object]:
    """``float32``, ``bfloat16+ckpt``, …: the backbone dtype, and activation checkpointing."""
    dtype, _, extra = setting.partition("+")
    if dtype not in ("float32", "bfloat16", "float16") or extra not in ("", "ckpt"):
        raise SystemExit(f"backbone setting {setting!r}: give a dtype (float32, bfloat16, float16), optionally +ckpt")
    return {"backbone_dtype": dtype, "activation_checkpointing": extra == "ckpt"}


def worker(backbone: str, method: str, args: argparse.Namespace) -> dict:
    """Time one variant in this process."""
    from pha_lightning.model.config import PHAConfig
    from pha_lightning.training.system import PHAModule

    torch.manual_seed(0)
    device = torch.device(args.device)
    init = "random" if backbone != "pypi:all-MiniLM-L6-v2" else "pretrained"
    arch = {**module_args(method), **backbone_options(args.backbone_setting)}
    model = PHAModule(PHAConfig(backbone=backbone, tasks=TASKS, backbone_init=init, **arch))
    model.configure_model()  # builds the model now: the optimiser below takes its parameters
    if method == "pha_per_example":
        # reference path: one hypernetwork row and one materialised weight set per example
        model.model.batch_adapter_weights = lambda task_ids: model.model.hypernetwork(model.model.prototypes(task_ids))
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = make_batch(model, args.batch_size, args.seq_len, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    times, cpu_times = [], []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer_step(model, optimizer, batch, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    trainable, _ = model.model.trainable_parameter_counts()
    return {
        "backbone": args.backbone_label,
        "method": method,
        "setting": args.backbone_setting,
        "median_step_s": statistics.median(times),
        "median_step_cpu_s": statistics.median(cpu_times),
        "peak_mib": peak,
        "trainable_params": trainable,
        "device": str(device),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
    }


def run_variant(backbone: str, label: str, method: str, setting: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        backbone,
        method,
        "--backbone-label",
        label,
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
        "--backbone-setting",
        setting,
    ] + (["--bf16"] if args.bf16 else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"{label}/{method}/{setting} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """Ratios to ``adapter`` on the same backbone and setting, and to the first setting of the same method."""
    first = rows[0]["setting"]
    lines = [
        "| backbone | setting | method | median step (s) | × adapter | CPU time (s) | × adapter | peak memory (MiB) "
        f"| × adapter | step × {first} | memory × {first} | trainable params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        same = [r for r in rows if r["backbone"] == row["backbone"]]
        base = next(r for r in same if r["method"] == "adapter" and r["setting"] == row["setting"])
        ref = next(r for r in same if r["method"] == row["method"] and r["setting"] == first)
        lines.append(
            f"| {row['backbone']} | {row['setting']} | {row['method']} | {row['median_step_s']:.3f} | "
            f"{row['median_step_s'] / base['median_step_s']:.2f} | {row['median_step_cpu_s']:.3f} | "
            f"{row['median_step_cpu_s'] / base['median_step_cpu_s']:.2f} | {row['peak_mib']:.0f} | "
            f"{row['peak_mib'] / base['peak_mib']:.2f} | {row['median_step_s'] / ref['median_step_s']:.2f} | "
            f"{row['peak_mib'] / ref['peak_mib']:.2f} | {row['trainable_params']:,} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backbones", nargs="+", default=["minilm", "t5-small-shape"], help="minilm and/or t5-small-shape"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=512, help="width of the t5-small-shaped model")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument(
        "--backbone-settings",
        nargs="+",
        default=["float32"],
        help="backbone dtype per run, optionally +ckpt (activation checkpointing): float32 bfloat16 float32+ckpt …",
    )
    parser.add_argument("--backbone-setting", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="write the markdown table here")
    parser.add_argument("--jsonl", type=Path, help="write one JSON line per variant here")
    parser.add_argument("--worker", nargs=2, metavar=("BACKBONE", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--backbone-label", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        backbones = {"minilm": "pypi:all-MiniLM-L6-v2", "t5-small-shape": tmp}
        t5_small_shape(args.d_model).save_pretrained(tmp)
        for label in args.backbones:
            for setting in args.backbone_settings:
                backbone_options(setting)  # a bad setting fails before the first run
            for method in args.methods:
                for setting in args.backbone_settings:
                    row = run_variant(backbones[label], label, method, setting, args)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if "adapter" not in args.methods:
        raise SystemExit("the ratios need the 'adapter' method in --methods")
    text = table(rows)
    print(text)
    if args.output:
        write_portable(args.output, text + "\n")
    if args.jsonl:
        write_rows(args.jsonl, rows)


if __name__ == "__main__":
    main()
