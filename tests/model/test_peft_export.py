"""Per-task peft exports and merged checkpoints, checked against peft and transformers themselves:
``PeftModel.from_pretrained`` (one task), ``load_adapter`` + ``adapter_names=`` (a mixed batch) and
``AutoModel.from_pretrained`` of a merged checkpoint compute what ``PHAModel`` computes for each task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything
from peft import LoraConfig, PeftModel
from safetensors import safe_open
from safetensors.torch import load_file

from pha_lightning.data.catalog import get_task
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.data.synthetic import build_synthetic_suite
from pha_lightning.errors import ConfigError
from pha_lightning.formats.peft import PEFT_CONFIG_NAME
from pha_lightning.formats.task_export import HEAD_NAME, INDEX_NAME
from pha_lightning.hub import resolve_backbone_path
from pha_lightning.model.backbone import backbone_class
from pha_lightning.model.calibration import RoutingConfig, calibrate
from pha_lightning.model.config import PHAConfig
from pha_lightning.model.exports import write_peft_export
from pha_lightning.model.lora import LoRALinear
from pha_lightning.model.pha import PHAModel
from pha_lightning.model.prediction import example_batches
from pha_lightning.model.retriever import masked_mean
from pha_lightning.routing import Router

TASKS = ["synth_polarity", "synth_category", "synth_match", "synth_score"]
ALL_TARGETS = ["query", "key", "value", "output", "ffn_in", "ffn_out"]
TASKS_BY_NAME = {name: get_task(name) for name in TASKS}


@pytest.fixture(scope="module")
def pretrained(pretrained_tiny: dict[str, str]) -> dict[str, str]:
    return pretrained_tiny


def pha_model(backbone: str, method: str, **settings: object) -> PHAModel:
    """A float64 LoRA model with non-zero shared and generated B factors (B = 0 would hide a wrong export)."""
    seed_everything(0)
    config = PHAConfig(
        backbone=backbone,
        tasks=TASKS,
        method=method,
        adapter_kind="lora",
        lora_rank=4,
        lora_alpha=12.0,
        lora_dropout=0.2,
        chunk_cost_tokens=None,
        **{"lora_targets": ALL_TARGETS, **settings},
    )
    model = PHAModel(config).double().eval()
    with torch.no_grad():
        for shared in model.shared_adapters:
            shared.b.weight.normal_(0.0, 0.3)
        if model.hypernetwork is not None:
            for head in model.hypernetwork.b_heads:
                head.init_uniform(0.3)
    return model


def mixed_batch(backbone: str, size: int = 8) -> dict[str, torch.Tensor]:
    data = PHADataModule(tasks=TASKS, backbone=backbone, batch_size=size, max_source_length=24, seed=3)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert len(batch["task_ids"].unique()) > 1
    return batch


def pha_outputs(model: PHAModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Final hidden states (encoder) or teacher-forced logits (T5) of PHA for the batch's tasks."""
    with torch.no_grad():
        if model.family == "seq2seq":
            return model(batch)["lm_logits"]
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        return model.run_backbone(batch, lambda: model.backbone(**inputs))[0].last_hidden_state


