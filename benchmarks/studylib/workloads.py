"""The training and evaluation workloads the timing benchmarks (throughput.py, peers.py,
step_cost.py) measure. ``pha_lightning`` is imported inside the functions: throughput.py runs them
against older commits' trees too, whose layout differs (:func:`classes`)."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

BACKBONE = "pypi:all-MiniLM-L6-v2"
SUITES: dict[str, dict] = {
    "glue": {
        "tasks": ["cola", "sst2", "mrpc", "stsb", "rte"],
        "max_source_length": 128,
        "temperature": 10.0,
        "source": "local",
        "split_validation_test": True,
        "data_seed": 42,
        "eval_batch_size": 128,
    },
    "synthetic": {
        "tasks": ["synth_polarity", "synth_category", "synth_match", "synth_score"],
        "max_source_length": 48,
        "temperature": 2.0,
        "eval_batch_size": 100,
    },
}


def classes() -> tuple[type, type]:
    """``(PHADataModule, PHAModule)`` of the tree on the path, in its layout: the package split
    (issue 13) moved them, and older commits are measured too."""
    import pha_lightning

    if (Path(pha_lightning.__file__).parent / "training").is_dir():
        from pha_lightning.data.datamodule import PHADataModule
        from pha_lightning.training.system import PHAModule
    else:
        from pha_lightning.datamodule import PHADataModule
        from pha_lightning.module import PHAModule
    return PHADataModule, PHAModule


def build(spec: dict):
    """Data module (set up for fit) and model for one measurement, from ``pha_lightning`` on the path."""
    import torch

    PHADataModule, PHAModule = classes()

    suite = dict(SUITES[spec["suite"]])
    if suite.get("source") == "local":
        suite["data_dir"] = spec["data_dir"]
    if spec["suite"] == "glue":
        suite["n_train"] = spec["n_train"]
    data = PHADataModule(backbone=BACKBONE, batch_size=spec["batch_size"], seed=0, **suite)
    data.setup("fit")
    # the same evenly spaced validation examples in every tree (at most eval_examples per task)
    data.datasets["validation"] = [
        d.select(range(0, len(d), -(-len(d) // spec["eval_examples"]))) for d in data.datasets["validation"]
    ]
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    arch = {"backbone": BACKBONE, "tasks": suite["tasks"], "method": spec["method"], **spec["model_kwargs"]}
    if "arch" in inspect.signature(PHAModule).parameters:  # settings grouped by concern (issue 29)
        from pha_lightning.model.config import PHAConfig

        return data, PHAModule(PHAConfig(**arch))
    return data, PHAModule(**arch)


def time_evaluation(model, loaders, bf16: bool) -> tuple[float, float, float]:
    """(seconds, CPU seconds, real tokens) of predicting every batch of ``loaders``."""
    import torch

    model.eval()
    seconds = cpu_seconds = tokens = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for loader in loaders:
            for batch in loader:
                start, cpu_start = time.perf_counter(), time.process_time()
                getattr(model, "model", model).predict_values(batch)  # the network; the system itself before the split
                seconds += time.perf_counter() - start
                cpu_seconds += time.process_time() - cpu_start
                tokens += float(batch["attention_mask"].sum())
    return seconds, cpu_seconds, tokens


def optimizer_step(model, optimizer, batch: dict, autocast) -> None:
    """One training step as the Trainer makes it: the loss under ``autocast``, backward, update."""
    with autocast:
        loss = model.loss_terms(batch)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
