"""The server's request checks and answer rows, without a server (tests/cli/test_serve.py runs one)."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from fastapi.encoders import jsonable_encoder
from starlette.responses import JSONResponse, Response

from pha_lightning import PHAConfig, PHAModel
from pha_lightning.data.catalog import get_task
from pha_lightning.model.serving import PHAServingAPI, RequestError, ServeConfig, ServedTasks, served_row

TASKS = ("synth_polarity", "synth_match", "synth_score")


def served(can_route: bool = True) -> ServedTasks:
    return ServedTasks(tuple(get_task(name) for name in TASKS), "encoder", "pha" if can_route else "adapter", can_route)


def test_a_routed_row_keeps_the_routers_confidence_and_a_named_one_gets_none() -> None:
    routed = {"index": 0, "line": 1, "task": "synth_match", "routed": True, "task_similarity": 0.7,
              "confidence": 0.93, "prediction": "1", "prediction_index": 1}  # fmt: skip
    assert served_row(routed) == {"task": "synth_match", "routed": True, "confidence": 0.93, "task_similarity": 0.7,
                                  "prediction": "1", "prediction_index": 1}  # fmt: skip
    named = {"index": 1, "line": 2, "id": 4, "task": "synth_score", "routed": False, "prediction": 2.5, "target": 3.0}
    assert served_row(named) == {"id": 4, "task": "synth_score", "routed": False, "confidence": None,
                                 "prediction": 2.5, "target": 3.0}  # fmt: skip


def test_an_abstained_row_has_no_task_or_prediction_and_says_why() -> None:
    reason = "confidence 0.41 below the threshold 0.83 chosen for precision 0.95; name the task to predict"
    row = {"index": 0, "line": 1, "task": None, "routed": True, "task_similarity": 0.2, "confidence": 0.41,
           "prediction": None, "prediction_index": None, "abstained": reason}  # fmt: skip
    assert served_row(row) == {"task": None, "routed": True, "confidence": 0.41, "task_similarity": 0.2,
                               "prediction": None, "prediction_index": None, "abstained": reason}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{", 400, "the body is not JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
        (b'"just text"', 422, "example 1 is a JSON str, not an object of the task's fields"),
        (
            json.dumps([{"task": "synth_polarity", "sentence": "x"}, {"task": 3}]).encode(),
            422,
            "example 2: unknown task 3; this model's tasks: ['synth_polarity', 'synth_match', 'synth_score']",
        ),  # fmt: skip
        (
            json.dumps({"task": "synth_score", "sentence": ["a"]}).encode(),
            422,
            "example 1: field 'sentence' is [\"a\"], not text",
        ),  # fmt: skip
        (json.dumps({"sentence": "x", "label": 1}).encode(), 422, "example 1: a label needs a task"),
    ],
)
def test_bad_bodies_are_refused_naming_the_value(body: bytes, status: int, message: str) -> None:
    with pytest.raises(RequestError) as refused:
        served().examples(body)
    assert refused.value.status == status and message in str(refused.value)


def test_an_example_without_a_task_needs_a_model_that_routes() -> None:
    assert served().examples(b'{"sentence": "a red cat"}') == [{"sentence": "a red cat"}]
    with pytest.raises(RequestError, match="example 1: examples without a task need a model with a retriever"):
        served(can_route=False).examples(b'{"sentence": "a red cat"}')


EXAMPLES = [
    {"task": "synth_polarity", "sentence": "a red cat near the park"},
    {"sentence": "two dogs"},
    {"task": "synth_match", "sentence1": "a green bus at the beach", "sentence2": "a poor truck"},
]


def test_predicting_switches_no_modes_of_a_model_in_eval_mode(tiny_bert: str) -> None:
    """A served model stays in eval mode, so predicting it must not walk every submodule twice per
    batch (eval, then back); a model in training mode is predicted in eval mode, with the same rows,
    and is left training."""
    torch.manual_seed(0)
    model = PHAModel(PHAConfig(backbone=tiny_bert, backbone_init="random", tasks=list(TASKS[:2]))).eval()
    switched = []
    switch = model.train
    model.train = lambda mode=True: switched.append(mode) or switch(mode)
    rows = model.predict(EXAMPLES)
    assert switched == []  # before: [False, False]
    model.train()
    switched.clear()
    assert model.predict(EXAMPLES) == rows
    assert switched == [False, True]  # eval for the prediction, then training again
    assert all(module.training for module in model.modules())


ROW = {"task": "synth_polarity", "routed": True, "confidence": 0.93, "task_similarity": 0.81, "prediction": "1"}


@pytest.mark.parametrize("answer", [ROW, [ROW, {**ROW, "id": 7, "prediction": 2.5}]], ids=["one", "list"])
def test_an_answer_is_rendered_in_the_worker_as_fastapi_would_render_it(answer: object) -> None:
    """The inference worker sends the HTTP process a rendered response (pickled across processes),
    with the bytes FastAPI would have sent for the object, so that process does not walk it again."""
    rendered = pickle.loads(pickle.dumps(PHAServingAPI("unused", ServeConfig()).encode_response(answer)))
    assert isinstance(rendered, Response)  # before: the object itself, walked by jsonable_encoder per request
    assert rendered.body == JSONResponse(jsonable_encoder(answer)).body
    assert json.loads(rendered.body) == answer


def test_an_answer_that_is_not_json_is_left_to_fail_alone() -> None:
    """A NaN score (broken weights) is no valid JSON: the row goes to the HTTP process as it is, which
    refuses that request alone, where raising here would fail every request batched with it."""
    answer = {**ROW, "prediction": math.nan}
    assert PHAServingAPI("unused", ServeConfig()).encode_response(answer) is answer
    with pytest.raises(ValueError, match="not JSON compliant"):
        JSONResponse(jsonable_encoder(answer))
