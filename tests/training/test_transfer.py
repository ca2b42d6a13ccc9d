"""Few-shot transfer: retrieval ranks the related source first, top-1 init reproduces it, tuning is scoped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.errors import ConfigError
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.scripting import quiet_trainer
from pha_lightning.training.settings import OptimConfig
from pha_lightning.training.system import PHAModule
from pha_lightning.training.transfer import TransferConfig, initialize_new_tasks, prototype_scores

pytestmark = pytest.mark.slow  # trains source models and transfers them

SOURCES = ["synth_polarity", "synth_category", "synth_match", "synth_score"]
TARGET = "synth_polarity_heldout"


def _trainer(max_steps: int, **kwargs) -> Trainer:
    return quiet_trainer(max_steps=max_steps, limit_val_batches=0, **kwargs)


@pytest.fixture(scope="module")
def source_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    seed_everything(0)
    model = PHAModule(PHAConfig(tasks=SOURCES), optim=OptimConfig(learning_rate=1e-3, warmup_steps=5))
    data = PHADataModule(tasks=SOURCES, batch_size=32, max_source_length=48, temperature=2.0)
    trainer = _trainer(40, enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    path = tmp_path_factory.mktemp("source") / "source.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def _support(k: int, tasks: list[str] = [TARGET]) -> PHADataModule:  # noqa: B006
    data = PHADataModule(tasks=tasks, batch_size=8, max_source_length=48, n_train=k, seed=3)
    data.setup("fit")
    return data


def test_retrieval_ranks_the_heldout_copys_source_first(source_ckpt: str) -> None:
    model = PHAModule(PHAConfig(tasks=[TARGET]), transfer=TransferConfig(source_ckpt))
    rankings = initialize_new_tasks(model.model, model.transfer, _support(16).task_dataloaders("train"))
    ranked = [name for name, _ in rankings[TARGET]]
    assert ranked[0] == "synth_polarity", rankings
    scores = [score for _, score in rankings[TARGET]]
    assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1


def test_top1_transfer_reproduces_the_source_tasks_predictions(source_ckpt: str) -> None:
    model = PHAModule(PHAConfig(tasks=[TARGET]), transfer=TransferConfig(source_ckpt, init="top1"))
    support = _support(16)
    initialize_new_tasks(model.model, model.transfer, support.task_dataloaders("train"))
    model.eval()
    source_id = 1 + SOURCES.index("synth_polarity")  # new tasks come first inside the model
    torch.testing.assert_close(model.model.prototypes.table()[0], model.model.prototypes.table()[source_id])
    for batch in support.task_dataloaders("validation")[0]:
        as_source = {**batch, "task_ids": torch.full_like(batch["task_ids"], source_id)}
        assert torch.equal(model.model.predict_values(batch), model.model.predict_values(as_source))


@pytest.mark.parametrize(
    ("tune", "expected"),
    [
        ("prototype", {"prototypes.added", "heads.0"}),
        ("hypernetwork", {"prototypes.added", "heads.0", "hypernetwork"}),
        ("all", {"prototypes.added", "prototypes.weight", "heads", "hypernetwork", "shared_adapters", "retriever"}),
    ],
)
def test_tuned_parameters_are_exactly_the_configured_ones(source_ckpt: str, tune: str, expected: set[str]) -> None:
    model = PHAModule(PHAConfig(tasks=[TARGET]), transfer=TransferConfig(source_ckpt, tune=tune))
    trainable = {n for n, p in model.model.named_parameters() if p.requires_grad}
    covered = {n for n in trainable if any(n == e or n.startswith(e + ".") for e in expected)}
    assert covered == trainable
    assert all(any(n == e or n.startswith(e + ".") for n in trainable) for e in expected)


def test_source_tasks_unchanged_unless_tuned(source_ckpt: str) -> None:
    source_val = PHADataModule(tasks=SOURCES, max_source_length=48)
    source_val.setup("validate")
    batches = [next(iter(loader)) for loader in source_val.task_dataloaders("validation")]

    def source_predictions(model: PHAModule) -> list[torch.Tensor]:
        model.eval()
        shifted = [{**b, "task_ids": b["task_ids"] + 1} for b in batches]  # source ids follow the new task
        return [model.model.predict_values(b) for b in shifted]

    results = {}
    for tune in ("prototype", "hypernetwork"):
        seed_everything(0)
        model = PHAModule(
            PHAConfig(tasks=[TARGET]),
            optim=OptimConfig(learning_rate=5e-3, warmup_steps=0),
            transfer=TransferConfig(source_ckpt, tune=tune),
        )
        before = source_predictions(model)
        model.train()
        _trainer(8, enable_checkpointing=False).fit(model, datamodule=_support(16))
        after = source_predictions(model)
        results[tune] = all(torch.equal(a, b) for a, b in zip(before, after))
        assert not torch.equal(model.model.prototypes.added.detach(), model.model.prototypes.table()[2].detach())
    assert results == {"prototype": True, "hypernetwork": False}


def test_transfer_checks_its_source(source_ckpt: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="already source tasks"):
        PHAModule(PHAConfig(tasks=["synth_score"]), transfer=TransferConfig(source_ckpt))
    with pytest.raises(ConfigError, match="unknown model.transfer.init 'best'"):
        TransferConfig(source_ckpt, init="best")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(Path(source_ckpt).read_bytes()[:1000])
    with pytest.raises(Exception, match="cannot be read"):
        PHAModule(PHAConfig(tasks=[TARGET]), transfer=TransferConfig(str(broken)))


def test_prototype_scores_are_cosines_of_the_mean_direction() -> None:
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    protos = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-3.0, 0.0]])
    expected = torch.tensor([1.0, 0.0, -1 / 2**0.5])
    torch.testing.assert_close(prototype_scores(z, protos), expected)


def _pha(*args: str, cwd: Path) -> str:
    import os
    import shutil
    import subprocess
    import sys

    pha = shutil.which("pha", path=str(Path(sys.executable).parent)) or shutil.which("pha")
    result = subprocess.run(
        [pha, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout + result.stderr  # Lightning's info messages go to stderr


def test_pha_retrieve_ranks_and_writes_vectors_and_picture(source_ckpt: str, tmp_path: Path) -> None:
    out = _pha(
        "retrieve",
        "--ckpt_path",
        source_ckpt,
        "--tasks",
        TARGET,
        "synth_category_heldout",
        "--k",
        "8",
        "--sources",
        "10",
        "--max_source_length",
        "48",
        "--output_dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert f"{TARGET}: synth_polarity " in out and "synth_category_heldout: synth_category " in out
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "retrieval.safetensors"))
    assert saved["z"].shape == (16 + 4 * 10, 64) and saved["prototypes"].shape == (4, 64)
    assert (tmp_path / "retrieval.png").read_bytes()[:4] == b"\x89PNG"


def test_random_init_says_so_instead_of_an_empty_ranking(source_ckpt: str, caplog: pytest.LogCaptureFixture) -> None:
    model = PHAModule(PHAConfig(tasks=[TARGET]), transfer=TransferConfig(source_ckpt, init="random"))
    with caplog.at_level("INFO"):
        _trainer(1, enable_checkpointing=False).fit(model, datamodule=_support(8))
    assert "transfer (random): new tasks' prototypes drawn at random, no retrieval" in caplog.text
    assert "ranked by retrieval" not in caplog.text


def test_a_default_transfer_tunes_the_hypernetwork_and_says_the_sources_change(
    source_ckpt: str, caplog: pytest.LogCaptureFixture
) -> None:
    said = "weights the source tasks use train too, so their outputs change (their routing does not)"
    for tune, expected in ((None, True), ("prototype", False)):
        settings = {"tune": tune} if tune else {}  # None: the default
        model = PHAModule(PHAConfig(tasks=[TARGET]), transfer=TransferConfig(source_ckpt, **settings))
        caplog.clear()
        with caplog.at_level("INFO"):
            _trainer(1, enable_checkpointing=False).fit(model, datamodule=_support(8))
        tuned = {n.split(".")[0] for n, p in model.model.named_parameters() if p.requires_grad}
        assert ("hypernetwork" in tuned, said in caplog.text) == (expected, expected), (tune, tuned, caplog.text)


def test_transfer_through_pha_fit(source_ckpt: str, tmp_path: Path) -> None:
    out = _pha(
        "fit",
        "--config",
        str(Path(__file__).parents[2] / "configs/demo.yaml"),
        f"--data.tasks=[{TARGET}]",
        "--data.n_train=16",
        "--data.batch_size=8",
        f"--model.transfer.checkpoint={source_ckpt}",
        "--model.transfer.init=mix",
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=2",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )
    assert "transfer (mix)" in out and f"{TARGET}: synth_polarity" in out
    assert f"test/{TARGET}/accuracy" in (next(tmp_path.rglob("test_metrics.json"))).read_text()


def test_transferred_model_serves_from_the_command_line_without_its_config_or_source(
    source_ckpt: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``pha predict --ckpt_path`` of a transfer checkpoint, and of its bundle, with no configuration and the
    source checkpoint gone: the plain model over the new and the source tasks, predicting what
    ``PHAModel.from_pretrained`` predicts (issue 50)."""
    import json
    import shutil

    from pha_lightning import PHAModel
    from pha_lightning.cli import main
    from pha_lightning.cli.export import export_checkpoint

    source = tmp_path / "source.ckpt"
    shutil.copy(source_ckpt, source)
    seed_everything(0)
    model = PHAModule(PHAConfig(tasks=[TARGET]), transfer=TransferConfig(str(source)))
    trainer = _trainer(2, enable_checkpointing=False)
    trainer.fit(model, datamodule=_support(8))
    transferred = tmp_path / "transferred.ckpt"
    trainer.save_checkpoint(transferred)
    source.unlink()  # served without it
    bundle = export_checkpoint(transferred, tmp_path / "bundle")
    examples = [{"task": TARGET, "sentence": "the red cat near the park was lovely"}, {"sentence": "three nasty dogs"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    expected = PHAModel.from_pretrained(bundle).predict(examples)
    assert [row["task"] for row in expected][0] == TARGET
    for served in (transferred, bundle):
        output = tmp_path / f"{served.name}.jsonl"
        main(
            ["predict", f"--ckpt_path={served}", f"--data.predict_file={tmp_path / 'in.jsonl'}",
             f"--predict_output={output}", f"--trainer.default_root_dir={tmp_path / 'runs'}",
             "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
        )  # fmt: skip
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        assert [(r["task"], r["prediction"]) for r in rows] == [(r["task"], r["prediction"]) for r in expected]
        assert rows[1]["task_similarity"] == pytest.approx(expected[1]["task_similarity"], abs=1e-5)
    # resuming its training needs the transfer settings: one line, not an optimizer-state traceback
    with pytest.raises(SystemExit):
        main(["fit", f"--ckpt_path={transferred}", f"--trainer.default_root_dir={tmp_path / 'runs'}"])
    assert (
        f"pha: error: '{transferred}' is a few-shot transfer checkpoint: its training resumes"
        in capsys.readouterr().err
    )
