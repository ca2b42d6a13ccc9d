"""The peers' side of ``benchmarks/peers.py``: peft LoRA + ``Trainer``, or AdapterHub ``par_bn`` + ``AdapterTrainer``.

    python benchmarks/peers_worker.py '<JSON spec>'     # called by peers.py, one measurement per process

It runs in whichever Python has the peer's package (peft: the project's; ``adapters`` 1.3.0 pins
transformers 4.57: its own environment), so it imports nothing from ``pha_lightning``. It reads the
examples, the task list and the per-task heads' initial weights that ``peers.py`` wrote, builds the
peer's model (the backbone with the peer's adapters, then mean pooling and the same per-task
heads and loss as the project's), trains it with the peer's own trainer, and prints one JSON line:
per-step wall and CPU time and real tokens (timed between the trainer's ``on_step_begin`` and
``on_step_end``: forward, backward, clipping, optimizer and scheduler step, ``zero_grad``), the
counted FLOPs per real token, peak memory, the loss at initialisation and the evaluation time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import IterableDataset
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding, TrainerCallback, TrainingArguments

SOURCE_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class PeerModel(nn.Module):
    """A peer's adapted backbone, mean pooling and the project's per-task heads and loss.

    Heads start from the project model's initial weights (``heads``), so the two compute the same
    loss at initialisation: label-smoothed CE for classification, MSE on targets mapped to [-1, 1]
    for regression, each task's term weighted by its share of the batch.
    """

    def __init__(self, backbone: nn.Module, tasks: list[dict], heads: dict, dropout: float, loss: dict) -> None:
        super().__init__()
        self.backbone = backbone
        d_model = backbone.config.hidden_size
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, t["num_labels"])) for t in tasks
        )
        self.heads.load_state_dict(heads)
        self.tasks, self.loss = tasks, loss
        self.real_tokens = self.padded_tokens = 0

    def forward(self, input_ids, attention_mask, task_ids, token_type_ids=None, targets=None) -> dict:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        if self.training:
            self.real_tokens += int(attention_mask.sum())
            self.padded_tokens += attention_mask.numel()
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        logits = pooled.new_zeros(len(task_ids), max(t["num_labels"] for t in self.tasks))
        total = pooled.new_zeros(())
        for task in task_ids.unique().tolist():
            rows = (task_ids == task).nonzero(as_tuple=True)[0]
            out = self.heads[task](pooled[rows])
            logits[rows, : out.shape[1]] = out
            if targets is not None:
                total = total + self.task_loss(self.tasks[task], out, targets[rows]) * len(rows)
        return {"logits": logits} if targets is None else {"loss": total / len(task_ids), "logits": logits}

    def task_loss(self, task: dict, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if task["regression"]:
            scaled = (target.float() - task["center"]) / task["half"]
            return self.loss["regression_loss_weight"] * F.mse_loss(out.squeeze(-1), scaled)
        return F.cross_entropy(out, target.long(), label_smoothing=self.loss["label_smoothing"])


class AdapterHubModel(PeerModel):
    """:class:`PeerModel` with what ``AdapterTrainer`` reads from its model (active adapters, heads, frozen base)."""

    active_head = None

    @property
    def active_adapters(self):
        return self.backbone.active_adapters

    @property
    def base_model(self) -> nn.Module:
        return self.backbone.base_model


class InOrder(IterableDataset):
    """The examples in the order given: the ``Trainer`` batches them as they come (no shuffling)."""

    def __init__(self, examples: list[dict]) -> None:
        self.examples = examples

    def __iter__(self):
        return iter(self.examples)


class StepTimer(TrainerCallback):
    """Wall and CPU seconds and real/padded tokens of every optimizer step."""

    def __init__(self, model: PeerModel) -> None:
        self.model, self.steps = model, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = (time.perf_counter(), time.process_time(), self.model.real_tokens, self.model.padded_tokens)

    def on_step_end(self, args, state, control, **kwargs):
        wall, cpu, real, padded = self.start
        self.steps.append(
            {
                "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
                "real_tokens": self.model.real_tokens - real,
                "padded_tokens": self.model.padded_tokens - padded,
            }
        )


def examples_of(batch: dict[str, torch.Tensor], with_targets: bool) -> list[dict]:
    """A (right-padded) batch back into examples of their real length, in batch order."""
    rows = []
    for i, length in enumerate(batch["attention_mask"].sum(1).tolist()):
        row = {k: batch[k][i, :length].tolist() for k in SOURCE_KEYS if k in batch}
        row["task_ids"] = int(batch["task_ids"][i])
        if with_targets:
            row["targets"] = float(batch["targets"][i])
        rows.append(row)
    return rows


def build_backbone(spec: dict, path: str) -> nn.Module:
    """The backbone with the peer's adapters: peft LoRA, or AdapterHub's parallel bottleneck adapter."""
    backbone = AutoModel.from_pretrained(path)
    if spec["tool"] == "peft":
        from peft import LoraConfig, get_peft_model

        lora = spec["lora"]
        config = LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=lora["targets"]
        )
        return get_peft_model(backbone, config)
    import adapters
    from adapters import ParBnConfig

    adapters.init(backbone)
    backbone.add_adapter("glue_mix", config=ParBnConfig(reduction_factor=spec["reduction_factor"], scaling=1.0))
    backbone.train_adapter("glue_mix")  # freezes the backbone, activates the adapter
    return backbone


def training_arguments(spec: dict, folder: str, steps: int) -> TrainingArguments:
    """The project's recipe in the ``Trainer``'s terms (batch 32, AdamW at 3e-4, linear warm-up, clipping 1.0)."""
    fields = TrainingArguments.__dataclass_fields__
    grouping = {}
    if spec["group_by_length"]:  # transformers 5 renamed the switch
        grouping = (
            {"train_sampling_strategy": "group_by_length"}
            if "train_sampling_strategy" in fields
            else {"group_by_length": True}
        )
    return TrainingArguments(
        output_dir=folder,
        per_device_train_batch_size=spec["batch_size"],
        per_device_eval_batch_size=spec["eval_batch_size"],
        max_steps=steps,
        learning_rate=spec["learning_rate"],
        warmup_steps=spec["warmup_steps"],
        max_grad_norm=1.0,
        weight_decay=0.0,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        **grouping,
    )


def counted_flops(run) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def worker(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    load_before = os.getloadavg()[0]
    folder = Path(spec["folder"])
    meta = json.loads((folder / "tasks.json").read_text())
    train = [row for batch in torch.load(folder / "train.pt") for row in examples_of(batch, True)]
    evaluation = [[row for b in task for row in examples_of(b, False)] for task in torch.load(folder / "eval.pt")]
    heads = torch.load(folder / f"heads_{spec['method']}.pt")
    torch.manual_seed(0)
    model_class = AdapterHubModel if spec["tool"] == "adapterhub" else PeerModel
    model = model_class(
        build_backbone(spec, meta["backbone_path"]), meta["tasks"], heads, meta["head_dropout"], meta["loss"]
    )
    collator = DataCollatorWithPadding(AutoTokenizer.from_pretrained(meta["backbone_path"]))
    model.eval()
    with torch.no_grad():
        init_loss = float(model(**collator(train[: spec["batch_size"]]))["loss"])
    steps = spec["warmup"] + spec["steps"]
    timer = StepTimer(model)
    with tempfile.TemporaryDirectory() as output:
        args = training_arguments(spec, output, steps)
        if spec["tool"] == "peft":
            from transformers import Trainer
        else:
            from adapters import AdapterTrainer as Trainer
        dataset = train if spec["group_by_length"] else InOrder(train)
        trainer = Trainer(model=model, args=args, data_collator=collator, train_dataset=dataset, callbacks=[timer])
        if spec["tool"] == "adapterhub":
            trainer.train_adapter_fusion = False  # set by AdapterTrainer only for PreTrainedModel instances
        trainer.train()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        timed = timer.steps[spec["warmup"] :]
        flops, flop_tokens = count_training_flops(trainer, model) if spec["count_flops"] else (0.0, 0)
        trainer.predict(evaluation[0])  # warm-up
        start, cpu_start = time.perf_counter(), time.process_time()
        for task in evaluation:
            trainer.predict(task)
        eval_s, eval_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        eval_flops = (
            counted_flops(lambda: [trainer.predict(task) for task in evaluation]) if spec["count_flops"] else None
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    package = "peft" if spec["tool"] == "peft" else "adapters"
    return {
        "load_average": [load_before, os.getloadavg()[0]],
        "versions": {name: version(name) for name in ("torch", "transformers", package)},
        "steps": timed,
        "train_peak_mib": peak,
        "init_loss": init_loss,
        "trainable_params": trainable,
        "train_flops_per_real_token": flops / flop_tokens if flop_tokens else None,
        "eval_s": eval_s,
        "eval_cpu_s": eval_cpu_s,
        "eval_examples": sum(len(task) for task in evaluation),
        "eval_flops": eval_flops,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
    }


def count_training_flops(trainer, model: PeerModel) -> tuple[float, int]:
    """FLOPs (forward and backward) and real tokens of one epoch of the batches the trainer makes (every step's
    examples: with length grouping the order differs from the training run's, the batches do not)."""
    sample = list(trainer.get_train_dataloader())
    flops = counted_flops(lambda: [trainer.training_step(model, batch) for batch in sample])
    model.zero_grad(set_to_none=True)
    return flops, int(sum(batch["attention_mask"].sum() for batch in sample))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="one measurement's settings, as JSON (peers.py writes them)")
    print(json.dumps(worker(json.loads(parser.parse_args().spec))))
