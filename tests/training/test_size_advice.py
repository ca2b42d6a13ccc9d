"""The data-size rule: which PHA adapter kind the converged grid backs at a run's examples per task."""

from __future__ import annotations

import logging

import pytest
from lightning.pytorch import seed_everything

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.callbacks import DataSizeAdvice
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.size_advice import SizeRule, size_advice
from pha_lightning.training.system import PHAModule

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]  # 800, 600, 400, 300 train examples


def config(**arch) -> PHAConfig:
    return PHAConfig(tasks=TASKS, **arch)


def test_bottleneck_pha_at_100_examples_is_told_about_lora() -> None:
    advice = size_advice(config(), [100, 100, 100, 100])
    assert advice is not None
    assert "100 training examples per task (median over 4 tasks)" in advice
    assert "--model.arch.adapter_kind=lora" in advice and "48.9 vs 45.4" in advice


def test_lora_pha_at_500_examples_is_told_about_bottleneck_adapters() -> None:
    advice = size_advice(config(adapter_kind="lora"), [300, 400, 600, 800])  # median 500
    assert advice is not None
    assert "500 training examples per task (median over 4 tasks)" in advice
    assert "--model.arch.adapter_kind=bottleneck" in advice and "58.4 vs 56.7" in advice


@pytest.mark.parametrize(
    ("arch", "sizes"),
    [
        ({}, [500, 500]),  # bottleneck on its measured side
        ({"adapter_kind": "lora"}, [100, 100]),  # LoRA on its measured side
        ({}, [101, 499]),  # between the measured sizes: nothing measured, nothing advised
        ({"adapter_kind": "lora"}, [499]),
        ({"generated_output_scale": "layer"}, [100]),  # not the released PHA the grid compared
        ({"method": "adapter"}, [100]),  # a baseline: the rule is about PHA's kinds
        ({}, []),
    ],
)
def test_nothing_is_advised_where_nothing_was_measured_against_the_run(arch: dict, sizes: list[int]) -> None:
    assert size_advice(config(**arch), sizes) is None


def test_more_tasks_than_the_rule_was_measured_on_get_no_advice() -> None:
    """Five tasks measured; on 18 the kinds were level at 100 examples per task."""
    assert size_advice(config(), [100] * 5) is not None
    assert size_advice(config(), [100] * 6) is None
    assert size_advice(config(), [100] * 18) is None
    assert size_advice(config(adapter_kind="lora"), [500] * 18) is None
    assert size_advice(config(), [100] * 18, SizeRule(tasks_at_most=18)) is not None


def test_the_median_over_tasks_and_the_rule_decide() -> None:
    assert size_advice(config(), [20, 100, 5000]) is not None  # median 100
    assert size_advice(config(), [20, 150, 5000]) is None
    assert size_advice(config(), [20, 150, 5000], SizeRule(lora_at_most=200)) is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("n_train", "arch", "advised"),
    [(60, {}, "adapter_kind=lora"), (None, {"adapter_kind": "lora"}, "adapter_kind=bottleneck"), (None, {}, None)],
)
def test_fit_prints_the_advice_once_from_the_data_modules_sizes(
    tiny_bert: str, n_train: int | None, arch: dict, advised: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a Trainer, over two epochs: the sizes after ``n_train`` (60 each; or the suite's own,
    median 500), the advice once, or nothing."""
    data = PHADataModule(tasks=TASKS, batch_size=16, max_source_length=24, n_train=n_train)
    seed_everything(0)
    system = PHAModule(PHAConfig(backbone=tiny_bert, backbone_init="random", tasks=TASKS, **arch))
    trainer = quiet_trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=0,
        enable_checkpointing=False,
        callbacks=[DataSizeAdvice()],
    )
    with caplog.at_level(logging.INFO):
        trainer.fit(system, datamodule=data)
    expected_sizes = [60] * 4 if n_train else [800, 600, 400, 300]
    assert data.train_sizes() == expected_sizes
    lines = [record.getMessage() for record in caplog.records if "examples per task (median" in record.getMessage()]
    if advised is None:
        assert lines == []
    else:
        assert len(lines) == 1 and advised in lines[0], lines
