"""Tasks declared in configuration through every command: ``pha tasks``, fit, test from the
checkpoint alone, export, predict from the bundle in a fresh interpreter with no spec file,
few-shot transfer to a new spec task, ``pha retrieve``; bad specs as one ``pha: error:`` line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from production_fixtures import MAX_SOURCE_LENGTH, pha_env, pha_error, run_pha

from pha_lightning.cli import main

pytestmark = pytest.mark.slow  # trains and runs the pha command in subprocesses

GOOD, BAD = ("lovely", "great", "fine", "superb"), ("awful", "dull", "poor", "bad")
SPECS = [
    {"name": "reviews", "files": {"all": "user/reviews.csv"}, "inputs": ["text"], "labels": ["negative", "positive"]},
    {
        "name": "questions",
        "files": {"train": "user/q_train.jsonl", "test": "user/q_test.jsonl"},
        "inputs": ["question"],
        "label": "kind",
        "labels": ["person", "place", "number"],
        "split": {"validation": 6},
    },
]
NEW_SPEC = {"name": "opinions", "files": {"all": "user/opinions.tsv"}, "inputs": ["sentence"], "labels": ["neg", "pos"]}
TINY = [
    "--data.n_train=16",
    "--data.batch_size=8",
    "--data.eval_batch_size=16",
    f"--data.max_source_length={MAX_SOURCE_LENGTH}",
    "--model.optim.warmup_steps=0",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.num_sanity_val_steps=0",
]


def write_user_data(root: Path) -> None:
    """Three small data sets as users bring them: a CSV without splits, JSONL with integer labels, a TSV."""
    user = root / "user"
    user.mkdir()
    lines = [
        f'"the film was {GOOD[i % 4] if i % 2 else BAD[i % 4]} , really",{"positive" if i % 2 else "negative"}'
        for i in range(60)
    ]
    (user / "reviews.csv").write_text("text,label\n" + "\n".join(lines) + "\n")
    kinds = ("who wrote the book {i} ?", "where is town {i} ?", "how many cats are {i} ?")
    for split, size in (("train", 40), ("test", 9)):
        rows = [{"question": kinds[i % 3].format(i=i), "kind": i % 3} for i in range(size)]
        (user / f"q_{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    opinions = [f"i {'liked' if i % 2 else 'hated'} it {i}\t{'pos' if i % 2 else 'neg'}" for i in range(50)]
    (user / "opinions.tsv").write_text("sentence\tlabel\n" + "\n".join(opinions) + "\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: data, a config holding the specs, and a short PHA run on them (checkpoints)."""
    root = tmp_path_factory.mktemp("own_tasks")
    write_user_data(root)
    config = {"data": {"tasks": ["reviews", "questions", "synth_polarity"], "task_specs": SPECS, "data_dir": str(root)}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "new_task.yaml").write_text(yaml.safe_dump([NEW_SPEC]))
    run_pha(
        "fit",
        "--config=config.yaml",
        *TINY,
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=2",
        "--trainer.check_val_every_n_epoch=null",
        f"--trainer.default_root_dir={root / 'runs'}",
        cwd=root,
    )
    return root


def last_checkpoint(project: Path) -> Path:
    (path,) = project.glob("runs/lightning_logs/version_*/checkpoints/last.ckpt")
    return path


def test_pha_tasks_reports_rows_labels_and_lengths(project: Path, capsys: pytest.CaptureFixture) -> None:
    main(["tasks", f"--config={project / 'config.yaml'}", "--data.n_train=10"])
    out = capsys.readouterr().out
    assert "3 tasks (n_train 10, val_max_examples 500, data_seed 42)" in out
    assert "reviews  [spec, files all=user/reviews.csv under" in out
    assert "rows: train 48 (keeps 10), validation 6, test 6" in out  # 60 rows carved 80/10/10
    assert "questions  [spec, files train=user/q_train.jsonl, test=user/q_test.jsonl" in out
    assert "rows: train 34 (keeps 10), validation 6, test 9" in out
    block = out.split("questions  [")[1]
    labels = block.split("labels (kept train rows): ")[1].splitlines()[0]
    counts = dict(item.rsplit(" ", 1) for item in labels.split(", "))
    assert list(counts) == ["person", "place", "number"] and sum(map(int, counts.values())) == 10
    assert "inputs: question;  metrics: accuracy" in block and "tokens (pypi:all-MiniLM-L6-v2" in block
    assert "synth_polarity  [built-in, generated]" in out


def test_pha_tasks_without_a_config_lists_the_builtin_tasks(capsys: pytest.CaptureFixture) -> None:
    main(["tasks"])
    out = capsys.readouterr().out
    assert "cola " in out and "unacceptable/acceptable" in out and "score 0–5" in out and "data.task_specs" in out


