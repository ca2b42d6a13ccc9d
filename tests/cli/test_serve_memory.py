"""What ``pha serve``'s main process holds when LitServe forks its HTTP process from it: no Lightning,
no training code and no weights (the model is loaded and checked in a child process), and its
objects frozen for the garbage collector (docs/production.md, "Serve over HTTP"; the memory this
saves: results/serving_load/NOTES.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pha_lightning import PHAConfig, PHAModel

pytestmark = pytest.mark.slow  # runs pha serve (up to where LitServe starts its processes)

#: runs ``pha serve`` up to LitServe's start of its processes, then prints what the process holds
UNTIL_FORK = """
import gc, json, sys
import litserve
import torch
from pha_lightning.cli.entry import main

TRAINING = ("lightning", "pytorch_lightning", "torchmetrics", "tensorboard", "datasets")

def held(self, **options):
    modules = [m for m in sys.modules if m.split(".")[0] in TRAINING or m.startswith("pha_lightning.training")]
    tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    frozen = gc.get_freeze_count() > len(gc.get_objects())  # what the forked processes' collections skip
    print(json.dumps({"modules": sorted(modules), "tensor_elements": sum(t.numel() for t in tensors), "frozen": frozen}))
    raise SystemExit(0)

litserve.LitServer.run = held
main(["serve", "--ckpt_path=" + sys.argv[1], "--accelerator=cpu"])
"""


def test_the_process_litserve_forks_holds_no_training_code_and_no_weights(
    pretrained_tiny: dict[str, str], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = PHAModel(PHAConfig(backbone=pretrained_tiny["bert"], tasks=["synth_polarity", "synth_match"]))
    bundle = model.save_pretrained(tmp_path / "bundle")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", UNTIL_FORK, str(bundle)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    held = json.loads(done.stdout.splitlines()[-1])
    assert held["modules"] == []  # before: lightning, torchmetrics, pha_lightning.training.* (the checkpoint loader)
    assert held["tensor_elements"] < sum(p.numel() for p in model.parameters()) / 100
    assert held["frozen"]  # the garbage collections of the forked processes do not copy the pages they share
