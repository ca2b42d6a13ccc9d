"""Calibrated routing end to end: fitted during ``fit``, stored in checkpoints and bundles, applied by
``PHAModel.predict``, ``pha predict`` and ``Router``; examples of a task the model never trained on
are abstained, not forced onto a trained one."""

from __future__ import annotations

import json
import logging

import pytest
from production_fixtures import (
    HELD_OUT_TASK,
    MAX_SOURCE_LENGTH,
    ROUTED_TASKS,
    calibrated_run,
    pha_predict,
    split_examples,
)

from pha_lightning import PHAModel
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.model.calibration import Calibration
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.prediction import UNCALIBRATED_NOTE, example_batches, task_scores
from pha_lightning.routing import Router
from pha_lightning.training.callbacks import RoutingCalibration
from pha_lightning.training.settings import OptimConfig
from pha_lightning.training.system import PHAModule, load_system

pytestmark = pytest.mark.slow  # trains a model

TRAINED = ROUTED_TASKS
HELD_OUT = HELD_OUT_TASK


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return calibrated_run(tmp_path_factory)


def test_checkpoint_and_bundle_carry_the_calibration(trained: dict) -> None:
    checkpoint = read_checkpoint(str(trained["best"]))
    calibration = Calibration.from_dict(checkpoint["pha_routing"])
    assert calibration.tasks == TRAINED and calibration.target_precision == 0.95
    assert calibration.threshold is not None and calibration.validation["precision"] >= 0.95
    assert load_system(checkpoint).model.calibration == calibration
    assert PHAModel.from_pretrained(trained["bundle"]).calibration == calibration
    assert json.loads((trained["bundle"] / "config.json").read_text())["routing"] == calibration.to_dict()


def test_held_out_task_is_abstained_and_trained_tasks_are_routed(trained: dict) -> None:
    model = PHAModel.from_pretrained(trained["bundle"])
    held_out = model.predict(split_examples(HELD_OUT, "test"))
    assert all(row["task"] is None and row["prediction"] is None for row in held_out)
    assert all("unlike every trained task" in row["abstained"] for row in held_out)
    for task in TRAINED:
        rows = model.predict(split_examples(task, "test"))
        routed = [row for row in rows if row["task"] is not None]
        assert len(routed) >= 0.9 * len(rows), task
        assert sum(row["task"] == task for row in routed) >= 0.95 * len(routed), task
        assert all(row["confidence"] >= model.calibration.threshold for row in routed)


def test_router_routes_as_the_model_predicts(trained: dict) -> None:
    model = PHAModel.from_pretrained(trained["bundle"])
    examples = split_examples("synth_polarity", "test")[:20] + split_examples(HELD_OUT, "test")[:20]
    rows = model.predict(examples)
    routes = Router.from_pretrained(trained["bundle"]).route(examples)
    assert [task for task, _ in routes] == [row["task"] for row in rows]
    assert [round(confidence, 6) for _, confidence in routes] == [row["confidence"] for row in rows]


def test_fit_reports_the_best_checkpoints_routing(trained: dict, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        RoutingCalibration().on_fit_end(trained["trainer"], trained["system"])
    expected = Calibration.from_dict(read_checkpoint(str(trained["best"]))["pha_routing"]).describe()
    assert expected in caplog.text and "threshold" in expected and "confusable task groups" in expected


def test_pha_predict_writes_abstentions(trained: dict) -> None:
    examples = split_examples(HELD_OUT, "validation")[:3] + split_examples("synth_polarity", "validation")[:3]
    rows, result = pha_predict(trained["best"], examples, trained["root"])
    assert [row["task"] for row in rows[:3]] == [None] * 3 and all(row["prediction"] is None for row in rows[:3])
    assert all(row["abstained"].startswith("unlike every trained task") for row in rows[:3])
    assert [row["task"] for row in rows[3:]] == ["synth_polarity"] * 3 and all("abstained" not in r for r in rows[3:])
    assert "routing: 3 of 6 examples without a task abstained" in result.stdout


def test_a_model_without_calibration_routes_to_the_nearest_prototype_with_a_note(trained: dict) -> None:
    checkpoint = read_checkpoint(str(trained["best"]))
    checkpoint.pop("pha_routing")  # as written before routing was calibrated
    model = load_system(checkpoint).model.eval()
    assert model.calibration is None
    examples = split_examples(HELD_OUT, "test")[:5]
    with pytest.warns(UserWarning, match="no routing calibration"):
        rows = model.predict(examples)
    assert all(row["task"] in TRAINED and "confidence" not in row and "abstained" not in row for row in rows)
    assert UNCALIBRATED_NOTE.startswith("this model has no routing calibration")
    with pytest.raises(Exception, match="no routing calibration"):
        Router(model)


def test_transfer_keeps_the_source_tasks_routing(trained: dict) -> None:
    """A task added by few-shot transfer (top-1 init: its prototype starts as a copy of a source's,
    so the nearest prototype alone would send it some of that source's examples) takes none of the
    source tasks' routed validation examples; it gets examples unlike every source task."""
    from pha_lightning.training.scripting import quiet_trainer
    from pha_lightning.training.transfer import TransferConfig

    source = PHAModel.from_pretrained(trained["bundle"])
    system = PHAModule(
        PHAConfig(tasks=[HELD_OUT]),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=0),
        transfer=TransferConfig(str(trained["best"]), init="top1"),
    )
    data = PHADataModule(
        tasks=[HELD_OUT], n_train=16, batch_size=8, eval_batch_size=64, max_source_length=MAX_SOURCE_LENGTH
    )
    trainer = quiet_trainer(
        max_steps=4, val_check_interval=4, check_val_every_n_epoch=None, enable_checkpointing=False,
        default_root_dir=trained["root"] / "transfer", callbacks=[RoutingCalibration()],
    )  # fmt: skip
    trainer.fit(system, datamodule=data)
    model = system.model.eval()
    assert model.calibration.added_tasks == [HELD_OUT] and model.calibration.added_floor is not None
    stolen = 0
    for task in TRAINED:
        examples = split_examples(task, "validation")
        before, after = source.predict(examples), model.predict(examples)
        for old, new in zip(before, after):
            if old["task"] is not None:  # routed before: to the same task now
                assert new["task"] == old["task"], (task, old, new)
            elif new["task"] is not None:  # abstained before: only one unlike every source task may go to the new one
                assert new["task"] == HELD_OUT and old["abstained"].startswith("unlike every trained task"), (old, new)
        assert sum(old["task"] is not None for old in before) >= 0.9 * len(before)
        for batch in example_batches(model, examples, 64, None):  # the nearest prototype alone: the copy steals
            stolen += int((task_scores(model, batch).argmax(-1) == 0).sum())
    assert stolen > 0
    held_out = model.predict(split_examples(HELD_OUT, "validation"))
    assert sum(row["task"] == HELD_OUT for row in held_out) >= 0.9 * len(held_out)
    assert all(row["task"] in (HELD_OUT, None) for row in held_out)
