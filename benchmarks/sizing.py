"""Memory per GPU of PHA on T5 under DDP and FSDP (``--trainer.strategy=pha_fsdp``), from the configs.

    python benchmarks/sizing.py --gpus 8 --output results/sizing/sizing.md

Each model is built on the ``meta`` device (nothing allocated, nothing downloaded) from the
published T5 configs' dimensions below (google-t5/t5-base, t5-large, t5-3b, t5-11b on the Hub:
``d_model``, ``d_ff``, ``num_layers`` (= decoder layers), ``num_heads``, ``d_kv``, vocabulary 32128),
with PHA's default architecture on the eight GLUE tasks, and its parameters are counted: frozen
backbone weights, and PHA's trainable parameters. Bytes per GPU:

* frozen backbone: every weight in ``model.arch.backbone_dtype`` (4 bytes float32, 2 bfloat16);
  DDP holds all of them; FSDP holds 1/N at rest, and during a step also the root unit's weights
  (embeddings, final norms, LM head: gathered from forward to backward) and two gathered blocks
  (the one running and the one prefetched);
* PHA's trainable state: float32 parameters, gradients and AdamW's two moments (16 bytes per
  parameter); DDP holds all of it; FSDP 1/N at rest (each parameter is sharded), and the whole
  parameters and gradients (8 bytes per parameter) while they are gathered in a step.

Activations depend on batch and length and are not counted (``model.arch.activation_checkpointing``
reduces them).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from studylib.reports import write_portable
from transformers import T5Config

from pha_lightning.model.backbone import backbone_blocks
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.pha import PHAModel

#: the published configs' dimensions (d_model, d_ff, num_layers, num_heads, d_kv); vocabulary 32128
T5_CONFIGS: dict[str, tuple[int, int, int, int, int]] = {
    "t5-base": (768, 3072, 12, 12, 64),
    "t5-large": (1024, 4096, 24, 16, 64),
    "t5-3b": (1024, 16384, 24, 32, 128),
    "t5-11b": (1024, 65536, 24, 128, 128),
}
GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
ADAMW_STATE_BYTES = 16  # float32 parameter, gradient, exp_avg, exp_avg_sq
GATHERED_STATE_BYTES = 8  # float32 parameter and gradient, whole, during a step


def counts(name: str, directory: str) -> dict[str, int]:
    """Frozen, trainable, root-unit frozen and largest-block parameter counts of PHA on ``name``."""
    d_model, d_ff, layers, heads, d_kv = T5_CONFIGS[name]
    T5Config(
        vocab_size=32128, d_model=d_model, d_ff=d_ff, num_layers=layers, num_heads=heads, d_kv=d_kv
    ).save_pretrained(directory)
    with torch.device("meta"):
        model = PHAModel(PHAConfig(backbone=directory, tasks=GLUE, backbone_init="random"))
    blocks = backbone_blocks(model.backbone, model.family)
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return {
        "frozen": sum(p.numel() for p in frozen),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "root_frozen": sum(p.numel() for p in frozen if id(p) not in in_blocks),
        "block": max(sum(p.numel() for p in block.parameters()) for block in blocks),
    }


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f}"


def rows(gpus: int) -> Iterable[str]:
    with tempfile.TemporaryDirectory() as tmp:
        for name in T5_CONFIGS:
            c = counts(name, f"{tmp}/{name}")  # one folder each: backbone configs are cached by path
            for dtype, size in DTYPE_BYTES.items():
                frozen = c["frozen"] * size
                fsdp_frozen_peak = frozen / gpus + (c["root_frozen"] + 2 * c["block"]) * size
                state = c["trainable"] * ADAMW_STATE_BYTES
                fsdp_state_peak = state / gpus + c["trainable"] * GATHERED_STATE_BYTES
                yield (
                    f"| {name} | {dtype} | {c['frozen'] / 1e6:,.0f} M | {c['trainable'] / 1e6:.2f} M | {gib(frozen)} | "
                    f"{gib(frozen / gpus)} / {gib(fsdp_frozen_peak)} | {gib(state)} | "
                    f"{gib(state / gpus)} / {gib(fsdp_state_peak)} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--output", type=Path, default=None, help="also write the table here (markdown)")
    args = parser.parse_args()
    header = [
        f"Memory per GPU (GiB) on {args.gpus} GPUs, PHA on the 8 GLUE tasks, activations not counted; "
        "FSDP: at rest / during a step (benchmarks/sizing.py).",
        "",
        "| backbone | frozen weights | frozen params | PHA trainable params | DDP frozen | FSDP frozen | "
        "DDP PHA state | FSDP PHA state |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table = "\n".join([*header, *rows(args.gpus)]) + "\n"
    print(table, end="")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        command = f"python benchmarks/sizing.py --gpus {args.gpus} --output {args.output}"
        write_portable(args.output, f"# Sizing\n\n`{command}`\n\n{table}")


if __name__ == "__main__":
    main()
