"""One optimiser step of PHA on a mixed GLUE batch: how far it moves generated vs shared adapters.

Prints, for the released and the calibrated hypernetwork heads, the mean |change| per element of
the generated adapter matrices and of the shared ones after one AdamW step, and their ratio.

    python benchmarks/calibration.py --data-dir <data dir>
"""

from __future__ import annotations

import argparse

from lightning.pytorch import seed_everything

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.health import one_step_change
from pha_lightning.training.system import PHAModule

TASKS = ["cola", "sst2", "mrpc", "stsb", "rte"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--backbone", default="pypi:all-MiniLM-L6-v2")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-train", type=int, default=100)
    args = parser.parse_args()
    data = PHADataModule(
        tasks=TASKS,
        source="local",
        data_dir=args.data_dir,
        n_train=args.n_train,
        batch_size=32,
        temperature=10.0,
        backbone=args.backbone,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    print(f"one AdamW step at lr {args.lr} on a mixed batch of {len(batch['task_ids'])} ({args.backbone})")
    print("| heads | generated: mean abs change | shared: mean abs change | ratio |\n|---|---|---|---|")
    for calibration in ("none", "width"):
        seed_everything(0)
        system = PHAModule(PHAConfig(backbone=args.backbone, tasks=TASKS, hypernet_calibration=calibration))
        generated, shared = one_step_change(system.model, lambda b: system.loss_terms(b)["loss"], batch, args.lr)
        print(f"| {calibration} | {generated:.3g} | {shared:.3g} | {generated / shared:.2f} |")


if __name__ == "__main__":
    main()
