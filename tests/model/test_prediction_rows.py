"""The keys of a prediction row say what they hold: ``prediction`` is what the model predicts as a user
reads it (the label string, a regression's score), ``prediction_index`` the class index, ``routed``
whether the retriever chose the task; the input's gold label is ``target``, never ``label``."""

from __future__ import annotations

import json
import math

from pha_lightning.data.catalog import get_task
from pha_lightning.model.prediction import input_fields, prediction_fields, task_fields


def test_a_classification_predicts_its_label_string_and_class_index() -> None:
    assert prediction_fields(get_task("synth_category"), 2.0) == {"prediction": "2", "prediction_index": 2}


def test_a_regression_predicts_its_score_as_a_number() -> None:
    assert prediction_fields(get_task("synth_score"), 3.25) == {"prediction": 3.25}


def test_no_prediction_is_null_not_a_made_up_value() -> None:
    assert prediction_fields(get_task("synth_polarity"), math.nan) == {"prediction": None, "prediction_index": None}
    assert prediction_fields(get_task("synth_score"), math.nan) == {"prediction": None}


def test_a_row_in_the_agreed_key_order() -> None:
    task = get_task("synth_polarity")
    named = input_fields({"index": 0, "line": 1, "id": "a"}) | task_fields(task, None) | prediction_fields(task, 1.0)
    assert list(named) == ["index", "line", "id", "task", "routed", "prediction", "prediction_index"]
    assert named["routed"] is False and "task_similarity" not in named
    routed = input_fields({"index": 1, "line": 3}) | task_fields(task, 0.87654321) | prediction_fields(task, 0.0)
    assert json.loads(json.dumps(routed)) == {
        "index": 1,
        "line": 3,
        "task": "synth_polarity",
        "routed": True,
        "task_similarity": 0.876543,
        "prediction": "0",
        "prediction_index": 0,
    }
