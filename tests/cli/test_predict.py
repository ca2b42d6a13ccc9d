"""`pha predict` on a JSONL file of raw examples, from a checkpoint and from a bundle: one output line
per input line in input order, the retriever picking (and naming) the task of examples without one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from production_fixtures import MAX_SOURCE_LENGTH, TASKS, pha_error, run_pha, trained_checkpoint
from torch.nn import functional as F

from pha_lightning import PHAModel
from pha_lightning.cli import app, main
from pha_lightning.data.datamodule import Collator
from pha_lightning.data.examples import encode_examples, predict_loader, read_jsonl
from pha_lightning.training.system import PHAModule

pytestmark = pytest.mark.slow  # trains a model and predicts through the command

EXAMPLES = [
    {"task": "synth_polarity", "sentence": "the red cat near the park was lovely", "id": "a"},
    {"sentence": "in the park the nasty red cat earned three points"},
    None,  # a blank line
    {"task": "synth_score", "sentence": "in the park the nasty red cat earned five points", "label": 5},
    {"text": "the blue dog near the river was awful", "id": 4},
    {
        "task": "synth_match",
        "sentence1": "i have a red cat at the park",
        "sentence2": "you have a nice dog",
        "label": "1",
    },
    {"sentence1": "i have a green bus at the beach", "sentence2": "you have a poor truck"},
    {"task": "synth_polarity", "sentence": "someone said the weather was " + "very " * 80 + "good"},  # truncated
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    ckpt = trained_checkpoint(tmp_path_factory)
    root = tmp_path_factory.mktemp("predict")
    examples = root / "in.jsonl"
    examples.write_text("".join(("" if e is None else json.dumps(e)) + "\n" for e in EXAMPLES))
    bundle = root / "bundle"
    run_pha("export", f"--ckpt_path={ckpt}", f"--output_dir={bundle}", cwd=root)
    common = [f"--data.predict_file={examples}", "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"]
    from_ckpt = run_pha(
        "predict", f"--ckpt_path={ckpt}", *common, f"--trainer.default_root_dir={root / 'ckpt_run'}", cwd=root
    )
    out_bundle = root / "from_bundle.jsonl"
    from_bundle = run_pha(
        "predict",
        f"--ckpt_path={bundle}",
        *common,
        f"--predict_output={out_bundle}",
        f"--trainer.default_root_dir={root / 'bundle_run'}",
        cwd=root,
    )
    assert "wrote 7 predictions to" in from_ckpt.stdout
    return {
        "ckpt": ckpt,
        "bundle": bundle,
        "examples": examples,
        "root": root,
        "out_bundle": out_bundle,
        "bundle_stdout": from_bundle.stdout,
    }


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_input_in_input_order(run: dict[str, Path]) -> None:
    default_output = next((run["root"] / "ckpt_run").rglob("predictions.jsonl"))  # <log_dir>/predictions.jsonl
    rows = _rows(default_output)
    inputs = [e for e in EXAMPLES if e is not None]
    assert [r["index"] for r in rows] == list(range(len(inputs)))
    assert [r["line"] for r in rows] == [1, 2, 4, 5, 6, 7, 8]  # line numbers of the input file (line 3 is blank)
    assert rows[0]["id"] == "a" and rows[3]["id"] == 4 and "id" not in rows[1]
    for row, example in zip(rows, inputs):
        if "task" in example:
            assert row["task"] == example["task"] and row["routed"] is False and "task_similarity" not in row
        else:
            assert row["routed"] is True and row["task"] in TASKS and -1 <= row["task_similarity"] <= 1
        assert "label" not in row and "task_source" not in row  # the input's gold label is `target`
    score = rows[2]  # a regression: the predicted score, a JSON number; no class index
    assert score["target"] == 5.0 and isinstance(score["prediction"], float) and "prediction_index" not in score
    # a classification: the predicted label string, and its class index
    assert rows[0]["prediction"] == ["0", "1"][rows[0]["prediction_index"]] and rows[4]["target"] == "1"
    # the run's resolved configuration is saved beside it, as for every run
    assert (default_output.parent / "config.yaml").exists()


def test_time_to_first_prediction_is_reported_once_with_its_phases(run: dict) -> None:
    reports = re.findall(
        r"first prediction after ([\d.]+) s \(imports ([\d.]+) s, parsing ([\d.]+) s, model load ([\d.]+) s\)",
        run["bundle_stdout"],
    )
    assert len(reports) == 1, run["bundle_stdout"]
    total, *phases = map(float, reports[0])
    assert all(phase >= 0 for phase in phases) and total >= sum(phases) - 0.15  # each rounded to 0.1 s
    assert phases[0] > 0.5  # the imports of torch and Lightning are in it


def test_bundle_predictions_equal_checkpoint_predictions(run: dict[str, Path]) -> None:
    from_ckpt = _rows(next((run["root"] / "ckpt_run").rglob("predictions.jsonl")))
    assert _rows(run["out_bundle"]) == from_ckpt
    served = PHAModel.from_pretrained(run["bundle"]).predict([e for e in EXAMPLES if e is not None])
    assert [{k: v for k, v in r.items() if k != "line"} for r in served] == [
        {k: v for k, v in r.items() if k != "line"} for r in from_ckpt
    ]


def test_retriever_picks_the_nearest_prototype(run: dict[str, Path]) -> None:
    model = PHAModule.load_from_checkpoint(run["ckpt"], map_location="cpu", weights_only=True).eval()
    rows = read_jsonl(run["examples"])
    encoded = encode_examples(
        rows, model.model.task_objects, model.model.family, model.model.tokenizer, MAX_SOURCE_LENGTH
    )
    tok = model.model.tokenizer
    expected = {}
    for batch in predict_loader(encoded, Collator(tok.pad_token_id, tok.pad_token_type_id, tok.padding_side), 64):
        with torch.no_grad():
            z = model.model.retrieval_forward({**batch, "task_ids": batch["task_ids"].clamp_min(0)})
        cosine = F.normalize(z, dim=-1) @ F.normalize(model.model.prototypes.table(), dim=-1).T
        for index, scores in zip(batch["example_ids"].tolist(), cosine):
            expected[index] = (TASKS[int(scores.argmax())], float(scores.max()))
    predicted = _rows(run["out_bundle"])
    for row in predicted:
        if row["routed"]:
            task, similarity = expected[row["index"]]
            assert row["task"] == task and row["task_similarity"] == pytest.approx(similarity, abs=1e-5)


def test_the_mmap_threshold_is_fixed_at_predict_start_and_checked(
    run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The setting reaches glibc (here recorded, not applied: it would stay for the test process) before
    the first batch; a value glibc cannot take is refused naming it, before the model is built."""
    common = [f"--ckpt_path={run['ckpt']}", f"--data.predict_file={run['examples']}", "--trainer.accelerator=cpu"]
    common += ["--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"]
    fixed = []
    monkeypatch.setattr(app, "fix_mmap_threshold", fixed.append)
    main(["predict", *common, f"--predict_output={tmp_path / 'out.jsonl'}", "--predict_mmap_threshold=262144"])
    assert fixed == [262144] and len(_rows(tmp_path / "out.jsonl")) == 7
    main(["predict", *common, f"--predict_output={tmp_path / 'default.jsonl'}"])
    assert fixed == [262144, 128 * 1024]
    err = pha_error(capsys, "predict", *common, "--predict_mmap_threshold=-5")
    assert "predict_mmap_threshold is -5; give a number of bytes from 0 to 33554432" in err