def hf_inputs(model: PHAModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch as a transformers model takes it (T5: decoder inputs shifted from the labels)."""
    if model.family == "seq2seq":
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "decoder_input_ids": model.backbone._shift_right(batch["labels"]),
        }
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def served_outputs(served: torch.nn.Module, inputs: dict[str, torch.Tensor], **kwargs: object) -> torch.Tensor:
    """What :func:`pha_outputs` returns, from a transformers (or peft) model."""
    with torch.no_grad():
        out = served(**inputs, **kwargs)
    return out.logits if "decoder_input_ids" in inputs else out.last_hidden_state


def load_base(path: str, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    return backbone_class(path).from_pretrained(resolve_backbone_path(path), dtype=dtype).eval()


EXACT = {"rtol": 1e-10, "atol": 1e-12}  # float64: only summation order differs


@pytest.mark.parametrize("method", ["pha", "hyperformer", "lora"])
@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_each_task_through_peft_equals_pha(kind: str, method: str, pretrained: dict, tmp_path: Path) -> None:
    """One task per ``PeftModel.from_pretrained``; then every task via ``load_adapter`` in one
    mixed batch with ``adapter_names=``: the same hidden states / logits as PHA, row by row."""
    model = pha_model(pretrained[kind], method)
    out = write_peft_export(model, tmp_path / "export")
    batch = mixed_batch(pretrained[kind])
    expected = pha_outputs(model, batch)

    first = TASKS[1]
    single = PeftModel.from_pretrained(load_base(pretrained[kind]), out / "peft" / first).eval()
    alone = {**batch, "task_ids": torch.full_like(batch["task_ids"], 1)}
    torch.testing.assert_close(served_outputs(single, hf_inputs(model, batch)), pha_outputs(model, alone), **EXACT)

    peft = PeftModel.from_pretrained(load_base(pretrained[kind]), out / "peft" / TASKS[0], adapter_name=TASKS[0])
    for task in TASKS[1:]:
        peft.load_adapter(out / "peft" / task, adapter_name=task)
    peft.eval()
    names = [TASKS[t] for t in batch["task_ids"].tolist()]
    got = served_outputs(peft, hf_inputs(model, batch), adapter_names=names)
    torch.testing.assert_close(got, expected, **EXACT)
    # the tasks really differ (PHA's generated factors), except for method lora, whose adapter is shared
    differs = not torch.allclose(pha_outputs(model, alone), expected)
    assert differs == (method != "lora")
    if kind == "t5":  # greedy generation of a mixed batch, as PHA decodes it
        settings = {"max_new_tokens": 6, "num_beams": 1, "do_sample": False}
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            ours, _ = model.run_backbone(batch, lambda: model.backbone.generate(**inputs, **settings))
            theirs = peft.generate(**inputs, **settings, adapter_names=names)
            bare = load_base(pretrained[kind]).generate(**inputs, **settings)
        assert torch.equal(ours, theirs) and not torch.equal(ours, bare)  # the adapters change the answers


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_adapter_config_targets_exactly_the_adapted_modules(kind: str, pretrained: dict, tmp_path: Path) -> None:
    """Full module paths: BERT's ``output.dense`` (ffn_out) without the attention output, and the reverse."""
    targets = ["query", "ffn_out"] if kind == "bert" else ["value", "ffn_in"]
    model = pha_model(pretrained[kind], "pha", lora_targets=targets)
    out = write_peft_export(model, tmp_path / "export", tasks=[TASKS[2]])
    config = json.loads((out / "peft" / TASKS[2] / PEFT_CONFIG_NAME).read_text())
    assert set(config) <= set(LoraConfig.__dataclass_fields__)  # every key is one of peft's
    loaded = LoraConfig.from_pretrained(out / "peft" / TASKS[2])
    assert (loaded.r, loaded.lora_alpha, loaded.lora_dropout, loaded.use_rslora) == (4, 12.0, 0.2, False)
    ours = {name for name, module in model.backbone.named_modules() if isinstance(module, LoRALinear)}
    peft = PeftModel.from_pretrained(load_base(pretrained[kind]), out / "peft" / TASKS[2])
    wrapped = {name.removeprefix("base_model.model.") for name, m in peft.named_modules() if hasattr(m, "lora_A")}
    # BERT: 4 blocks x 2; T5: 2 encoder blocks x 2, 2 decoder blocks x 3 (cross-attention's v too)
    assert wrapped == ours and len(ours) == {"bert": 8, "t5": 10}[kind]
    if kind == "bert":
        assert not any("attention.output" in name for name in wrapped)
    assert json.loads((out / INDEX_NAME).read_text())["tasks"] == {TASKS[2]: {"peft": f"peft/{TASKS[2]}"}}


@pytest.mark.parametrize(
    ("output_layer", "pooling"), [("task_heads", "mean"), ("label_words", "mean"), ("task_heads", "cls")]
)
def test_task_head_file_applied_in_two_lines_gives_phas_outputs(
    output_layer: str, pooling: str, pretrained: dict, tmp_path: Path
) -> None:
    model = pha_model(pretrained["bert"], "pha", output_layer=output_layer, head_pooling=pooling)
    out = write_peft_export(model, tmp_path / "export")
    batch = mixed_batch(pretrained["bert"])
    with torch.no_grad():
        pooled = model(batch)["pooled"]
        expected, _ = model.heads.outputs(pooled, batch["task_ids"])
    kinds = set()
    for task, (rows, task_outputs) in expected.items():
        directory = out / "peft" / TASKS[task]
        peft = PeftModel.from_pretrained(load_base(pretrained["bert"]), directory).eval()
        head = load_file(directory / HEAD_NAME)
        inputs = {k: batch[k][rows] for k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            hidden, mask = peft(**inputs).last_hidden_state, inputs["attention_mask"]
        # the two lines of the model card
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) if pooling == "mean" else hidden[:, 0]
        outputs = pooled @ head["weight"].T + head["bias"]
        torch.testing.assert_close(outputs, task_outputs, **EXACT)
        meta = head_metadata(directory / HEAD_NAME)
        assert meta["pooling"] == pooling
        kinds.add(meta["kind"])
        if meta["kind"] == "regression":  # the card's reading of a normalised regression head
            value = outputs[:, 0] * float(meta["regression_half_width"]) + float(meta["regression_center"])
            torch.testing.assert_close(value.float(), model.heads.values(task, task_outputs), rtol=1e-6, atol=1e-6)
    assert kinds == ({"classification", "regression"} if output_layer == "task_heads" else {"classification"})
    card = (out / "peft" / TASKS[0] / "README.md").read_text()
    assert "PeftModel.from_pretrained" in card and HEAD_NAME in card and "sentence" in card
    assert ("pooled = hidden[:, 0]" in card) == (pooling == "cls")


def head_metadata(path: Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as f:
        return f.metadata()


def test_t5_card_holds_the_input_template(pretrained: dict, tmp_path: Path) -> None:
    model = pha_model(pretrained["t5"], "pha")
    out = write_peft_export(model, tmp_path / "export", tasks=["synth_match"], data={"max_source_length": 40})
    card = (out / "peft" / "synth_match" / "README.md").read_text()
    assert "`synth_match sentence1: {sentence1} sentence2: {sentence2}`" in card and "was 40 in training" in card
    assert not (out / "peft" / "synth_match" / HEAD_NAME).exists()


#: loads a merged checkpoint with pha_lightning and peft made unimportable, and saves its outputs
PLAIN_LOAD = """
import sys, torch
sys.modules["peft"] = None
sys.modules["pha_lightning"] = None
from transformers import AutoModel, AutoModelForSeq2SeqLM
path, inputs, output = sys.argv[1:]
batch = torch.load(inputs)
auto = AutoModelForSeq2SeqLM if "decoder_input_ids" in batch else AutoModel
model = auto.from_pretrained(path).eval()
with torch.no_grad():
    out = model(**batch)
torch.save(out.logits if "decoder_input_ids" in batch else out.last_hidden_state, output)
"""


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_merged_checkpoint_loads_without_pha_or_peft_and_equals_pha(
    kind: str, pretrained: dict, tmp_path: Path
) -> None:
    model = pha_model(pretrained[kind], "pha")
    out = write_peft_export(model, tmp_path / "export", tasks=TASKS[:2], merge=True)
    assert sorted(p.name for p in (out / "merged").iterdir()) == sorted(TASKS[:2])
    batch = mixed_batch(pretrained[kind])
    task = 1
    alone = {**batch, "task_ids": torch.full_like(batch["task_ids"], task)}
    expected = pha_outputs(model, alone)
    torch.save(hf_inputs(model, batch), tmp_path / "inputs.pt")
    env = {**os.environ, "PYTHONPATH": ""}
    subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(out / "merged" / TASKS[task]), str(tmp_path / "inputs.pt"),
         str(tmp_path / "out.pt")],
        check=True, env=env, timeout=300,
    )  # fmt: skip
    got = torch.load(tmp_path / "out.pt")
    assert got.dtype == torch.float64  # merged in the model's precision
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "pha"}, "method 'pha' with adapter_kind 'bottleneck' uses parallel bottleneck adapters"),
        ({"method": "finetune"}, "method 'finetune' trains the backbone itself"),
        ({"method": "hyperdecoder", "adapter_kind": "lora"}, "generates LoRA factors from each example's own"),
        ({"method": "lora", "backbone_init": "random"}, r"built at random init \(backbone_init='random'\)"),
    ],
)
def test_models_without_a_per_task_lora_adapter_are_refused(
    settings: dict, message: str, tiny_bert: str, tmp_path: Path
) -> None:
    model = PHAModel(PHAConfig(backbone=tiny_bert, tasks=TASKS, **{"backbone_init": "random", **settings}))
    with pytest.raises(ConfigError, match=message):
        write_peft_export(model, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_unknown_tasks_are_named(pretrained: dict, tmp_path: Path) -> None:
    model = pha_model(pretrained["bert"], "lora")
    with pytest.raises(ConfigError, match=r"--tasks must be distinct tasks of this model \[.*\], got \['nope'\]"):
        write_peft_export(model, tmp_path / "export", tasks=["nope"])


@pytest.mark.slow
def test_minilm_task_through_peft_and_merged_equals_pha(tmp_path: Path) -> None:
    """The real pretrained backbone in float32: one mixed batch through peft, and a merged model."""
    seed_everything(0)
    model = PHAModel(PHAConfig(tasks=TASKS, adapter_kind="lora", lora_targets=["query", "value", "ffn_out"])).eval()
    with torch.no_grad():
        for shared in model.shared_adapters:
            shared.b.weight.normal_(0.0, 0.05)
        for head in model.hypernetwork.b_heads:
            head.init_uniform(0.05)
    out = write_peft_export(model, tmp_path / "export", merge=True)
    batch = mixed_batch(model.config.backbone)
    base = load_base(model.config.backbone, torch.float32)
    peft = PeftModel.from_pretrained(base, out / "peft" / TASKS[0], adapter_name=TASKS[0])
    for task in TASKS[1:]:
        peft.load_adapter(out / "peft" / task, adapter_name=task)
    peft.eval()
    expected = pha_outputs(model, batch)
    inputs = hf_inputs(model, batch)
    got = served_outputs(peft, inputs, adapter_names=[TASKS[t] for t in batch["task_ids"].tolist()])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        pooled = model(batch)["pooled"]
    torch.testing.assert_close(masked_mean(got, batch["attention_mask"]), pooled, rtol=1e-5, atol=1e-5)
    for task in batch["task_ids"].unique().tolist()[:2]:
        rows = torch.nonzero(batch["task_ids"] == task).squeeze(1)
        merged = load_base(str(out / "merged" / TASKS[task]), torch.float32)
        got = served_outputs(merged, {k: v[rows] for k, v in inputs.items()})
        torch.testing.assert_close(got, expected[rows], rtol=1e-4, atol=1e-5)


def raw_examples(per_task: int = 6) -> tuple[list[dict], list[int]]:
    """Validation records of every task as a user sends them without a task, and their task ids."""
    suite = {task.name: task for task in build_synthetic_suite()}
    examples, ids = [], []
    for index, name in enumerate(TASKS):
        for record in suite[name].load_split("validation")[:per_task]:
            examples.append({k: v for k, v in record.items() if k not in ("label", "idx")})
            ids.append(index)
    return examples, ids


def calibrated(model: PHAModel, examples: list[dict], ids: list[int]) -> PHAModel:
    """Prototypes at each task's mean retrieval vector, and a routing calibration fitted on ``examples``
    (a loose target precision, so that the untrained model routes some and abstains on others)."""
    scores, vectors = [], []
    for batch in example_batches(model, examples, 64, 24):
        vectors.append(model.retrieval_forward({**batch, "task_ids": torch.zeros_like(batch["task_ids"])}))
    z = torch.nn.functional.normalize(torch.cat(vectors), dim=-1)
    order = [i for batch in example_batches(model, examples, 64, 24) for i in (m["index"] for m in batch["meta"])]
    targets = torch.tensor(ids)[order]
    with torch.no_grad():
        model.prototypes.weight.copy_(torch.stack([z[targets == t].mean(0) for t in range(len(TASKS))]))
        scores = model.retrieval_scores(z)
    config = RoutingConfig(target_precision=0.6, novelty_quantile=0.2, group_confusion=0.9)
    model.calibration = calibrate(scores, targets, TASKS, config)
    return model


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_router_and_peft_mixed_batch_give_the_bundles_predictions(kind: str, pretrained: dict, tmp_path: Path) -> None:
    """Examples without a task: ``Router`` on the export's ``router/`` routes as the bundle does, and
    peft's mixed batch with ``adapter_names=`` the routed tasks predicts what the bundle predicts."""
    examples, ids = raw_examples()
    model = calibrated(pha_model(pretrained[kind], "pha"), examples, ids)
    out = write_peft_export(model, tmp_path / "export", data={"max_source_length": 24})
    assert json.loads((out / INDEX_NAME).read_text())["router"] == "router"
    bundle = PHAModel.from_pretrained(model.save_pretrained(tmp_path / "bundle", data={"max_source_length": 24}))
    rows = bundle.double().predict(examples)
    router = Router.from_pretrained(out)
    router.model.double()
    routes = router.route(examples)
    assert [task for task, _ in routes] == [row["task"] for row in rows]
    assert [round(c, 6) for _, c in routes] == [row["confidence"] for row in rows]
    routed = [i for i, (task, _) in enumerate(routes) if task is not None]
    assert 0 < len(routed) < len(examples) and len({routes[i][0] for i in routed}) > 1  # routes and abstains
    peft = PeftModel.from_pretrained(load_base(pretrained[kind]), out / "peft" / TASKS[0], adapter_name=TASKS[0])
    for task in TASKS[1:]:
        peft.load_adapter(out / "peft" / task, adapter_name=task)
    peft.eval()
    (batch,) = example_batches(router.model, [examples[i] for i in routed], 64, 24)  # what the bundle tokenises
    names = [routes[routed[m["index"]]][0] for m in batch["meta"]]
    expected = [rows[routed[m["index"]]] for m in batch["meta"]]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        if kind == "t5":
            tokens = peft.generate(**inputs, max_new_tokens=model.config.generation_max_length, adapter_names=names)
            texts = bundle.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            values = [TASKS_BY_NAME[n].parse_generation(t.strip()) for n, t in zip(names, texts)]
            read = [
                row["prediction"] if TASKS_BY_NAME[n].is_regression else row["prediction_index"]
                for n, row in zip(names, expected)
            ]
            assert read == [
                None if v is None else (v if TASKS_BY_NAME[n].is_regression else int(v)) for n, v in zip(names, values)
            ]
            task_ids = torch.tensor([TASKS.index(n) for n in names])
            ours, _ = model.run_backbone(
                {**batch, "task_ids": task_ids},
                lambda: model.backbone.generate(**inputs, max_new_tokens=model.config.generation_max_length),
            )
            assert torch.equal(tokens, ours)
            return
        hidden = peft(**inputs, adapter_names=names).last_hidden_state
    mask = batch["attention_mask"].to(hidden)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    for row, name, vector in zip(expected, names, pooled):
        head = load_file(out / "peft" / name / HEAD_NAME)
        outputs = vector @ head["weight"].T.to(vector) + head["bias"].to(vector)
        if TASKS_BY_NAME[name].is_regression:
            meta = head_metadata(out / "peft" / name / HEAD_NAME)
            value = float(outputs[0]) * float(meta["regression_half_width"]) + float(meta["regression_center"])
            assert row["prediction"] == pytest.approx(value, rel=1e-6)  # predict_values returns float32
        else:
            assert row["prediction_index"] == int(outputs.argmax())
