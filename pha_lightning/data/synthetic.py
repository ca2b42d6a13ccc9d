"""A built-in, offline suite of four small text tasks for tests, demos and smoke runs.

The tasks share one vocabulary but differ in their labelling rule *and* their sentence template,
so that (a) a retriever can tell tasks apart from the text alone, as PHA's instance-to-prototype
contrast requires, and (b) one vocabulary cannot solve every task by itself. Their train sizes
differ, so the sampling temperature visibly changes the task mix. Every rule is lexical (one word
decides; synth_match compares two words), which a small adapter on a frozen MiniLM learns in about
a hundred steps.

Records are drawn from a seeded ``random.Random`` stream per task and split. A record belongs to
exactly one split, decided by a hash of its text, so splits are disjoint by construction and the
validation/test records do not change when the train size does.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Mapping

from pha_lightning.data.tasks import SPLITS, Task, check_split
from pha_lightning.errors import ConfigError

DEFAULT_SEED = 1234

ANIMALS = ("cat", "dog", "horse", "rabbit", "tiger", "sheep", "goat", "mouse", "lion", "bear")
FOODS = ("bread", "cheese", "apple", "soup", "pizza", "rice", "cake", "salad", "banana", "pasta")
VEHICLES = ("car", "bus", "truck", "bicycle", "train", "boat", "plane", "tractor", "scooter", "van")
CATEGORIES = (ANIMALS, FOODS, VEHICLES)
NOUNS = ANIMALS + FOODS + VEHICLES
POSITIVE = ("good", "great", "nice", "lovely", "wonderful", "excellent", "pleasant", "fantastic", "superb", "beautiful")
NEGATIVE = ("bad", "awful", "terrible", "horrible", "nasty", "dreadful", "poor", "ugly", "boring", "lousy")
ADJECTIVES = POSITIVE + NEGATIVE
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown", "grey")
NUMBERS = ("zero", "one", "two", "three", "four", "five")
PLACES = ("park", "market", "station", "garden", "river", "school", "beach", "library")

#: A record's split is ``SPLIT_BUCKETS[crc32(text) % 10]``: 80 % of the text space is train.
SPLIT_BUCKETS = ("train",) * 8 + ("validation", "test")

#: Give up drawing a split after this many draws in a row that gave no new record: the split's
#: text space is (nearly) exhausted. A fresh split accepts about one draw in ten, so a legitimate
#: request essentially never comes near this limit.
MAX_FAILED_DRAWS = 10_000

Draw = Callable[[random.Random], tuple[dict[str, str], float]]


def _category(noun: str) -> int:
    return next(index for index, nouns in enumerate(CATEGORIES) if noun in nouns)


def draw_polarity(rng: random.Random) -> tuple[dict[str, str], float]:
    """Label 1 if the adjective is positive, 0 if negative; colour, noun and place are distractors."""
    adjective = rng.choice(ADJECTIVES)
    sentence = f"the {rng.choice(COLOURS)} {rng.choice(NOUNS)} near the {rng.choice(PLACES)} was {adjective}"
    return {"sentence": sentence}, float(adjective in POSITIVE)


def draw_category(rng: random.Random) -> tuple[dict[str, str], float]:
    """Label = category of the noun (0 animal, 1 food, 2 vehicle); the adjective is a distractor."""
    noun = rng.choice(NOUNS)
    sentence = f"someone at the {rng.choice(PLACES)} found a {rng.choice(ADJECTIVES)} {rng.choice(COLOURS)} {noun}"
    return {"sentence": sentence}, float(_category(noun))


def draw_match(rng: random.Random) -> tuple[dict[str, str], float]:
    """Label 1 if both sentences' nouns share a category; the label is drawn first, so balanced."""
    same = rng.random() < 0.5
    first, second = rng.sample(range(len(CATEGORIES)), 2)
    noun1 = rng.choice(CATEGORIES[first])
    noun2 = rng.choice(CATEGORIES[first if same else second])
    sentence1 = f"i have a {rng.choice(COLOURS)} {noun1} at the {rng.choice(PLACES)}"
    sentence2 = f"you have a {rng.choice(ADJECTIVES)} {noun2}"
    return {"sentence1": sentence1, "sentence2": sentence2}, float(same)


def draw_score(rng: random.Random) -> tuple[dict[str, str], float]:
    """Value = the number word (0–5); place, adjective, colour and noun are distractors."""
    value = rng.randrange(len(NUMBERS))
    sentence = (
        f"in the {rng.choice(PLACES)} the {rng.choice(ADJECTIVES)} {rng.choice(COLOURS)} "
        f"{rng.choice(NOUNS)} earned {NUMBERS[value]} points"
    )
    return {"sentence": sentence}, float(value)


