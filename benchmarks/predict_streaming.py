"""``pha predict`` on 2 000 / 20 000 / 100 000-line inputs, this working tree against an older commit:
when the first output line appears and the peak memory, in one run.

    python benchmarks/predict_streaming.py --ckpt CKPT --output results/predict_streaming/table.md

``CKPT`` is any checkpoint of the synthetic tasks (e.g. ``last.ckpt`` of ``pha fit
--data.tasks=[synth_polarity,synth_match,synth_score] --trainer.max_steps=3``). Each input line is a
``synth_polarity`` example of 5 to 40 words. Each measurement is one ``pha predict`` process of one
tree (``PYTHONPATH``), the older commit checked out with ``git worktree add``; the trees alternate per
size. The first output line is the first time (polled every 50 ms from the start of the process) that
the output, or the ``.partial`` file it streams to, is not empty; the peak memory is the process's
maximum resident set (``wait4``). A run still going after ``--limit`` seconds is stopped with SIGTERM,
and its row says how many rows it had written (the older tree writes them only then, to ``.partial``:
no first line while it ran, "—"); the peak is then the peak until then.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from studylib.records import write_rows
from studylib.reports import write_portable
from studylib.runs import OldTree
from studylib.timing import load_average

ROOT = Path(__file__).resolve().parents[1]
ENTRY = "import sys; from pha_lightning.cli import main; sys.argv[0] = 'pha'; sys.exit(main())"
WORDS = "the a red blue cat dog park river was lovely nasty good awful near in at earned three points".split()


def write_input(path: Path, lines: int, seed: int = 0) -> Path:
    """``lines`` synth_polarity examples of 5 to 40 words."""
    draw = random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(lines):
            sentence = " ".join(draw.choices(WORDS, k=draw.randint(5, 40)))
            handle.write(json.dumps({"task": "synth_polarity", "sentence": sentence}) + "\n")
    return path


def measure(tree: Path, ckpt: Path, examples: Path, work: Path, limit: float) -> dict[str, float | int | bool]:
    """One ``pha predict`` of ``examples`` with the code of ``tree``."""
    output = work / "out.jsonl"
    for stale in work.glob("out.jsonl*"):
        stale.unlink()
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("OMP_NUM_THREADS", "1")
    args = [f"--ckpt_path={ckpt}", f"--data.predict_file={examples}", f"--predict_output={output}"]
    args += ["--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={work}"]
    start = time.perf_counter()
    with open(work / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", ENTRY, "predict", *args], env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=stderr
        )
    first = None
    stopped = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # the child's peak memory comes with its end
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            break
        now = time.perf_counter() - start
        if first is None and any(p.exists() and p.stat().st_size > 0 for p in (output, Path(f"{output}.partial"))):
            first = now
        if now > limit and not stopped:
            process.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(0.05)
    wall = time.perf_counter() - start
    written = next((p for p in (output, Path(f"{output}.partial")) if p.exists()), None)
    rows = sum(1 for _ in open(written)) if written else 0
    if first is None and rows:
        first = wall  # written at the very end, between two polls
    if stopped and first is not None and first > limit:
        first = None  # only the rows kept at the stop: no output line came while it ran
    return {
        "first_line_s": round(first, 1) if first is not None else None,
        "rows": rows,
        "finished": output.exists(),
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "load": round(load_average(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="a checkpoint of the synthetic tasks")
    parser.add_argument("--old-commit", default="4f02244", help="the commit to compare against")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    parser.add_argument("--limit", type=float, default=75.0, help="seconds before a run is stopped")
    parser.add_argument("--output", type=Path, help="write the markdown table here (and the rows as .jsonl beside it)")
    args = parser.parse_args()
    results = []
    with OldTree(args.old_commit) as old, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for number, lines in enumerate(args.sizes):
            examples = write_input(work / f"in_{lines}.jsonl", lines)
            trees = [("old", old), ("new", ROOT)]
            for name, tree in trees if number % 2 == 0 else trees[::-1]:
                row = {"tree": name, "lines": lines, **measure(tree, args.ckpt.resolve(), examples, work, args.limit)}
                print(json.dumps(row), flush=True)
                results.append(row)
    if args.output:
        write_table(args.output, results, args)


def write_table(path: Path, results: list[dict], args: argparse.Namespace) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rows(path.with_suffix(".jsonl"), results)
    header = (
        "| tree | lines | first output line (s) | rows written | finished | wall (s) | CPU (s) | peak RSS (MB) | load |"
    )
    lines = [header, "|" + "---|" * 9]
    for row in sorted(results, key=lambda r: (r["lines"], r["tree"] != "old")):
        first = "—" if row["first_line_s"] is None else row["first_line_s"]
        lines.append(
            f"| {row['tree']} ({args.old_commit if row['tree'] == 'old' else 'this tree'}) | {row['lines']} | {first} | "
            f"{row['rows']} | {row['finished']} | {row['wall_s']} | {row['cpu_s']} | {row['peak_rss_mb']} | {row['load']} |"
        )
    command = f"python benchmarks/predict_streaming.py --ckpt CKPT --sizes {' '.join(map(str, args.sizes))} --limit {args.limit:g}"
    write_portable(path, f"`{command}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
