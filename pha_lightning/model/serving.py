"""Serving a trained :class:`~pha_lightning.model.PHAModel` over HTTP with LitServe (``pha serve``;
docs/production.md, "Serving").

Three parts, none of which imports Lightning:

* :class:`ServeConfig`, the server's settings (batching, devices, workers, limits);
* :class:`RequestChecks`, ASGI middleware of the HTTP processes that rejects a bad body (too large,
  not JSON, an example that cannot be predicted) with a 4xx before it is queued: LitServe answers
  every request of a batch with the error raised by any one of them, so a bad example must never
  reach the inference worker, where requests are batched;
* :class:`PHAServingAPI`, the LitServe API of the inference workers: the requests that arrive
  together become one list of examples, predicted by :func:`~pha_lightning.model.prediction.predict`
  (the path of ``PHAModel.predict`` and ``pha predict``), tasks mixed in one batch.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import litserve as ls
from starlette.responses import JSONResponse

from pha_lightning.data.examples import checked_example
from pha_lightning.data.tasks import Task
from pha_lightning.errors import ConfigError, PHAError
from pha_lightning.model.pha import PHAModel
from pha_lightning.model.prediction import no_router_error, predict, routes
from pha_lightning.validation import NON_NEGATIVE, POSITIVE, SIZE, Choice, Range, check_settings, setting

#: the hosts LitServe binds to
HOSTS: tuple[str, ...] = ("127.0.0.1", "0.0.0.0", "::")
ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
#: the route of predictions (LitServe's default); the others are ``/health`` (LitServe's) and ``/tasks``
PREDICT_PATH = "/predict"


@dataclass(frozen=True)
class ServeConfig:
    """The settings of ``pha serve`` (LitServe's names where LitServe has the setting)."""

    host: str = setting("127.0.0.1", Choice(HOSTS))
    """The address to listen on: 127.0.0.1 (this machine only), 0.0.0.0 or :: (every interface)."""
    port: int = setting(8000, Range(1024, 65535, integer=True))
    """The TCP port to listen on."""
    max_batch_size: int = setting(32, SIZE)
    """LitServe's dynamic batching: at most this many requests, of any tasks, predicted together."""
    batch_timeout: float = setting(0.005, NON_NEGATIVE)
    """LitServe's dynamic batching: seconds to wait for more requests before predicting a batch."""
    predict_batch_size: int = setting(64, SIZE)
    """Examples per forward pass (a batch of requests holding lists of examples is split into these)."""
    max_body_bytes: int = setting(1_000_000, SIZE)
    """The largest request body accepted; a larger one gets 413."""
    accelerator: str = setting("auto", Choice(ACCELERATORS))
    """LitServe's accelerator of the inference workers (auto: a GPU when there is one)."""
    devices: int | Literal["auto"] = "auto"
    """LitServe's devices: how many of the accelerator's devices get inference workers (auto: all)."""
    workers_per_device: int = setting(1, SIZE)
    """LitServe's inference worker processes per device, each with its own copy of the model."""
    num_api_servers: int | None = setting(None, Range(1, integer=True, optional=True))
    """LitServe's HTTP server processes (None: one per inference worker)."""
    timeout: float = setting(30.0, POSITIVE)
    """LitServe's request timeout in seconds: a request queued longer gets 504."""
    shutdown_timeout: float = setting(30.0, POSITIVE)
    """On SIGTERM, seconds the requests in flight get to finish before the HTTP servers stop."""

    def __post_init__(self) -> None:
        check_settings("serve", ServeConfig, self.__dict__)
        devices = self.devices
        if devices != "auto" and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
            raise ConfigError(f"serve.devices must be an integer >= 1 or 'auto', got {devices!r}")


class RequestError(PHAError):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServedTasks:
    """What a request is checked against: the model's tasks, its family and whether it routes."""

    tasks: tuple[Task, ...]
    family: str
    method: str
    can_route: bool

    @classmethod
    def of(cls, model: PHAModel) -> ServedTasks:
        return cls(tuple(model.task_objects), model.family, model.config.method, routes(model))

    def examples(self, body: bytes) -> list[dict[str, Any]]:
        """The examples of a ``/predict`` body, each checked as ``pha predict`` checks a line."""
        try:
            payload = json.loads(body.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(400, f"the body is not JSON ({describe_json_error(err)})") from None
        examples = payload if isinstance(payload, list) else [payload]
        if not examples:
            raise RequestError(422, "the body is an empty list; send one example (a JSON object) or a list of them")
        for number, example in enumerate(examples, start=1):
            self.check(example, f"example {number}")
        return examples

    def check(self, example: object, where: str) -> None:
        if not isinstance(example, dict):
            raise RequestError(
                422,
                f"{where} is a JSON {type(example).__name__}, not an object of the task's fields (a line of a pha predict file)",
            )
        try:
            task_id, _, _ = checked_example(example, self.tasks, self.family, where)
        except PHAError as err:
            raise RequestError(422, str(err)) from None
        if task_id < 0 and not self.can_route:
            raise RequestError(422, f"{where}: {no_router_error(self.method)}")

    def listing(self) -> dict[str, Any]:
        """``GET /tasks``: every served task with its input fields and label space."""
        return {"routes": self.can_route, "tasks": [describe_task(task) for task in self.tasks]}


def describe_task(task: Task) -> dict[str, Any]:
    """A task as ``GET /tasks`` lists it: its input fields and its labels (or score range)."""
    described: dict[str, Any] = {"name": task.name, "inputs": list(task.source_fields)}
    if task.is_regression:
        described["score_range"] = list(task.target_range) if task.target_range else None
    else:
        described["labels"] = list(task.class_names)
    return described


def describe_json_error(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at line {err.lineno} column {err.colno}"
    return "its bytes are not UTF-8"


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class RequestChecks:
    """ASGI middleware: a ``POST /predict`` body is read (up to ``max_body_bytes``) and checked by
    :meth:`ServedTasks.examples` before LitServe queues it; a bad one is answered
    ``{"detail": <one line naming the field or value>}`` with 400 (not JSON), 413 (too large) or 422
    (an example that cannot be predicted). A good one goes on as JSON, whatever its declared type."""

    def __init__(self, app: ASGIApp, served: ServedTasks, max_body_bytes: int) -> None:
        self.app = app
        self.served = served
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await self.read_body(scope, receive)
            self.served.examples(body)
        except RequestError as err:
            await JSONResponse({"detail": str(err)}, status_code=err.status)(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        # the body is JSON whatever it was declared as (``curl -d`` says form data, which LitServe would parse as such)
        headers = [(name, value) for name, value in scope.get("headers") or () if name != b"content-type"]
        await self.app({**scope, "headers": [*headers, (b"content-type", b"application/json")]}, replay, send)

    async def read_body(self, scope: dict, receive: Callable[[], Awaitable[dict]]) -> bytes:
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self.too_large(int(declared))
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self.too_large(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def too_large(self, size: int) -> RequestError:
        return RequestError(
            413,
            f"the body has {size} bytes or more, over the limit of {self.max_body_bytes} "
            "(pha serve --max_body_bytes); send fewer examples per request",
        )


#: the answer to one request: a row, or the rows of a list of examples
Answer = dict[str, Any] | list[dict[str, Any]]


@dataclass(frozen=True)
class Request:
    """One ``/predict`` request in the inference worker: its examples, and whether it sent one alone."""

    examples: list[dict[str, Any]]
    single: bool


class PHAServingAPI(ls.LitAPI):
    """LitServe's API over a bundle: requests that arrive together (``max_batch_size``,
    ``batch_timeout``) are predicted as one list of examples of any tasks, in forward passes of
    ``predict_batch_size``; each request gets its rows (:func:`served_row`) back in order."""

    def __init__(self, bundle: str, config: ServeConfig) -> None:
        super().__init__(max_batch_size=config.max_batch_size, batch_timeout=config.batch_timeout)
        self.bundle = bundle
        self.predict_batch_size = config.predict_batch_size

    def setup(self, device: str) -> None:
        self.model = PHAModel.from_pretrained(self.bundle).to(device).eval()

    def decode_request(self, request) -> Request:  # noqa: ANN001 (unannotated: LitServe passes the parsed JSON body)
        """A body checked by :class:`RequestChecks`: one example or a list of them."""
        return Request(request if isinstance(request, list) else [request], not isinstance(request, list))

    def batch(self, inputs: list[Request]) -> list[Request]:
        return inputs

    def predict(self, requests: list[Request] | Request) -> list[Answer] | Answer:
        """Every example of every request in one call of :func:`predict`, split back by request: a
        request that sent one example gets its row, one that sent a list the list of rows."""
        batch = requests if isinstance(requests, list) else [requests]
        rows = predict(self.model, [e for request in batch for e in request.examples], self.predict_batch_size)
        answers: list[Answer] = []
        start = 0
        for request in batch:
            served = [served_row(row) for row in rows[start : start + len(request.examples)]]
            answers.append(served[0] if request.single else served)
            start += len(request.examples)
        return answers if isinstance(requests, list) else answers[0]

    def unbatch(self, output: list[Answer]) -> list[Answer]:
        return output

    def encode_response(self, output: Answer):  # noqa: ANN201 (unannotated: LitServe would make it FastAPI's response model)
        """The answer rendered as JSON here, as FastAPI would render it: the HTTP process then sends it
        as it is, where for an object it would walk every field first (``jsonable_encoder``, a few
        per cent of that process's CPU per request). An answer that is not valid JSON (a NaN score from
        broken weights) is left to the HTTP process, which refuses that request alone (500) instead
        of failing every request batched with it."""
        try:
            return JSONResponse(output)
        except ValueError:
            return output


#: a row's fields a served answer keeps, in this order (docs/production.md, "Serving")
SERVED_FIELDS: tuple[str, ...] = (
    "id",
    "task",
    "routed",
    "confidence",
    "task_similarity",
    "prediction",
    "prediction_index",
    "abstained",
    "target",
)


def served_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A prediction row as the server answers it: the row's fields without the file's ``index`` and
    ``line``, and ``confidence`` always there (the router's; ``None`` for a task the input named, or
    from a model whose routing has no calibration)."""
    row = {"confidence": None, **row}
    return {name: row[name] for name in SERVED_FIELDS if name in row}
