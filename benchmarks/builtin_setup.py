"""Built-in GLUE tasks at scale (issue 55): one process builds ``setup('fit')`` cold into an empty
tokenised-data cache, then a second data module of the same settings sets up warm from it.

    python benchmarks/builtin_setup.py --write <folder>          # MNLI- and QQP-shaped files, full size
    python benchmarks/builtin_setup.py --data-dir <folder> --cache-dir <empty folder> --tasks mnli qqp

``--write`` draws GLUE-format TSVs of MNLI's and QQP's official row counts (random words, a fixed
seed; MNLI's twelve columns, parse columns included, QQP's six) for machines without the genuine
files. Printed (one JSON line): the cold setup's CPU time (``time.process_time``), wall time and the
peak resident memory up to then (``ru_maxrss``), and the warm setup's CPU and wall time. Backbone
MiniLM, ``OMP_NUM_THREADS`` as set; ``--n-train`` bounds the rows tokenised (every row is still read).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

#: Official row counts: (train, dev, dev_mismatched) of MNLI, (train, dev) of QQP.
MNLI_ROWS = (392_702, 9_815, 9_832)
QQP_ROWS = (363_846, 40_430)
MNLI_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)
VOCABULARY = 5000
SEED = 55


def sentences(rng: np.random.Generator, words: list[str], rows: int, low: int, high: int) -> list[str]:
    lengths = rng.integers(low, high, rows)
    picks = rng.integers(0, len(words), int(lengths.sum()))
    ends = np.cumsum(lengths)
    return [" ".join(words[i] for i in picks[end - n : end]) + " ." for n, end in zip(lengths, ends)]


def write(folder: Path) -> None:
    """MNLI and QQP in GLUE's layout under ``folder/glue``."""
    rng = np.random.default_rng(SEED)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 10))) for _ in range(VOCABULARY)]
    labels = ("entailment", "neutral", "contradiction")
    mnli = folder / "glue" / "MNLI"
    mnli.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"), MNLI_ROWS):
        first, second = sentences(rng, words, rows, 8, 40), sentences(rng, words, rows, 4, 20)
        gold = rng.integers(0, 3, rows)
        with (mnli / name).open("w", encoding="utf-8") as handle:
            handle.write(MNLI_HEADER + "\n")
            for i in range(rows):
                a, b, label = first[i], second[i], labels[gold[i]]
                parses = f"( {a} )\t( {b} )\t(ROOT {a})\t(ROOT {b})"
                handle.write(f"{i}\t{i}\t{i}n\tfiction\t{parses}\t{a}\t{b}\t{label}\t{label}\n")
    qqp = folder / "glue" / "QQP"
    qqp.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(("train.tsv", "dev.tsv"), QQP_ROWS):
        first, second = sentences(rng, words, rows, 5, 20), sentences(rng, words, rows, 5, 20)
        duplicate = rng.integers(0, 2, rows)
        with (qqp / name).open("w", encoding="utf-8") as handle:
            handle.write("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n")
            for i in range(rows):
                handle.write(f"{i}\t{2 * i}\t{2 * i + 1}\t{first[i]}?\t{second[i]}?\t{duplicate[i]}\n")


def measure(data_dir: str, cache_dir: str, tasks: list[str], n_train: int | None) -> dict:
    from pha_lightning.data.datamodule import PHADataModule

    def setup() -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        PHADataModule(tasks, data_dir=data_dir, cache_dir=cache_dir, n_train=n_train, num_proc=1).setup("fit")
        return time.process_time() - cpu, time.perf_counter() - wall

    cold_cpu, cold_wall = setup()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    warm_cpu, warm_wall = setup()
    return {
        "tasks": tasks,
        "n_train": n_train,
        "cold_cpu_s": round(cold_cpu, 2),
        "cold_wall_s": round(cold_wall, 2),
        "cold_peak_rss_mb": round(peak_mb),
        "warm_cpu_s": round(warm_cpu, 3),
        "warm_wall_s": round(warm_wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="write MNLI- and QQP-shaped files under this folder, then stop")
    parser.add_argument("--data-dir")
    parser.add_argument("--cache-dir", help="an empty folder: the first setup builds the cache cold")
    parser.add_argument("--tasks", nargs="+", default=["mnli", "qqp"])
    parser.add_argument("--n-train", type=int, default=None)
    args = parser.parse_args()
    if args.write is not None:
        write(args.write)
        return
    if not args.data_dir or not args.cache_dir:
        parser.error("give --data-dir and --cache-dir (or --write)")
    print(json.dumps(measure(args.data_dir, args.cache_dir, args.tasks, args.n_train)))


if __name__ == "__main__":
    main()
