"""`pha serve` through a real HTTP client against a real server process on 127.0.0.1: the contract
(health, tasks, predictions equal to `pha predict`'s), 64 concurrent clients, bad bodies, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from production_fixtures import (
    HELD_OUT_TASK,
    PHA,
    TASKS,
    calibrated_run,
    pha_env,
    run_pha,
    split_examples,
    trained_checkpoint,
)

from pha_lightning.model.serving import PHAServingAPI, Request, ServeConfig, served_row

pytestmark = pytest.mark.slow  # trains a model and runs servers

EXAMPLES = [
    {"task": "synth_polarity", "sentence": "the red cat near the park was lovely", "id": "a"},
    {"sentence": "in the park the nasty red cat earned three points"},
    {"task": "synth_score", "sentence": "in the park the nasty red cat earned five points", "label": 5},
    {"text": "the blue dog near the river was awful", "id": 4},
    {"task": "synth_match", "sentence1": "i have a red cat at the park", "sentence2": "you have a nice dog"},
    {"sentence1": "i have a green bus at the beach", "sentence2": "you have a poor truck"},
    {"task": "synth_polarity", "sentence": "someone said the weather was " + "very " * 80 + "good"},
]
MAX_BODY_BYTES = 50_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A ``pha serve`` process and a client of it."""

    def __init__(self, ckpt_path: Path, log: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [PHA, "serve", f"--ckpt_path={ckpt_path}", f"--port={self.port}", *options]
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, env=pha_env(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (
                f"pha serve exited {self.process.returncode}:\n{log.read_text()[-3000:]}"
            )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"pha serve not healthy after 300 s:\n{log.read_text()[-3000:]}")

    def post(self, body: object, **kwargs: object) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(f"{self.url}/predict", content=content, timeout=120, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def pha_predict(bundle: Path, examples: list[dict], root: Path) -> list[dict]:
    """The rows `pha predict` writes for ``examples``, as the server answers them."""
    path, output = root / "in.jsonl", root / "predictions.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    run_pha(
        "predict",
        f"--ckpt_path={bundle}",
        f"--data.predict_file={path}",
        f"--predict_output={output}",
        "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={root / 'run'}",
        cwd=root,
    )
    return [served_row(json.loads(line)) for line in output.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    ckpt = trained_checkpoint(tmp_path_factory)
    root = tmp_path_factory.mktemp("serve")
    bundle = root / "bundle"
    run_pha("export", f"--ckpt_path={ckpt}", f"--output_dir={bundle}", cwd=root)
    return {"ckpt": ckpt, "bundle": bundle, "root": root, "expected": pha_predict(bundle, EXAMPLES, root)}


@pytest.fixture(scope="module")
def server(trained: dict) -> Server:
    running = Server(
        trained["bundle"],
        trained["root"] / "server.log",
        "--max_batch_size=16",
        "--batch_timeout=0.02",
        f"--max_body_bytes={MAX_BODY_BYTES}",
        "--accelerator=cpu",
    )
    yield running
    running.stop()


def assert_rows_equal(got: list[dict], expected: list[dict]) -> None:
    """Same fields and values; scores and similarities within float tolerance (batches differ in padding)."""
    assert [sorted(row) for row in got] == [sorted(row) for row in expected]
    for answer, reference in zip(got, expected):
        for key, value in reference.items():
            if isinstance(value, float):
                assert answer[key] == pytest.approx(value, abs=1e-4), key
            else:
                assert answer[key] == value, key


def test_health_and_tasks_list_inputs_and_label_spaces(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    listing = httpx.get(f"{server.url}/tasks").json()
    assert listing["routes"] is True
    tasks = {task["name"]: task for task in listing["tasks"]}
    assert list(tasks) == TASKS
    assert tasks["synth_polarity"] == {"name": "synth_polarity", "inputs": ["sentence"], "labels": ["0", "1"]}
    assert tasks["synth_match"]["inputs"] == ["sentence1", "sentence2"]
    assert "labels" not in tasks["synth_score"] and len(tasks["synth_score"]["score_range"]) == 2


def test_answers_equal_pha_predict(server: Server, trained: dict) -> None:
    """A list answers every example in order with the row `pha predict` wrote for it; one example
    alone gets its row as an object."""
    expected = trained["expected"]
    response = server.post(EXAMPLES)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert_rows_equal(answers, expected)
    assert [a["routed"] for a in answers] == ["task" not in e for e in EXAMPLES]
    assert all(a["confidence"] is None for a in answers if not a["routed"])
    assert answers[0]["id"] == "a" and answers[0]["prediction"] in ("0", "1") and "prediction_index" in answers[0]
    assert isinstance(answers[2]["prediction"], float) and answers[2]["target"] == 5.0
    single = server.post(EXAMPLES[1])
    assert single.status_code == 200
    assert_rows_equal([single.json()], [expected[1]])
    # `curl -d` declares form data: the body is read as JSON all the same
    curl = server.post(EXAMPLES[1], headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert curl.status_code == 200, curl.text
    assert_rows_equal([curl.json()], [expected[1]])


def test_calibrated_model_answers_confidence_and_abstentions_as_pha_predict(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A model with a routing calibration: routed examples carry the router's confidence, examples of
    a task it never trained on are abstained (no task, no prediction, the reason), as `pha predict` says."""
    calibrated = calibrated_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("serve_calibrated")
    named = split_examples("synth_category", "validation", with_task=True)[:2]
    examples = split_examples(HELD_OUT_TASK, "validation")[:3] + split_examples("synth_polarity", "validation")[:3]
    examples = [examples[0], named[0], *examples[1:], named[1]]
    expected = pha_predict(calibrated["bundle"], examples, root)
    running = Server(calibrated["bundle"], root / "server.log", "--accelerator=cpu", "--batch_timeout=0.02")
    try:
        response = running.post(examples)
        single = running.post(examples[0])
    finally:
        running.stop()
    assert response.status_code == 200 and single.status_code == 200, response.text
    answers = response.json()
    assert_rows_equal(answers, expected)
    assert_rows_equal([single.json()], [expected[0]])
    abstained = [a for e, a in zip(examples, answers) if "sentence1" in e]
    assert len(abstained) == 3
    for answer in abstained:
        assert answer["task"] is None and answer["prediction"] is None and answer["routed"] is True
        assert answer["abstained"].startswith("unlike every trained task")
    routed = [a for e, a in zip(examples, answers) if "sentence" in e and "task" not in e]
    assert [a["task"] for a in routed] == ["synth_polarity"] * 3
    threshold = json.loads((calibrated["bundle"] / "config.json").read_text())["routing"]["threshold"]
    assert all(isinstance(a["confidence"], float) and a["confidence"] >= threshold for a in routed)
    assert [(a["routed"], a["confidence"]) for e, a in zip(examples, answers) if "task" in e] == [(False, None)] * 2


def test_64_concurrent_clients_each_get_their_own_answer(server: Server) -> None:
    reference = server.post(EXAMPLES).json()
    order = [i % len(EXAMPLES) for i in range(64)]
    with ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(lambda i: server.post(EXAMPLES[i]), order))
    assert [r.status_code for r in responses] == [200] * 64
    for i, response in zip(order, responses):
        assert_rows_equal([response.json()], [reference[i]])


def test_requests_batched_together_get_the_answers_they_get_alone(trained: dict) -> None:
    """Requests of different tasks (and lists) in one batch: each gets what it gets alone."""
    api = PHAServingAPI(str(trained["bundle"]), ServeConfig(max_batch_size=8))
    api.setup("cpu")
    requests = [Request([e], True) for e in EXAMPLES] + [Request(EXAMPLES[:3], False)]
    together = api.predict(api.batch([api.decode_request(e) for e in EXAMPLES] + [api.decode_request(EXAMPLES[:3])]))
    alone = [api.predict(request) for request in requests]
    assert len(together) == len(requests)
    for batched, single in zip(together, alone):
        assert_rows_equal(
            batched if isinstance(batched, list) else [batched], single if isinstance(single, list) else [single]
        )


BAD_BODIES = [
    (b'{"task": "synth_polarity", "sentence": "a', 400, "the body is not JSON (Unterminated string"),
    (b"\xff\xfe", 400, "not JSON (its bytes are not UTF-8)"),
    (b"[]", 422, "the body is an empty list"),
    (b"[1]", 422, "example 1 is a JSON int, not an object"),
    (
        json.dumps({"task": "nope", "sentence": "x"}).encode(),
        422,
        "example 1: unknown task 'nope'; this model's tasks: ['synth_polarity'",
    ),
    (json.dumps({"task": ["synth_polarity"], "sentence": "x"}).encode(), 422, "unknown task ['synth_polarity']"),
    (
        json.dumps({"task": "synth_match", "sentence1": "x"}).encode(),
        422,
        "task 'synth_match' needs the fields ['sentence1', 'sentence2']",
    ),
    (json.dumps({"task": "synth_polarity", "sentence": None}).encode(), 422, "field 'sentence' is null, not text"),
    (
        json.dumps({"task": "synth_polarity", "sentence": "x", "label": "7"}).encode(),
        422,
        "label '7' is outside the label space",
    ),
    (
        json.dumps([EXAMPLES[0], {"a": "x", "b": "y", "c": "z"}]).encode(),
        422,
        "example 2: 3 text fields ['a', 'b', 'c']",
    ),
    (
        json.dumps([EXAMPLES[0]] * 1000).encode(),
        413,
        f"over the limit of {MAX_BODY_BYTES} (pha serve --max_body_bytes)",
    ),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_BODIES, ids=[str(i) for i in range(len(BAD_BODIES))])
def test_bad_body_gets_a_4xx_naming_it_and_the_server_keeps_serving(
    server: Server, body: bytes, status: int, message: str
) -> None:
    response = server.post(body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert server.post(EXAMPLES[0]).status_code == 200


def test_bad_requests_mixed_with_good_ones_fail_alone(server: Server) -> None:
    """A bad body arriving with good ones (in LitServe's batch window) fails alone."""
    bodies = [EXAMPLES[i % len(EXAMPLES)] if i % 4 else {"task": "nope", "sentence": "x"} for i in range(32)]
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda body: server.post(body).status_code, bodies))
    assert statuses == [200 if i % 4 else 422 for i in range(32)]


def test_sigterm_finishes_requests_in_flight_and_exits(trained: dict) -> None:
    """Served from the checkpoint: SIGTERM while a long request is predicted; the request still gets
    its answer, the process exits 143 within the bound, and the port is closed."""
    running = Server(trained["ckpt"], trained["root"] / "sigterm.log", "--accelerator=cpu", "--shutdown_timeout=60")
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(running.post, EXAMPLES * 300)
            time.sleep(1.0)
            assert not pending.done(), "the request finished before SIGTERM: make it longer"
            started = time.monotonic()
            running.process.send_signal(signal.SIGTERM)
            response = pending.result(timeout=120)
        assert response.status_code == 200 and len(response.json()) == len(EXAMPLES) * 300
        assert running.process.wait(timeout=90) == 143  # as every pha command SIGTERM stopped
        assert "pha serve: stopped by SIGTERM; the requests in flight were answered" in running.log.read_text()
        assert time.monotonic() - started < 90
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{running.url}/health", timeout=2)
    finally:
        running.stop()
