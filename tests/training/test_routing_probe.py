"""Routing by a linear probe fitted on unlabelled training texts (``model.routing.unlabelled_per_task``,
docs/routing.md): the same decisions as the routing study's ``probe_features`` rule, carried from the
checkpoint to the bundle, the router export and ``pha predict``; the released rule at 0; examples of
a task never trained on still abstained by the prototype floor."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from lightning.pytorch import seed_everything
from production_fixtures import HELD_OUT_TASK, ROUTED_TASKS, calibrated_run, pha_predict, run_pha, split_examples
from torch.utils.data import DataLoader

from pha_lightning import PHAModel
from pha_lightning.data.datamodule import PHADataModule, recorded_data_module
from pha_lightning.errors import ConfigError
from pha_lightning.formats.bundle import ROUTING_PROBE_NAME
from pha_lightning.formats.checkpoint import read_checkpoint
from pha_lightning.model.calibration import Calibration, RoutingConfig, calibrate, decide, fit_probe
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.exports import write_peft_export
from pha_lightning.model.prediction import example_batches, routes_by_probe, task_scores
from pha_lightning.routing import Router
from pha_lightning.training.routing_probe import (
    calibrate_checkpoint,
    calibrate_model,
    pooled_features,
    unlabelled_draw,
    verbatim,
)
from pha_lightning.training.system import load_system

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]


def routing_rules():  # noqa: ANN201
    """``benchmarks/routing_rules.py`` (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location("routing_rules", ROOT / "benchmarks" / "routing_rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_probe_weighs_classes_by_their_inverse_count() -> None:
    """An unlabelled draw holds fewer texts of small tasks (CB has 250 training rows): the probe's
    loss weighs every task equally, the same as the plain loss when the counts are equal."""
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.2, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1])
    probe = fit_probe(x, y, 2, weight_decay=0.01, steps=300, seed=0)
    logits = probe(x)
    decay = 0.01 * probe.weight.pow(2).sum()
    weighted = torch.nn.functional.cross_entropy(logits, y, weight=torch.tensor([4 / 6, 4 / 2], dtype=torch.float64))
    per_example = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    by_hand = (per_example[:3].mean() + per_example[3]) / 2  # each class's mean loss, classes averaged
    torch.testing.assert_close(weighted, by_hand)
    grad = torch.autograd.grad(weighted + decay, [probe.weight, probe.bias])
    assert max(float(g.abs().max()) for g in grad) < 1e-4  # the optimum of the weighted loss
    plain = torch.nn.functional.cross_entropy(probe(x), y) + 0.01 * probe.weight.pow(2).sum()
    grad_plain = torch.autograd.grad(plain, [probe.weight, probe.bias])
    assert max(float(g.abs().max()) for g in grad_plain) > 1e-3  # not that of the plain one


def test_the_unlabelled_draw_is_nested_seeded_and_leaves_out_validation_and_test_texts() -> None:
    rows = Dataset.from_dict({"input_ids": [[i, i] for i in range(10)], "length": [2] * 10, "task_ids": [0] * 10})
    small = Dataset.from_dict({"input_ids": [[100], [101]], "length": [1, 1], "task_ids": [1, 1]})

    class Full:  # the two methods of PHADataModule the draw uses
        def task_dataloaders(self, split: str) -> list[DataLoader]:
            assert split == "train"
            return [DataLoader(rows, batch_size=4), DataLoader(small, batch_size=4)]

        def collator(self) -> None:
            return None

    order = [ids for ids in rows.shuffle(seed=0)["input_ids"]]
    seen = {tuple(order[1])}  # the second drawn text is also a validation text
    first, counts = unlabelled_draw(Full(), seen, 0, 3, seed=0)
    assert sorted(first[0].dataset["input_ids"]) == sorted([order[0], order[2]])
    assert list(first[1].dataset["input_ids"]) == [[100], [101]]  # a task with fewer rows: all of them
    assert counts == {"drawn": [3, 2], "dropped": [1, 0]}
    more, counts = unlabelled_draw(Full(), seen, 3, 6, seed=0)
    assert sorted(more[0].dataset["input_ids"]) == sorted(order[3:6])  # continues the same shuffle
    assert counts == {"drawn": [3, 0], "dropped": [0, 0]}


