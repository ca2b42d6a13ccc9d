"""Serving under load: ``pha serve`` (mixed tasks, half routed) against the server a peft user would write.

    python benchmarks/serve_load.py                                     # 60 s per point, CPU
    python benchmarks/serve_load.py --seconds 20 --soak-seconds 60 --output results/serving_load/short.md
    python benchmarks/serve_load.py --soak-seconds 600                  # the 10-minute soak too
    python benchmarks/serve_load.py --in-process --output results/serving_load/in_process.md
    python benchmarks/serve_load.py --processes --concurrency 8 --seconds 20 --profile-http 25

Builds one PHA-LoRA model on the offline suite (random non-zero factors, as benchmarks/serving.py:
the cost does not depend on what they learned), its bundle (precomputed adapters) and its
``pha export --format peft`` adapters, and serves the same validation examples with:

* ``pha``: ``pha serve`` of the bundle; half the requests name their task, half leave it to the router;
* ``peft``: LitServe around one ``PeftModel`` holding every task's adapter, a batch predicted in one
  call with ``adapter_names=`` and each example through its task's exported head; every request
  names its task (a peft server cannot route).

Both run with the same LitServe batching (``--max-batch-size``, ``--batch-timeout``), one inference
worker, one torch thread. Closed-loop clients (each sends its next request when the last is
answered, one example per request) at each concurrency, the two servers alternating per point;
per point: requests/s, p50/p99 latency, the server processes' CPU time per request and their peak
memory (PSS, summed over LitServe's processes). ``pha predict`` on the same examples (a JSONL file)
is the offline reference, and the answers of ``pha serve`` are checked against its rows. The soak
(``--soak-seconds``) runs ``pha serve`` at concurrency 32 with 5 % malformed requests and reports
failed valid requests, answers to the malformed ones, and memory over time.

``--in-process`` measures the servers' per-request work without HTTP, in this process, on one
thread: the CPU time per request (``time.process_time``: steadier than wall time on a loaded
machine) of each server's request path, exactly as LitServe's batched loop runs it (``decode_request``,
``batch``, ``predict``, ``unbatch``, ``encode_response``) plus the body's JSON parse and the answer's
JSON as FastAPI sends it, and for ``pha serve`` the request check its HTTP process makes first. Batches of
``--batch-sizes`` requests (what LitServe's dynamic batching forms at low and high concurrency),
``pha`` (half routed), ``pha_named`` (every request names its task) and ``peft`` interleaved within
each of ``--repeats`` repetitions; the table gives the median and range, and the CPU per stage.

``--processes`` says where each server's memory and CPU go: first ``pha serve``'s main process in a
fresh interpreter, its memory and heavy imports after each start-up step up to where LitServe forks
its HTTP process (:data:`STARTUP_PROBE`); then each server alone under load at each
``--concurrency``, each process role's (main, queue manager, inference worker, HTTP) RSS, PSS and
USS after the load and its CPU per request; with ``--profile-http N`` the HTTP processes run under
cProfile (CPU time) during the measured load and the report lists the N functions with the most
CPU of their own in either server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import litserve as ls
import psutil
import torch
from fastapi.encoders import jsonable_encoder
from starlette.responses import JSONResponse, Response
from studylib.reports import command_line, load_line, machine_line, markdown_table, report_head, write_report
from studylib.serving_model import TASKS, lora_model, request_stream
from studylib.timing import children_cpu_seconds, load_average, peak_rss_mib, timed

ROOT = Path(__file__).resolve().parents[1]
PHA = str(Path(sys.executable).with_name("pha"))
#: the malformed requests of the soak: not JSON, an unknown task, a missing field, a wrong type, an empty list
MALFORMED: tuple[bytes, ...] = (
    b'{"task": "synth_polarity", "sentence": ',
    b'{"task": "no_such_task", "sentence": "a red cat"}',
    b'{"task": "synth_match", "sentence1": "a red cat"}',
    b'{"task": "synth_polarity", "sentence": null}',
    b"[]",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="pypi:all-MiniLM-L6-v2", help="an encoder-only backbone")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--lora-targets", nargs="+", default=["query", "value"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load per point")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each point, not counted")
    parser.add_argument("--examples", type=int, default=512, help="distinct examples in the request stream")
    parser.add_argument("--max-batch-size", type=int, default=32, help="LitServe's max_batch_size, both servers")
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="LitServe's batch_timeout, both servers")
    parser.add_argument("--accelerator", default="cpu", help="LitServe's accelerator, both servers")
    parser.add_argument("--soak-seconds", type=float, default=0.0, help="then a soak of pha serve this long (0: none)")
    parser.add_argument("--soak-concurrency", type=int, default=32)
    parser.add_argument("--malformed", type=float, default=0.05, help="share of malformed requests in the soak")
    parser.add_argument("--note", default="", help="a line for the report (e.g. that this is a short run)")
    parser.add_argument("--in-process", action="store_true", help="the per-request CPU of both servers, without HTTP")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32], help="--in-process: requests a batch")
    parser.add_argument("--repeats", type=int, default=5, help="--in-process: interleaved repetitions")
    parser.add_argument(
        "--processes",
        action="store_true",
        help="pha serve's start-up memory by step, then each server alone: memory and CPU by process role",
    )
    parser.add_argument(
        "--profile-http", type=int, default=0, help="--processes: the top N functions of the HTTP processes (cProfile)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="the report (default: results/serving_load/serve_load.md, in_process.md or processes.md)",
    )
    parser.add_argument("--peft-server", type=Path, help=argparse.SUPPRESS)  # internal: run the peft server
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------- peft server
class PeftAPI(ls.LitAPI):
    """What a peft user would serve: one PeftModel with every task's adapter, ``adapter_names=`` per
    batch, each example's pooled states through its task's head (a score mapped back to its range,
    as the head file says); the client names the task."""

    def __init__(self, export: str, backbone: str, tasks: list[str], **batching: Any) -> None:
        super().__init__(**batching)
        self.export, self.backbone, self.task_names = Path(export), backbone, tasks

    def setup(self, device: str) -> None:
        from peft import PeftModel
        from safetensors.torch import load_file

        from pha_lightning.data.catalog import get_task
        from pha_lightning.formats.task_export import HEAD_NAME
        from pha_lightning.hub import load_tokenizer, resolve_backbone_path
        from pha_lightning.model.backbone import backbone_class

        base = backbone_class(self.backbone).from_pretrained(resolve_backbone_path(self.backbone))
        first, *rest = self.task_names
        self.peft = PeftModel.from_pretrained(base, self.export / "peft" / first, adapter_name=first)
        for name in rest:
            self.peft.load_adapter(self.export / "peft" / name, adapter_name=name)
        self.peft.to(device).eval()
        self.heads = {
            name: load_file(self.export / "peft" / name / HEAD_NAME, device=device) for name in self.task_names
        }
        self.scales = {name: regression_scale(self.export / "peft" / name / HEAD_NAME) for name in self.task_names}
        self.tasks = {name: get_task(name) for name in self.task_names}
        self.tokenizer = load_tokenizer(self.backbone)
        self.device = device

    def decode_request(self, request):  # noqa: ANN001, ANN201 (LitServe passes the parsed JSON)
        task = self.tasks[request["task"]]
        text, pair = task.encoder_text(request)
        return task.name, self.tokenizer(text, pair, truncation=True, max_length=128)

    def batch(self, inputs: list) -> tuple[list[str], dict[str, torch.Tensor]]:
        names = [name for name, _ in inputs]
        return names, self.tokenizer.pad([encoded for _, encoded in inputs], return_tensors="pt").to(self.device)

    @torch.no_grad()
    def predict(self, batch: tuple[list[str], dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
        names, inputs = batch
        hidden = self.peft(**inputs, adapter_names=names).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        answers = []
        for name, row in zip(names, pooled):
            head, task = self.heads[name], self.tasks[name]
            out = row @ head["weight"].T + head["bias"]
            if task.is_regression:
                center, half = self.scales[name]
                answers.append({"task": name, "prediction": float(out[0]) * half + center})
            else:
                answers.append({"task": name, "prediction": task.class_names[int(out.argmax())]})
        return answers

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output):  # noqa: ANN001, ANN201
        return output


def regression_scale(head_file: Path) -> tuple[float, float]:
    """``(center, half-width)`` a regression head's output is mapped back by (its file's metadata)."""
    from safetensors import safe_open

    with safe_open(head_file, "pt") as head:
        metadata = head.metadata()
    return float(metadata["regression_center"]), float(metadata["regression_half_width"])


def run_peft_server(args: argparse.Namespace) -> None:
    export = json.loads((args.peft_server / "export.json").read_text())
    tasks = list(export["tasks"])
    api = PeftAPI(
        str(args.peft_server),
        args.backbone,
        tasks,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
    )
    server = ls.LitServer(api, accelerator=args.accelerator, devices=1)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


# ---------------------------------------------------------------------------------------- the load
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen([*command, f"--port={port}"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{command[:3]} exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{command[:3]} not healthy after 600 s")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()


class Resources:
    """CPU seconds and memory (PSS, MB) of a server's process tree, memory sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.root, self.interval = psutil.Process(pid), interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()

    def tree(self) -> list[psutil.Process]:
        return [self.root, *self.root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.tree():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def memory_mb(self) -> float:
        total = 0
        for process in self.tree():
            try:
                total += process.memory_full_info().pss
            except psutil.Error:
                pass
        return total / 2**20

    def __enter__(self) -> Resources:
        self.started, self.cpu_start = time.monotonic(), self.cpu_seconds()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.monotonic() - self.started, self.memory_mb()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu = self.cpu_seconds() - self.cpu_start


async def closed_loop(
    url: str, bodies: list[bytes], concurrency: int, seconds: float, malformed: float = 0.0, seed: int = 0
) -> list[dict[str, Any]]:
    """``concurrency`` clients, each posting its next body when the last is answered, for ``seconds``;
    with ``malformed`` > 0 that share of requests is a body of :data:`MALFORMED`. Every request's
    latency, status and whether it was malformed."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def client_loop(k: int) -> None:
            i = k
            while time.monotonic() < end:
                bad = rng.random() < malformed
                body = rng.choice(MALFORMED) if bad else bodies[i % len(bodies)]
                started = time.monotonic()
                try:
                    status = (await client.post(f"{url}/predict", content=body)).status_code
                except httpx.HTTPError as err:
                    status = type(err).__name__
                records.append(
                    {"latency": time.monotonic() - started, "status": status, "malformed": bad, "t": started}
                )
                i += concurrency

        await asyncio.gather(*(client_loop(k) for k in range(concurrency)))
    return records


def failures(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many requests got each answer other than 200 (an HTTP status, or the client's error)."""
    return dict(Counter(str(r["status"]) for r in records if r["status"] != 200))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(url: str, pid: int, bodies: list[bytes], concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    asyncio.run(closed_loop(url, bodies, concurrency, args.warmup))
    with Resources(pid) as used:
        started = time.monotonic()
        records = asyncio.run(closed_loop(url, bodies, concurrency, args.seconds))
        wall = time.monotonic() - started
    ok = [r["latency"] for r in records if r["status"] == 200]
    return {
        "concurrency": concurrency,
        "requests": len(records),
        "failed": len(records) - len(ok),
        "failures": failures(records),
        "max_ms": 1000 * max(ok, default=0.0),
        "requests_per_s": len(ok) / wall,
        "p50_ms": 1000 * percentile(ok, 0.5),
        "p99_ms": 1000 * percentile(ok, 0.99),
        "cpu_ms_per_request": 1000 * used.cpu / max(len(ok), 1),
        "peak_pss_mb": max((m for _, m in used.samples), default=used.memory_mb()),
    }


# ---------------------------------------------------------------------------------------- in-process
#: the stages of a request's path timed apart: the body to the batch, the batch's prediction, the answers
STAGES = ("decode", "predict", "encode")
#: the request streams of the in-process comparison (:func:`request_bodies`)
STREAMS = ("pha", "pha_named", "peft")
RequestPath = Callable[[list[bytes], Counter], list[Any]]


def request_path(api: ls.LitAPI, check: Callable[[bytes], object] | None = None) -> RequestPath:
    """A batch of request bodies through a server's work, without HTTP: ``check`` (pha serve's
    request check, in its HTTP process), the JSON parse (LitServe's, in its HTTP process), then
    LitServe's batched loop and the answers' JSON as FastAPI sends it (:func:`sent`); each stage's
    CPU seconds added to ``spent``. Returns the answers as parsed JSON."""

    def run(bodies: list[bytes], spent: Counter) -> list[Any]:
        def decode() -> Any:
            for body in bodies if check is not None else ():
                check(body)
            return api.batch([api.decode_request(json.loads(body)) for body in bodies])

        batch, _, decoding = timed(decode)
        outputs, _, predicting = timed(lambda: api.unbatch(api.predict(batch)))
        responses, _, encoding = timed(lambda: [sent(api.encode_response(output)) for output in outputs])
        spent.update({"decode": decoding, "predict": predicting, "encode": encoding})
        return [json.loads(response.body) for response in responses]

    return run


def sent(answer: Any) -> Response:
    """What FastAPI sends for the value LitServe's endpoint returns (the encoded answer): a response
    as it is, anything else walked by ``jsonable_encoder`` into a JSON response."""
    return answer if isinstance(answer, Response) else JSONResponse(jsonable_encoder(answer))


def in_process(args: argparse.Namespace) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """CPU per request of each server's path (:func:`request_path`) in batches of each size, the
    servers interleaved within every repetition; and how many of pha's answers to the named stream
    equal the peft server's."""
    from pha_lightning.model.serving import PHAServingAPI, ServeConfig, ServedTasks

    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout}
    bodies = {name: [json.dumps(b).encode() for b in stream] for name, stream in request_bodies(args).items()}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        bundle, export = served_model(args, Path(tmp))
        pha = PHAServingAPI(str(bundle), ServeConfig(**batching))
        pha.setup(args.accelerator)
        peft = PeftAPI(str(export), args.backbone, args.tasks, **batching)
        peft.setup(args.accelerator)
        check = ServedTasks.of(pha.model).examples
        paths = {"pha": request_path(pha, check), "pha_named": request_path(pha, check), "peft": request_path(peft)}
        named = zip(paths["pha_named"](bodies["pha_named"], Counter()), paths["peft"](bodies["peft"], Counter()))
        same = sum(same_answer(mine, theirs) for mine, theirs in named), len(bodies["peft"])
        rows = []
        for repeat in range(args.repeats):
            for size in args.batch_sizes:
                for name in paths if repeat % 2 == 0 else reversed(paths):
                    spent: Counter = Counter()
                    mine = bodies[name]
                    for start in range(0, len(mine), size):
                        paths[name](mine[start : start + size], spent)
                    rows.append({"server": name, "batch_size": size, "repeat": repeat, "requests": len(mine), **spent})
                    print(json.dumps(rows[-1]), flush=True)
    return rows, same


def same_answer(answer: dict[str, Any], reference: dict[str, Any]) -> bool:
    """The same task and label, or a score within 1e-4."""
    value, expected = answer["prediction"], reference["prediction"]
    close = abs(value - expected) < 1e-4 if isinstance(expected, float) else value == expected
    return answer["task"] == reference["task"] and close


def cpu_ms(row: dict[str, Any], stages: tuple[str, ...] = STAGES) -> float:
    """CPU ms per request of an in-process row, over ``stages``."""
    return 1000 * sum(row[stage] for stage in stages) / row["requests"]


def write_in_process_report(
    args: argparse.Namespace, rows: list[dict[str, Any]], same: tuple[int, int], load: tuple[float, float]
) -> None:
    command = command_line()
    lines = [
        *report_head(
            f"Per-request CPU of pha serve and the peft server, in one process ({args.backbone}, {len(args.tasks)} tasks)",
            command,
            args.note,
        ),
        f"{args.examples} requests (one example each) per server, batch size and repetition, {args.repeats} "
        f"repetitions, the servers interleaved within each; one torch thread, accelerator {args.accelerator}; "
        f"{machine_line()}, litserve {ls.__version__}; {load_line(load)}. CPU ms per request "
        "(process time): the median over repetitions [range], and each stage's median: decode (pha: the "
        "request check; the JSON parse, decode_request, batch), predict, encode (unbatch, encode_response, "
        "the JSON FastAPI sends).",
        "",
    ]
    table = []
    for size in args.batch_sizes:
        runs = {name: [r for r in rows if r["server"] == name and r["batch_size"] == size] for name in STREAMS}
        peft = statistics.median(map(cpu_ms, runs["peft"]))
        for name, mine in runs.items():
            total = [cpu_ms(r) for r in mine]
            stages = [statistics.median(cpu_ms(r, (stage,)) for r in mine) for stage in STAGES]
            spread = f"{statistics.median(total):.2f} [{min(total):.2f}–{max(total):.2f}]"
            table.append([size, name, spread, f"{statistics.median(total) / peft:.2f}", *(f"{v:.2f}" for v in stages)])
    header = ["requests per batch", "server", "CPU ms / request", "÷ peft", *STAGES]
    lines += [
        *markdown_table(header, table),
        "",
        "pha: half the requests name their task, half are routed; pha_named and peft: every request names its "
        f"task. pha's answers to the named stream equal the peft server's on {same[0]} of {same[1]} requests "
        "(task and label; scores within 1e-4).",
    ]
    write_report(args.output, lines, [*rows, {"agreement": same}], command)


# ---------------------------------------------------------------------------------------- per process
#: the packages the start-up probe reports as imported
HEAVY = ("torch", "transformers", "lightning", "torchmetrics", "datasets", "tensorboard", "jsonargparse")
#: ``pha serve``'s main process in a fresh interpreter (``--ckpt_path`` etc. as arguments): its memory
#: and heavy imports after each step, up to where LitServe would start its processes (not started)
STARTUP_PROBE = """
import json, sys
import psutil

def mark(step):
    memory = psutil.Process().memory_full_info()
    imported = [name for name in HEAVY if name in sys.modules]
    row = {"step": step, "rss_mb": memory.rss / 2**20, "uss_mb": memory.uss / 2**20, "imported": imported}
    print(json.dumps(row), flush=True)

mark("python, psutil")
import pha_lightning.cli.entry
mark("import pha_lightning.cli.entry")
import pha_lightning.cli.serve as serve
mark("import pha_lightning.cli.serve")
import litserve

def run(self, **options):
    mark("LitServer.run: LitServe would fork its HTTP process now")

litserve.LitServer.run = run
serve.main(sys.argv[1:])
"""


def startup_steps(bundle: Path) -> list[dict[str, Any]]:
    """:data:`STARTUP_PROBE` on ``bundle``: one row per step."""
    code = f"HEAVY = {HEAVY!r}\n{STARTUP_PROBE}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, f"--ckpt_path={bundle}", "--accelerator=cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=bundle.parent,  # not this checkout: ``-c`` puts the working folder first on the import path
    )
    if done.returncode != 0:
        raise SystemExit(f"the start-up probe failed: {done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def process_roles(pid: int) -> dict[int, str]:
    """Each process of a LitServe server by role: ``main``; ``manager`` (its queues' manager, forked
    before the workers start); ``worker`` (the inference workers, spawned); ``http`` (the HTTP
    servers, forked after the workers are ready); ``other``."""
    root = psutil.Process(pid)
    children = sorted(root.children(recursive=True), key=lambda child: child.pid)
    commands = {child.pid: " ".join(child.cmdline()) for child in children}
    workers = [child for child, command in commands.items() if "spawn_main" in command]
    roles = {pid: "main"}
    for child, command in commands.items():
        if child in workers:
            roles[child] = "worker"
        elif "resource_tracker" in command or not workers:
            roles[child] = "other"
        else:
            roles[child] = "manager" if child < workers[0] else "http"
    return roles


def process_cpu(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each process."""
    seconds = {}
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        seconds[pid] = times.user + times.system
    return seconds


def per_process(
    args: argparse.Namespace, name: str, command: list[str], bodies: list[bytes], concurrency: int, folder: Path
) -> list[dict[str, Any]]:
    """One server alone under closed-loop load: each role's memory (RSS, PSS, USS after the load)
    and CPU ms per answered request; with ``--profile-http``, its HTTP processes' cProfile stats
    over the measured load (``folder/<name>.prof.<pid>``)."""
    process, url = start(command, folder / f"{name}.log")
    try:
        asyncio.run(closed_loop(url, bodies, concurrency, args.warmup))
        roles = process_roles(process.pid)
        http = [pid for pid, role in roles.items() if role == "http"]
        for pid in http if args.profile_http else ():
            os.kill(pid, signal.SIGUSR1)
        before = process_cpu(list(roles))
        records = asyncio.run(closed_loop(url, bodies, concurrency, args.seconds))
        spent = {pid: seconds - before[pid] for pid, seconds in process_cpu(list(roles)).items()}
        for pid in http if args.profile_http else ():
            os.kill(pid, signal.SIGUSR2)
        memory = {pid: psutil.Process(pid).memory_full_info() for pid in roles}
        time.sleep(2 if args.profile_http else 0)  # the stats are written by a signal handler
    finally:
        stop(process)
    answered = max(sum(r["status"] == 200 for r in records), 1)
    rows = []
    for role in ("main", "manager", "worker", "http", "other"):
        pids = [pid for pid, mine in roles.items() if mine == role]
        if pids:
            rows.append(
                {
                    "server": name,
                    "concurrency": concurrency,
                    "role": role,
                    "processes": len(pids),
                    "requests": answered,
                    **{
                        f"{kind}_mb": sum(getattr(memory[pid], kind) for pid in pids) / 2**20
                        for kind in ("rss", "pss", "uss")
                    },
                    "cpu_ms_per_request": 1000 * sum(spent[pid] for pid in pids) / answered,
                }
            )
    return rows


def run_profiled(prefix: str, command: list[str]) -> None:
    """Run a server command in this process with every uvicorn server (LitServe's HTTP processes)
    under cProfile in CPU time: SIGUSR1 starts it, SIGUSR2 stops it and writes ``<prefix>.<pid>``."""
    import cProfile

    import uvicorn

    serve = uvicorn.Server.run

    def profiled(self: uvicorn.Server, *positional: Any, **options: Any) -> None:
        profile = cProfile.Profile(time.process_time)

        def stop_and_write(*_: object) -> None:
            profile.disable()
            profile.dump_stats(f"{prefix}.{os.getpid()}")

        signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
        signal.signal(signal.SIGUSR2, stop_and_write)
        return serve(self, *positional, **options)

    uvicorn.Server.run = profiled
    if Path(command[0]).name == "pha":
        from pha_lightning.cli.entry import main as pha

        pha(command[1:])
    else:
        run_peft_server(parse_args(command[2:]))


def profile_table(folder: Path, requests: dict[str, int], top: int) -> list[list[object]]:
    """The functions with the most CPU of their own in either server's HTTP processes (cProfile
    ``tottime``, ms per answered request), each with both servers' figure."""
    import pstats

    own: dict[str, dict[str, float]] = {}
    for name, answered in requests.items():
        files = sorted(folder.glob(f"{name}.prof.*"))
        if not files:
            continue
        stats = pstats.Stats(*map(str, files)).stats  # {(file, line, function): (cc, nc, tt, ct, callers)}
        for (file, line, function), (_, _, tottime, _, _) in stats.items():
            where = f"{Path(file).name}:{line}({function})" if line else function
            own.setdefault(where, {})[name] = own.get(where, {}).get(name, 0.0) + 1000 * tottime / answered
    totals = {name: sum(row.get(name, 0.0) for row in own.values()) for name in requests}
    ranked = sorted(own.items(), key=lambda item: -max(item[1].values()))[:top]
    return [["all functions", *(f"{totals[name]:.3f}" for name in requests)]] + [
        [where, *(f"{row.get(name, 0.0):.3f}" for name in requests)] for where, row in ranked
    ]


def processes(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[list[object]]]:
    """pha serve's start-up steps, then each server alone at each concurrency, by process role."""
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = Path(tmp)
        bundle, export = served_model(args, folder)
        steps = startup_steps(bundle)
        bodies = {name: [json.dumps(b).encode() for b in stream] for name, stream in request_bodies(args).items()}
        commands = server_commands(args, bundle, export)
        if args.profile_http:
            here = [sys.executable, str(Path(__file__).resolve())]
            commands = {
                name: [*here, f"--profiled={folder / name}.prof", *command] for name, command in commands.items()
            }
        rows = []
        for concurrency in args.concurrency:
            for name, command in commands.items():
                rows += per_process(args, name, command, bodies[name], concurrency, folder)
                print(json.dumps(rows[-1]), flush=True)
        requests = {
            name: sum(r["requests"] for r in rows if r["server"] == name and r["role"] == "main") for name in commands
        }
        profile = profile_table(folder, requests, args.profile_http) if args.profile_http else []
    return steps, rows, profile


def write_processes_report(
    args: argparse.Namespace,
    steps: list[dict],
    rows: list[dict],
    profile: list[list[object]],
    load: tuple[float, float],
) -> None:
    command = command_line()
    lines = [
        *report_head(
            f"pha serve and the peft server, process by process ({args.backbone}, {len(args.tasks)} tasks)",
            command,
            args.note,
        ),
        f"{machine_line()}, litserve {ls.__version__}; {load_line(load)}.",
        "",
        "`pha serve`'s main process, step by step (a fresh interpreter; MB):",
        "",
        *markdown_table(
            ["step", "RSS", "USS", "imported"],
            [[s["step"], f"{s['rss_mb']:.0f}", f"{s['uss_mb']:.0f}", ", ".join(s["imported"]) or "–"] for s in steps],
        ),
        "",
        f"Each server alone, {args.seconds:g} s of closed-loop load after {args.warmup:g} s of warm-up (pha: half "
        "the requests routed); memory after the load (MB, summed over the role's processes; PSS shares a page "
        "among the processes mapping it, USS counts the pages only this process maps); CPU ms per answered request:",
        "",
        *markdown_table(
            ["concurrency", "server", "role", "processes", "RSS", "PSS", "USS", "CPU ms / request"],
            [
                [
                    r["concurrency"],
                    r["server"],
                    r["role"],
                    r["processes"],
                    f"{r['rss_mb']:.0f}",
                    f"{r['pss_mb']:.0f}",
                    f"{r['uss_mb']:.0f}",
                    f"{r['cpu_ms_per_request']:.2f}",
                ]
                for r in rows
            ],
        ),
    ]
    for concurrency in args.concurrency:
        total = {
            name: sum(r["pss_mb"] for r in rows if r["server"] == name and r["concurrency"] == concurrency)
            for name in ("pha", "peft")
        }
        lines += [
            "",
            f"Concurrency {concurrency}: PSS over all processes, pha {total['pha']:.0f} MB, peft {total['peft']:.0f} MB.",
        ]
    if profile:
        lines += [
            "",
            "The HTTP processes under cProfile (CPU time, which cProfile inflates per Python call) over the "
            "measured load, own time (tottime) in ms per answered request:",
            "",
            *markdown_table(["function", "pha", "peft"], profile),
        ]
    write_report(args.output, lines, [*({"step": s} for s in steps), *rows], command)


# ---------------------------------------------------------------------------------------- the run
def offline_reference(bundle: Path, pha_bodies: list[dict], folder: Path) -> tuple[dict[str, Any], list[dict]]:
    """``pha predict`` on the examples: wall and CPU seconds, peak RSS, and its rows."""
    examples, output = folder / "stream.jsonl", folder / "predict.jsonl"
    examples.write_text("".join(json.dumps(body) + "\n" for body in pha_bodies))
    before = children_cpu_seconds()
    started = time.monotonic()
    done = subprocess.run(
        [
            PHA,
            "predict",
            f"--ckpt_path={bundle}",
            f"--data.predict_file={examples}",
            f"--predict_output={output}",
            "--data.eval_batch_size=32",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={folder / 'predict_run'}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    if done.returncode != 0:
        raise SystemExit(f"pha predict failed: {done.stderr[-2000:]}")
    wall = time.monotonic() - started
    cpu = children_cpu_seconds() - before
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    return {"examples": len(rows), "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_rss_mib(children=True)}, rows


def agreement(url: str, pha_bodies: list[dict], rows: list[dict]) -> tuple[int, int]:
    """How many of ``pha serve``'s answers to the stream (one list request) equal ``pha predict``'s rows."""
    from pha_lightning.model.serving import served_row

    answers = httpx.post(f"{url}/predict", json=pha_bodies, timeout=600).json()
    return sum(same_answer(answer, row) for answer, row in zip(answers, map(served_row, rows))), len(rows)


def soak(url: str, pid: int, bodies: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    with Resources(pid, interval=2.0) as used:
        records = asyncio.run(
            closed_loop(url, bodies, args.soak_concurrency, args.soak_seconds, args.malformed, seed=1)
        )
    valid = [r for r in records if not r["malformed"]]
    bad = [r for r in records if r["malformed"]]
    ok = [r["latency"] for r in valid if r["status"] == 200]
    window = max(args.soak_seconds / 6, 2.0)
    first = [m for t, m in used.samples if t <= window]
    last = [m for t, m in used.samples if t >= args.soak_seconds - window]
    return {
        "seconds": args.soak_seconds,
        "concurrency": args.soak_concurrency,
        "valid": len(valid),
        "valid_failed": len(valid) - len(ok),
        "valid_failures": failures(valid),
        "malformed": len(bad),
        "malformed_4xx": sum(isinstance(r["status"], int) and 400 <= r["status"] < 500 for r in bad),
        "requests_per_s": len(ok) / args.soak_seconds,
        "p50_ms": 1000 * percentile(ok, 0.5),
        "p99_ms": 1000 * percentile(ok, 0.99),
        "memory_first_mb": statistics.mean(first) if first else float("nan"),
        "memory_last_mb": statistics.mean(last) if last else float("nan"),
        "memory_window_s": window,
    }


def served_model(args: argparse.Namespace, folder: Path) -> tuple[Path, Path]:
    """The bundle ``pha serve`` serves and the peft export the peft server loads, of one model."""
    model, export = lora_model(args.backbone, args.tasks, args.lora_targets, folder)
    # with the data settings pha predict reads from a bundle (the tasks, the source length)
    bundle = model.save_pretrained(
        folder / "bundle", precompute=True, overwrite=True, data={"tasks": args.tasks, "max_source_length": 128}
    )
    return bundle, export


def server_commands(args: argparse.Namespace, bundle: Path, export: Path) -> dict[str, list[str]]:
    """The command lines of ``pha serve`` and of the peft server (without ``--port``), same batching."""
    return {
        "pha": [
            PHA,
            "serve",
            f"--ckpt_path={bundle}",
            f"--max_batch_size={args.max_batch_size}",
            f"--batch_timeout={args.batch_timeout}",
            f"--accelerator={args.accelerator}",
        ],
        "peft": [
            sys.executable,
            str(Path(__file__).resolve()),
            f"--peft-server={export}",
            f"--backbone={args.backbone}",
            f"--max-batch-size={args.max_batch_size}",
            f"--batch-timeout={args.batch_timeout}",
            f"--accelerator={args.accelerator}",
        ],
    }


def request_bodies(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """The request stream of each server: pha's with every other request's task left to the router."""
    stream = request_stream(args.tasks, args.examples)
    half = [body if i % 2 == 0 else {k: v for k, v in body.items() if k != "task"} for i, body in enumerate(stream)]
    return {"pha": half, "pha_named": stream, "peft": stream}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("--profiled="):  # internal: --profile-http's server
        run_profiled(sys.argv[1].split("=", 1)[1], sys.argv[2:])
        return
    args = parse_args()
    if args.peft_server is not None:
        run_peft_server(args)
        return
    torch.set_num_threads(1)
    default = "in_process.md" if args.in_process else "processes.md" if args.processes else "serve_load.md"
    args.output = args.output or Path("results/serving_load") / default
    args.output.parent.mkdir(parents=True, exist_ok=True)
    load_start = load_average()
    if args.in_process:
        measured = in_process(args)
        write_in_process_report(args, *measured, (load_start, load_average()))
        return
    if args.processes:
        measured = processes(args)
        write_processes_report(args, *measured, (load_start, load_average()))
        return
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = Path(tmp)
        bundle, export = served_model(args, folder)
        bodies = request_bodies(args)
        pha_bodies = bodies["pha"]
        encoded = {name: [json.dumps(b).encode() for b in bodies[name]] for name in ("pha", "peft")}
        offline, rows = offline_reference(bundle, pha_bodies, folder)
        commands = server_commands(args, bundle, export)
        servers = {name: start(command, folder / f"{name}.log") for name, command in commands.items()}
        try:
            same = agreement(servers["pha"][1], pha_bodies, rows)
            points = []
            for concurrency in args.concurrency:
                for name, (process, url) in servers.items():
                    point = {"server": name, **measure(url, process.pid, encoded[name], concurrency, args)}
                    print(json.dumps(point), flush=True)
                    points.append(point)
            soaked = None
            if args.soak_seconds > 0:
                stop(servers.pop("peft")[0])
                process, url = servers["pha"]
                soaked = soak(url, process.pid, encoded["pha"], args)
                print(json.dumps(soaked), flush=True)
        finally:
            for process, _ in servers.values():
                stop(process)
    report(args, points, offline, same, soaked, (load_start, load_average()))


def report(
    args: argparse.Namespace,
    points: list[dict],
    offline: dict,
    same: tuple[int, int],
    soaked: dict | None,
    load: tuple[float, float],
) -> None:
    command = command_line()
    lines = [
        *report_head(
            f"pha serve under load against a peft server ({args.backbone}, {len(args.tasks)} tasks, LoRA on {args.lora_targets})",
            command,
            args.note,
        ),
        f"{args.seconds:g} s per point after {args.warmup:g} s of warm-up; LitServe max_batch_size {args.max_batch_size}, "
        f"batch_timeout {args.batch_timeout:g} s, one inference worker, one torch thread, accelerator {args.accelerator}; "
        f"{machine_line()}, litserve {ls.__version__}; {load_line(load)} (the client shares the cores).",
        "",
        "| concurrency | server | requests/s | pha / peft | p50 ms | p99 ms | p99 / p50 | server CPU ms / request | peak PSS MB | failed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    peft = {p["concurrency"]: p for p in points if p["server"] == "peft"}
    for p in points:
        ratio = f"{p['requests_per_s'] / peft[p['concurrency']]['requests_per_s']:.2f}" if p["server"] == "pha" else ""
        lines.append(
            f"| {p['concurrency']} | {p['server']} | {p['requests_per_s']:.1f} | {ratio} | {p['p50_ms']:.0f} | "
            f"{p['p99_ms']:.0f} | {p['p99_ms'] / p['p50_ms']:.1f} | {p['cpu_ms_per_request']:.1f} | "
            f"{p['peak_pss_mb']:.0f} | {p['failed']}{' ' + json.dumps(p['failures']) if p['failures'] else ''} |"
        )
    lines += [
        "",
        f"pha: half the requests name their task, half are routed; peft: every request names its task. "
        f"Offline reference, `pha predict` on the same {offline['examples']} examples (batches of 32, start-up included): "
        f"{offline['wall_s']:.1f} s wall ({offline['examples'] / offline['wall_s']:.1f} examples/s), "
        f"{offline['cpu_s']:.1f} s CPU ({1000 * offline['cpu_s'] / offline['examples']:.1f} ms / example), "
        f"peak RSS {offline['peak_rss_mb']:.0f} MB. pha serve's answers equal pha predict's rows on "
        f"{same[0]} of {same[1]} examples (task and label; scores within 1e-4).",
    ]
    if soaked:
        lines += [
            "",
            f"Soak: {soaked['seconds']:g} s of pha serve at concurrency {soaked['concurrency']}, {100 * args.malformed:g} % "
            f"malformed requests: {soaked['valid']} valid requests, {soaked['valid_failed']} failed "
            f"{json.dumps(soaked['valid_failures'])}; "
            f"{soaked['malformed']} malformed, {soaked['malformed_4xx']} answered 4xx; {soaked['requests_per_s']:.1f} "
            f"requests/s, p50 {soaked['p50_ms']:.0f} ms, p99 {soaked['p99_ms']:.0f} ms; memory (PSS) "
            f"{soaked['memory_first_mb']:.0f} MB over the first {soaked['memory_window_s']:.0f} s, "
            f"{soaked['memory_last_mb']:.0f} MB over the last.",
        ]
    rows = [*points, {"offline": offline, "agreement": same}, *([{"soak": soaked}] if soaked else [])]
    write_report(args.output, lines, rows, command)


if __name__ == "__main__":
    main()