def split_of(fields: Mapping[str, str]) -> str:
    """The one split a record's text belongs to (a stable hash, not Python's salted ``hash``)."""
    key = "\t".join(fields.values()).encode()
    return SPLIT_BUCKETS[zlib.crc32(key) % len(SPLIT_BUCKETS)]


class SyntheticTask(Task):
    """A task whose records come from a seeded generator instead of files."""

    def __init__(
        self,
        name: str,
        draw: Draw,
        source_fields: tuple[str, ...],
        label_names: tuple[str, ...],
        metric_names: tuple[str, ...],
        sizes: Mapping[str, int],
        seed: int = DEFAULT_SEED,
        target_range: tuple[float, float] | None = None,
    ) -> None:
        missing = [split for split in SPLITS if split not in sizes]
        if missing:
            raise ConfigError(f"task {name!r}: sizes lack splits {missing}; give sizes for {list(SPLITS)}")
        self.name = name
        self.label_names = label_names
        self.metric_names = metric_names
        self.source_fields = source_fields
        self.target_range = target_range
        self.sizes = dict(sizes)
        self.seed = seed
        self._draw = draw

    def load_split(self, split: str, **source_options: object) -> list[dict]:
        """Generate the split's records. Source options (e.g. ``data_dir``) do not apply: ignored."""
        check_split(split)
        size = self.sizes[split]
        rng = random.Random(f"{self.seed}/{self.name}/{split}")
        records: list[dict] = []
        seen: set[tuple[str, ...]] = set()
        failed = 0
        while len(records) < size:
            fields, label = self._draw(rng)
            key = tuple(fields.values())
            if key in seen or split_of(fields) != split:
                failed += 1
                if failed == MAX_FAILED_DRAWS:
                    raise ConfigError(
                        f"task {self.name!r}: could only draw {len(records)} distinct {split} records of "
                        f"the {size} requested; its text space is too small for that size"
                    )
                continue
            failed = 0
            seen.add(key)
            records.append({**fields, "label": label, "idx": len(records)})
        return records


DEFAULT_SIZES: dict[str, dict[str, int]] = {
    "synth_polarity": {"train": 800, "validation": 100, "test": 100},
    "synth_category": {"train": 600, "validation": 100, "test": 100},
    "synth_match": {"train": 400, "validation": 100, "test": 100},
    "synth_score": {"train": 300, "validation": 100, "test": 100},
}


def build_synthetic_suite(
    seed: int = DEFAULT_SEED, sizes: Mapping[str, Mapping[str, int]] | None = None
) -> list[SyntheticTask]:
    """The four synthetic tasks, with ``sizes`` overriding :data:`DEFAULT_SIZES` per task."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    unknown = sorted(set(sizes) - set(DEFAULT_SIZES))
    if unknown:
        raise ConfigError(f"sizes given for unknown synthetic tasks {unknown}; valid: {sorted(DEFAULT_SIZES)}")
    binary = ("0", "1")
    single, pair = ("sentence",), ("sentence1", "sentence2")
    return [
        SyntheticTask("synth_polarity", draw_polarity, single, binary, ("accuracy",), sizes["synth_polarity"], seed),
        SyntheticTask(
            "synth_category", draw_category, single, ("0", "1", "2"), ("accuracy",), sizes["synth_category"], seed
        ),
        SyntheticTask("synth_match", draw_match, pair, binary, ("f1", "accuracy"), sizes["synth_match"], seed),
        SyntheticTask(
            "synth_score",
            draw_score,
            single,
            (),
            ("pearson", "spearman"),
            sizes["synth_score"],
            seed,
            target_range=(0.0, float(len(NUMBERS) - 1)),
        ),
    ]


def heldout_copy(task: SyntheticTask, seed: int = DEFAULT_SEED + 1) -> SyntheticTask:
    """A new task with ``task``'s template and rule but its own name and seed: a transfer target
    whose most related source task is known."""
    return SyntheticTask(
        f"{task.name}_heldout",
        task._draw,
        task.source_fields,
        task.label_names,
        task.metric_names,
        task.sizes,
        seed,
        target_range=task.target_range,
    )


#: Transfer targets of the offline suite (see :func:`heldout_copy`).
HELDOUT_TASKS: tuple[str, ...] = ("synth_polarity_heldout", "synth_category_heldout")


def builtin_tasks() -> list[SyntheticTask]:
    """The synthetic suite and its transfer targets (the task catalogue of :mod:`pha_lightning.data.tasks` asks for them)."""
    suite = build_synthetic_suite()
    return [*suite, *(heldout_copy(task) for task in suite if f"{task.name}_heldout" in HELDOUT_TASKS)]