def tiny_setup(backbone: str) -> tuple[PHAModel, PHADataModule, RoutingConfig]:
    """An untrained float64 LoRA model on a tiny backbone, its data (16 labelled examples per task),
    and routing settings under which a probe on 60 texts per task routes some validation examples
    and abstains on others."""
    seed_everything(0)
    config = PHAConfig(backbone=backbone, tasks=TASKS, chunk_cost_tokens=None, adapter_kind="lora", lora_rank=4)
    model = PHAModel(config).double().eval()
    data = PHADataModule(tasks=TASKS, backbone=backbone, n_train=16, max_source_length=24)
    data.setup("fit")
    routing = RoutingConfig(
        unlabelled_per_task=60, probe_weight_decay=0.05, target_precision=1.0, novelty_quantile=0.0, group_confusion=0.9
    )
    return model, data, routing


@pytest.fixture(scope="module")
def probed_tiny(pretrained_tiny: dict[str, str]) -> tuple[PHAModel, PHADataModule, RoutingConfig]:
    """:func:`tiny_setup` on tiny BERT."""
    return tiny_setup(pretrained_tiny["bert"])


def test_probe_routing_is_the_studys_probe_features_rule(probed_tiny: tuple) -> None:
    """On the same model and texts (float64), the shipped probe is the study's ``probe_features N=<n>``
    rule (benchmarks/routing_rules.py): the same unlabelled draw, pooled states, probe, calibration
    and decisions. (The study's floor reads the rule's own scores, the product's the prototype
    cosine; with ``novelty_quantile`` 0 neither abstains a validation example as novel.)"""
    model, data, config = probed_tiny
    shipped = calibrate_model(model, data, config)
    assert shipped.probe_fit["unlabelled_per_task"] == 60 and shipped.probe.weight.dtype == torch.float64

    rules = routing_rules()
    full = recorded_data_module(data.hparams, ("fit", "test"), n_train=None, percent_train=None)
    loaders, _ = unlabelled_draw(full, verbatim(full), 0, 60, seed=0)
    bank = rules.embed_loaders(model, [loader for loader in loaders if len(loader.dataset)])
    assert sorted(shipped.probe_fit["per_task"].values()) == sorted(torch.bincount(bank["task_ids"]).tolist())
    validation = rules.embed_loaders(model, data.task_dataloaders("validation"))
    scorer = rules.probe_rule(bank, len(TASKS), "features", config.probe_weight_decay)
    study = calibrate(scorer(validation), validation["task_ids"], TASKS, config)

    features, similarity, targets = pooled_features(model, data.task_dataloaders("validation"))
    assert torch.equal(targets, validation["task_ids"]) and torch.equal(features, validation["features"])
    torch.testing.assert_close(shipped.probe.scores(features), scorer(validation), rtol=0, atol=1e-12)
    assert (shipped.temperature, shipped.threshold, shipped.groups) == (
        study.temperature,
        study.threshold,
        study.groups,
    )
    ours = decide(similarity, shipped, features)
    theirs = decide(scorer(validation), study)
    assert [(d.task, round(d.confidence, 9)) for d in ours] == [(d.task, round(d.confidence, 9)) for d in theirs]
    routed = [d.task for d in ours if d.task is not None]
    assert 0 < len(routed) < len(ours) and len(set(routed)) > 1  # routes some, abstains on others

    model.calibration = shipped  # and the model routes raw texts by it, as decide does
    examples = [e for task in TASKS for e in split_examples(task, "validation")[:5]]
    rows = model.predict(examples)
    batches = list(example_batches(model, examples, 64, None))
    expected = {}
    for batch in batches:
        z, pooled = model.retrieval_features({**batch, "task_ids": torch.zeros_like(batch["task_ids"])})
        for meta, d in zip(batch["meta"], decide(model.retrieval_scores(z), shipped, pooled)):
            expected[meta["index"]] = None if d.task is None else TASKS[d.task]
    assert [row["task"] for row in rows] == [expected[i] for i in range(len(examples))]


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_the_probe_travels_in_the_bundle_and_the_peft_exports_router(
    kind: str, probed_tiny: tuple, pretrained_tiny: dict[str, str], tmp_path: Path
) -> None:
    """``pha export --format peft``'s ``router/`` and the bundle carry the probe: ``Router`` and the
    bundle route every example as the model does (float64; BERT routes in its own pass, T5 by a
    retrieval pass first)."""
    model, data, config = probed_tiny if kind == "bert" else tiny_setup(pretrained_tiny["t5"])
    model.calibration = calibrate_model(model, data, config)
    examples = [e for task in TASKS for e in split_examples(task, "test")[:8]]
    rows = model.predict(examples)
    out = write_peft_export(model, tmp_path / "export", data={"max_source_length": 24})
    assert (out / "router" / ROUTING_PROBE_NAME).is_file()
    router = Router.from_pretrained(out)
    router.model.double()
    assert router.model.calibration == model.calibration
    routes = router.route(examples)
    assert [task for task, _ in routes] == [row["task"] for row in rows]
    assert [round(c, 6) for _, c in routes] == [row["confidence"] for row in rows]
    assert len({task for task, _ in routes} - {None}) > 1
    bundle = PHAModel.from_pretrained(model.save_pretrained(tmp_path / "bundle", data={"max_source_length": 24}))
    assert bundle.calibration == model.calibration and (tmp_path / "bundle" / ROUTING_PROBE_NAME).is_file()
    assert [(r["task"], r.get("confidence")) for r in bundle.double().predict(examples)] == [
        (r["task"], r.get("confidence")) for r in rows
    ]