@pytest.mark.parametrize("command", ["fit", "tasks"])
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lables": ["a"]}, "task spec 'reviews': unknown spec keys ['lables']; valid: ['name', 'inputs'"),
        ({"inputs": ["review"]}, "the file has no field(s) ['review']; its fields are ['text', 'label']"),
        ({"labels": ["negative", "neutral"]}, "line 3: label 'positive' is none of the labels ['negative', 'neutral']"),
        ({"name": "sst2"}, "task specs ['sst2'] have the names of built-in tasks"),
        ({"split": {"validation": 30, "test": 30}}, "its train split is empty after carving"),
    ],
)
def test_a_bad_spec_is_one_error_line(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture, command: str, change: dict, message: str
) -> None:
    specs = [{**SPECS[0], **change}, SPECS[1]]
    tasks = [specs[0]["name"], "questions"]
    config = {"data": {"tasks": tasks, "task_specs": specs, "data_dir": str(project)}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    args = [
        f"--config={tmp_path / 'bad.yaml'}",
        *TINY,
        "--trainer.max_steps=1",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    err = pha_error(capsys, command, *(args if command == "fit" else args[:1]))
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("pha: error: ") and message in lines[-1], err
    assert not any("Traceback" in line or "usage:" in line for line in lines), err


def test_test_runs_from_the_checkpoint_alone(project: Path, tmp_path: Path) -> None:
    """No config: the checkpoint holds the specs (and where their files were read)."""
    result = run_pha(
        "test",
        f"--ckpt_path={last_checkpoint(project)}",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
        cwd=tmp_path,
    )
    metrics = json.loads(next(tmp_path.glob("**/test_metrics.json")).read_text())
    assert {"test/reviews/accuracy", "test/questions/accuracy", "test/synth_polarity/accuracy"} <= set(metrics)
    assert "reviews" in result.stdout


def test_a_changed_spec_does_not_serve_a_trained_task(project: Path, capsys: pytest.CaptureFixture) -> None:
    specs = [{**SPECS[0], "labels": ["positive", "negative"]}, SPECS[1]]
    config = {
        "data": {"tasks": ["reviews", "questions", "synth_polarity"], "task_specs": specs, "data_dir": str(project)}
    }
    path = project / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    err = pha_error(
        capsys, "test", f"--config={path}", f"--ckpt_path={last_checkpoint(project)}", "--trainer.accelerator=cpu"
    )
    assert (
        "trained on task 'reviews' with labels=['negative', 'positive'], but its spec in data.task_specs now says"
        in err
    )


def test_a_bundle_predicts_spec_tasks_without_the_spec(project: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    run_pha("export", f"--ckpt_path={last_checkpoint(project)}", f"--output_dir={bundle}", cwd=tmp_path)
    record = json.loads((bundle / "config.json").read_text())
    assert [spec["name"] for spec in record["config"]["task_specs"]] == ["reviews", "questions"]
    assert "user/reviews.csv" not in json.dumps(record)  # no file paths travel with the model
    examples = [
        {"task": "reviews", "text": "the film was lovely , really"},
        {"task": "questions", "question": "where is rome ?", "label": "place"},
    ]
    code = (
        "import json, sys\n"
        "from pha_lightning import PHAModel\n"
        f"model = PHAModel.from_pretrained({str(bundle)!r})\n"
        f"print(json.dumps(model.predict({examples!r})))\n"
    )
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=empty, env=pha_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert rows[0]["prediction"] in ("negative", "positive") and rows[1]["prediction"] in ("person", "place", "number")
    assert rows[1]["target"] == "place"
    (empty / "in.jsonl").write_text("".join(json.dumps(example) + "\n" for example in examples))
    run_pha(
        "predict",
        f"--ckpt_path={bundle}",
        "--data.predict_file=in.jsonl",
        "--predict_output=out.jsonl",
        "--trainer.accelerator=cpu",
        cwd=empty,
    )
    served = [json.loads(line) for line in (empty / "out.jsonl").read_text().splitlines()]
    assert [row["prediction"] for row in served] == [row["prediction"] for row in rows]


def test_transfer_to_a_new_spec_task_and_retrieve_it(project: Path, tmp_path: Path) -> None:
    ckpt = last_checkpoint(project)
    result = run_pha(
        "retrieve",
        f"--ckpt_path={ckpt}",
        "--tasks",
        "opinions",
        "--task_specs=new_task.yaml",
        f"--data_dir={project}",
        "--k=8",
        cwd=project,
    )
    assert "opinions" in result.stdout and "reviews" in result.stdout
    run_pha(
        "fit",
        f"--model.transfer.checkpoint={ckpt}",
        "--data.task_specs=new_task.yaml",
        "--data.tasks=[opinions]",
        f"--data.data_dir={project}",
        *TINY,
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.check_val_every_n_epoch=null",
        f"--trainer.default_root_dir={tmp_path}",
        "--test_after_fit=true",
        cwd=project,
    )
    metrics = json.loads(next(tmp_path.glob("**/test_metrics.json")).read_text())
    assert set(metrics) == {"test/opinions/accuracy", "test/avg"}
