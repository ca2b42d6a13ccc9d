"""Multi-task data for PHA: tokenised per-task splits, temperature-sampled training batches.

Training draws mixed-task batches from the concatenation of all tasks' train sets with a
:class:`~pha_lightning.sampling.TemperatureBatchSampler` (the Trainer must run with
``use_distributed_sampler=False``; the sampler shards by rank itself). Evaluation gives one
DataLoader per task, in ``tasks`` order, so per-task metrics need no bookkeeping; its batches are
sorted longest first to limit padding. Under DDP every rank evaluates every example: metrics
synced over ranks then see each example once per rank, which leaves accuracy, F1, Matthews,
Pearson and Spearman unchanged.

Batch layout (all tensors, padded to the longest sequence in the batch):

* encoder family: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer gives
  them), ``task_ids`` (long ``(B,)``, index into ``tasks``), ``targets`` (float32 ``(B,)``: class
  index or regression value);
* seq2seq family: ``input_ids``, ``attention_mask`` of the ``"<task> field: …"`` source,
  ``labels`` (long ``(B, T)``, the tokenised target string, padded with -100), ``task_ids``,
  ``targets``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset, concatenate_datasets
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from pha_lightning.errors import ConfigError
from pha_lightning.backbone import Family, backbone_family, load_tokenizer
from pha_lightning.sampling import SAMPLING_MODES, SamplingMode, TemperatureBatchSampler
from pha_lightning.tasks import Task, available_tasks, get_task

LABEL_PAD_ID = -100
STAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "fit": ("train", "validation"),
    "validate": ("validation",),
    "test": ("test",),
    "predict": ("test",),
}


def check_task_names(tasks: Sequence[str]) -> None:
    """Reject an empty task list, duplicates and unknown names, listing the valid names."""
    if isinstance(tasks, str) or len(tasks) == 0:
        raise ConfigError(f"tasks must be a non-empty list of task names, got {tasks!r}; available: {available_tasks()}")
    duplicates = sorted({name for name in tasks if list(tasks).count(name) > 1})
    if duplicates:
        raise ConfigError(f"tasks {duplicates} are listed more than once in {list(tasks)}")
    unknown = [name for name in tasks if name not in available_tasks()]
    if unknown:
        raise ConfigError(f"unknown tasks {unknown}; available tasks: {available_tasks()}")


def subsample(records: list[dict], n: int, seed: int, task_name: str) -> list[dict]:
    """Draw ``n`` records with a generator seeded by (seed, task), keeping their original order."""
    if n > len(records):
        raise ConfigError(f"n_train={n} but task {task_name!r} has only {len(records)} train examples")
    chosen = random.Random(f"{seed}/{task_name}").sample(range(len(records)), n)
    return [records[index] for index in sorted(chosen)]


def tokenize_columns(
    batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_source_length: int, max_target_length: int
) -> dict[str, list]:
    """Tokenise ``source`` (+ ``pair``) and, for seq2seq, ``target`` into ``labels``; add ``length``.

    A module-level function (not a method) so ``datasets`` can fingerprint it without pickling
    the data module. Seq2seq sources get no token type ids: T5 does not take them.
    """
    seq2seq = "target" in batch
    features = dict(
        tokenizer(
            batch["source"],
            batch.get("pair"),
            truncation=True,
            max_length=max_source_length,
            return_token_type_ids=False if seq2seq else None,
        )
    )
    if seq2seq:
        features["labels"] = tokenizer(text_target=batch["target"], truncation=True, max_length=max_target_length)[
            "input_ids"
        ]
    features["length"] = [len(ids) for ids in features["input_ids"]]
    return features


def longest_first(dataset: Dataset) -> Dataset:
    """The dataset reordered by decreasing input length (stable), to limit evaluation padding."""
    lengths = list(dataset["length"])
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return dataset.select(order)


@dataclass
class Collator:
    """Pads a list of tokenised examples to the longest one and stacks them into tensors."""

    pad_token_id: int
    pad_token_type_id: int = 0
    padding_side: str = "right"

    def __call__(self, examples: list[dict]) -> dict[str, Tensor]:
        pad_values = {
            "input_ids": self.pad_token_id,
            "attention_mask": 0,
            "token_type_ids": self.pad_token_type_id,
            "labels": LABEL_PAD_ID,
        }
        present = [key for key in pad_values if key in examples[0]]
        batch = {key: self._pad([ex[key] for ex in examples], pad_values[key]) for key in present}
        batch["task_ids"] = torch.tensor([ex["task_ids"] for ex in examples], dtype=torch.long)
        batch["targets"] = torch.tensor([ex["targets"] for ex in examples], dtype=torch.float32)
        return batch

    def _pad(self, sequences: list[list[int]], value: int) -> Tensor:
        width = max(len(seq) for seq in sequences)
        out = torch.full((len(sequences), width), value, dtype=torch.long)
        for row, seq in enumerate(sequences):
            if self.padding_side == "left":
                out[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            else:
                out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out


class PHADataModule(LightningDataModule):
    """Loads, tokenises and batches a list of registered tasks for PHA training and evaluation.

    Args:
        tasks: registry names (see :func:`pha_lightning.tasks.available_tasks`); their order
            defines the task ids.
        backbone: backbone name; decides the tokenizer and the batch layout (linked from the
            model's backbone by the CLI).
        batch_size: examples per training batch on each device.
        eval_batch_size: examples per evaluation batch.
        max_source_length: inputs are truncated to this many tokens.
        max_target_length: seq2seq targets are truncated to this many tokens.
        temperature: task sampling temperature T, ``p_i ∝ n_i^(1/T)``.
        sampling: ``mixed`` draws a task per example (PHA), ``task`` one task per batch.
        num_batches_per_epoch: training batches per epoch; default covers the data once.
        seed: seeds the n_train draw and the sampler.
        n_train: low-data setting: use this many train examples of every task.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        tasks: list[str],
        backbone: str = "pypi:all-MiniLM-L6-v2",
        batch_size: int = 32,
        eval_batch_size: int = 64,
        max_source_length: int = 128,
        max_target_length: int = 16,
        temperature: float = 10.0,
        sampling: SamplingMode = "mixed",
        num_batches_per_epoch: int | None = None,
        seed: int = 42,
        n_train: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_task_names(tasks)
        for name, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("max_source_length", max_source_length),
            ("max_target_length", max_target_length),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value!r}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        if sampling not in SAMPLING_MODES:
            raise ConfigError(f"unknown sampling mode {sampling!r}; valid modes: {list(SAMPLING_MODES)}")
        for name, optional in (("num_batches_per_epoch", num_batches_per_epoch), ("n_train", n_train)):
            if optional is not None and optional < 1:
                raise ConfigError(f"{name} must be >= 1 or None, got {optional!r}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers!r}")
        self.save_hyperparameters()
        self.tasks = list(tasks)
        self.task_objects: list[Task] = [get_task(name) for name in tasks]
        self.backbone = backbone
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.temperature = temperature
        self.sampling = sampling
        self.num_batches_per_epoch = num_batches_per_epoch
        self.seed = seed
        self.n_train = n_train
        self.num_workers = num_workers
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.datasets: dict[str, list[Dataset]] = {}

    @property
    def family(self) -> Family:
        return backbone_family(self.backbone)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.backbone)
            if self._tokenizer.pad_token_id is None:
                raise ConfigError(f"the tokenizer of backbone {self.backbone!r} has no pad token")
        return self._tokenizer

    def setup(self, stage: str | None = None) -> None:
        """Tokenise the splits ``stage`` needs (all of them for ``None``); done once per split."""
        if stage is not None and stage not in STAGE_SPLITS:
            raise ConfigError(f"unknown stage {stage!r}; valid stages: {list(STAGE_SPLITS)}")
        splits = STAGE_SPLITS[stage] if stage else ("train", "validation", "test")
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = [self._build_dataset(task_id, split) for task_id in range(len(self.tasks))]

    def _build_dataset(self, task_id: int, split: str) -> Dataset:
        task = self.task_objects[task_id]
        records = task.load_split(split)
        if split == "train" and self.n_train is not None:
            records = subsample(records, self.n_train, self.seed, task.name)
        if not records:
            raise ConfigError(f"task {task.name!r} has no {split} examples")
        columns = self._text_columns(task, records)
        columns["task_ids"] = [task_id] * len(records)
        columns["targets"] = [task.target_value(record) for record in records]
        text_columns = [name for name in columns if name not in ("task_ids", "targets")]
        return Dataset.from_dict(columns).map(
            tokenize_columns,
            batched=True,
            remove_columns=text_columns,
            fn_kwargs={
                "tokenizer": self.tokenizer,
                "max_source_length": self.max_source_length,
                "max_target_length": self.max_target_length,
            },
        )

    def _text_columns(self, task: Task, records: list[dict]) -> dict[str, list]:
        """The strings to tokenise: (pair of) texts for encoders, source and target for seq2seq."""
        if self.family == "seq2seq":
            return {
                "source": [task.seq2seq_source(record) for record in records],
                "target": [task.seq2seq_target(record) for record in records],
            }
        texts, pairs = zip(*(task.encoder_text(record) for record in records))
        if any(pair is None for pair in pairs) and any(pair is not None for pair in pairs):
            raise ConfigError(f"task {task.name!r} mixes single texts and text pairs in its records")
        return {"source": list(texts)} if pairs[0] is None else {"source": list(texts), "pair": list(pairs)}

    def _collator(self) -> Collator:
        return Collator(
            pad_token_id=self.tokenizer.pad_token_id,
            pad_token_type_id=self.tokenizer.pad_token_type_id,
            padding_side=self.tokenizer.padding_side,
        )

    def _split(self, split: str) -> list[Dataset]:
        if split not in self.datasets:
            raise RuntimeError(f"the {split} split is not set up; call setup() for a stage that uses it first")
        return self.datasets[split]

    def train_dataloader(self) -> DataLoader:
        train = self._split("train")
        attached = self.trainer is not None
        sampler = TemperatureBatchSampler(
            [len(dataset) for dataset in train],
            batch_size=self.batch_size,
            temperature=self.temperature,
            mode=self.sampling,
            num_batches=self.num_batches_per_epoch,
            seed=self.seed,
            num_replicas=self.trainer.world_size if attached else 1,
            rank=self.trainer.global_rank if attached else 0,
        )
        return DataLoader(
            concatenate_datasets(train),
            batch_sampler=sampler,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
        )

    def _eval_dataloaders(self, split: str) -> list[DataLoader]:
        return [
            DataLoader(
                longest_first(dataset),
                batch_size=self.eval_batch_size,
                shuffle=False,
                collate_fn=self._collator(),
                num_workers=self.num_workers,
            )
            for dataset in self._split(split)
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_dataloaders("validation")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_dataloaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        """The test split, in the same (length-sorted) order as ``test_dataloader``."""
        return self._eval_dataloaders("test")