def test_bad_probe_settings_name_the_value() -> None:
    for name, value, valid in (
        ("unlabelled_per_task", -1, ">= 0"),
        ("unlabelled_per_task", 2.5, "integer"),
        ("probe_weight_decay", -1e-3, ">= 0"),
        ("probe_steps", 0, ">= 1"),
        ("probe_seed", -3, ">= 0"),
    ):
        with pytest.raises(ConfigError, match=rf"model\.routing\.{name}.*{value}"):
            RoutingConfig(**{name: value})


def test_pha_calibrate_names_a_bad_setting_and_refuses_a_bundle(tmp_path: Path) -> None:
    from pha_lightning.cli.calibrate import main

    with pytest.raises(ConfigError, match=r"model\.routing\.unlabelled_per_task must be >= 0, got -5"):
        main(["--ckpt_path", str(tmp_path / "absent.ckpt"), "--unlabelled_per_task", "-5"])
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="is a bundle; routing is refitted on a training checkpoint"):
        main(["--ckpt_path", str(tmp_path / "bundle")])


def test_a_calibration_naming_a_probe_without_its_tensors_is_an_error() -> None:
    record = Calibration(["a", "b"], 0.1, 0.5, 0.95, 0.2, probe_fit={"unlabelled_per_task": 10}).to_dict()
    with pytest.raises(ConfigError, match=r"probe\.weight"):
        Calibration.from_dict(record)


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The calibrated run's best checkpoint refitted with a probe on 120 texts per task by ``pha calibrate``,
    exported to a bundle (``pha export``) and to a router (:meth:`Router.save_pretrained`)."""
    trained = calibrated_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("probed")
    checkpoint = root / "probed.ckpt"
    result = run_pha(
        "calibrate", f"--ckpt_path={trained['best']}", f"--output={checkpoint}", "--unlabelled_per_task=120", cwd=root
    )
    assert "scored by a linear probe" in result.stdout and f"wrote {checkpoint}" in result.stdout
    bundle = root / "bundle"
    run_pha("export", f"--ckpt_path={checkpoint}", f"--output_dir={bundle}", cwd=root)
    router = Router(PHAModel.from_pretrained(bundle)).save_pretrained(root / "router")
    return {"root": root, "checkpoint": checkpoint, "bundle": bundle, "router": router, "trained": trained}


@pytest.mark.slow
def test_the_probe_travels_from_checkpoint_to_bundle_to_router(probed: dict) -> None:
    checkpoint = read_checkpoint(str(probed["checkpoint"]))
    assert checkpoint["hyper_parameters"]["routing"]["unlabelled_per_task"] == 120
    stored = Calibration.from_dict(checkpoint["pha_routing"])
    assert stored.probe is not None and stored.probe.weight.shape[0] == len(ROUTED_TASKS)
    model = load_system(checkpoint).model.eval()
    bundle = PHAModel.from_pretrained(probed["bundle"])
    assert model.calibration == stored and bundle.calibration == stored
    assert json.loads((probed["bundle"] / "config.json").read_text())["routing"] == stored.to_dict()
    assert (probed["bundle"] / ROUTING_PROBE_NAME).is_file() and (probed["router"] / ROUTING_PROBE_NAME).is_file()
    router = Router.from_pretrained(probed["router"])
    assert router.model.calibration == stored
    examples = [e for task in [*ROUTED_TASKS, HELD_OUT_TASK] for e in split_examples(task, "test")[:25]]
    rows = model.predict(examples)
    assert [row["task"] for row in bundle.predict(examples)] == [row["task"] for row in rows]
    routes = router.route(examples)
    assert [task for task, _ in routes] == [row["task"] for row in rows]
    assert [round(c, 6) for _, c in routes] == [row["confidence"] for row in rows]
    routed = [row for row in rows[: 25 * len(ROUTED_TASKS)] if row["task"] is not None]
    assert len(routed) >= 0.5 * 25 * len(ROUTED_TASKS)
    assert routes_by_probe(model) and routes_by_probe(router.model)


@pytest.mark.slow
def test_a_task_never_trained_on_is_abstained_by_the_prototype_floor(probed: dict) -> None:
    bundle = PHAModel.from_pretrained(probed["bundle"])
    released = PHAModel.from_pretrained(probed["trained"]["bundle"])
    assert bundle.calibration.similarity_floor == pytest.approx(released.calibration.similarity_floor, rel=1e-5)
    rows = bundle.predict(split_examples(HELD_OUT_TASK, "test"))
    assert all(row["task"] is None and row["abstained"].startswith("unlike every trained task") for row in rows)


@pytest.mark.slow
def test_pha_predict_routes_by_the_probe(probed: dict) -> None:
    examples = split_examples("synth_category", "validation")[:4] + split_examples(HELD_OUT_TASK, "validation")[:2]
    written, _ = pha_predict(probed["checkpoint"], examples, probed["root"])
    expected = PHAModel.from_pretrained(probed["bundle"]).predict(examples)
    assert [(r["task"], r.get("confidence")) for r in written] == [(r["task"], r.get("confidence")) for r in expected]


@pytest.mark.slow
def test_zero_texts_per_task_is_the_released_rule(probed: dict, tmp_path: Path) -> None:
    """``--unlabelled_per_task 0`` drops the probe: routing is the nearest-prototype rule's again, the
    calibration the one ``pha fit`` fitted on the same weights, and no probe file is exported."""
    released = tmp_path / "released.ckpt"
    shutil.copy(probed["checkpoint"], released)
    calibration = calibrate_checkpoint(released, {"unlabelled_per_task": 0})
    fitted = Calibration.from_dict(read_checkpoint(str(probed["trained"]["best"]))["pha_routing"])
    assert calibration.probe is None and calibration.probe_fit is None
    assert calibration.temperature == fitted.temperature and calibration.groups == fitted.groups
    assert calibration.threshold == pytest.approx(fitted.threshold, rel=1e-5)
    model = load_system(read_checkpoint(str(released))).model.eval()
    assert model.calibration == calibration and not routes_by_probe(model)
    examples = [e for task in [*ROUTED_TASKS, HELD_OUT_TASK] for e in split_examples(task, "test")[:20]]
    rows = model.predict(examples)
    expected = {}
    for batch in example_batches(model, examples, 64, None):
        for meta, d in zip(batch["meta"], decide(task_scores(model, batch), calibration)):
            expected[meta["index"]] = None if d.task is None else ROUTED_TASKS[d.task]
    assert [row["task"] for row in rows] == [expected[i] for i in range(len(examples))]
    bundle = Router(model).save_pretrained(tmp_path / "router")
    assert not (bundle / ROUTING_PROBE_NAME).exists()
    assert "probe_fit" not in json.loads((bundle / "config.json").read_text())["routing"]  # the record of before


@pytest.mark.slow
def test_fit_ends_by_fitting_the_probe_into_the_best_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from production_fixtures import MAX_SOURCE_LENGTH

    from pha_lightning.training.callbacks import RoutingCalibration
    from pha_lightning.training.scripting import quiet_trainer
    from pha_lightning.training.settings import OptimConfig
    from pha_lightning.training.system import PHAModule

    seed_everything(0)
    data = PHADataModule(
        tasks=ROUTED_TASKS, n_train=16, batch_size=8, eval_batch_size=64, max_source_length=MAX_SOURCE_LENGTH
    )
    system = PHAModule(
        PHAConfig(tasks=ROUTED_TASKS),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=0),
        routing=RoutingConfig(unlabelled_per_task=40),
    )
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/avg", mode="max", save_last=True)
    trainer = quiet_trainer(
        max_steps=4, val_check_interval=4, check_val_every_n_epoch=None, default_root_dir=tmp_path,
        callbacks=[RoutingCalibration(), checkpoints],
    )  # fmt: skip
    with caplog.at_level("INFO"):
        trainer.fit(system, datamodule=data)
    best = Calibration.from_dict(read_checkpoint(checkpoints.best_model_path)["pha_routing"])
    assert best.probe is not None and best.probe_fit["unlabelled_per_task"] == 40
    assert best.probe_fit["texts"] == sum(best.probe_fit["per_task"].values()) > 100
    assert best.describe() in caplog.text and "scored by a linear probe" in caplog.text
    last = read_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))["pha_routing"]
    assert "probe_fit" not in last and "probe_tensors" not in last  # fitted once, into the best checkpoint only
