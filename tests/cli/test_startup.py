"""Start-up of the ``pha`` command: the command table, ``--version`` and ``pha tasks`` import no torch
or Lightning; ``pha <command> --help`` from the help cache is the rendered help, byte for byte, and a
source change renders it again; ``pha predict``'s first-prediction report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pha_lightning
from pha_lightning.cli.entry import EXTRA_COMMANDS, LIGHTNING_COMMANDS, all_commands
from pha_lightning.cli.help_cache import cache_file, print_help
from pha_lightning.cli.help_request import prints_help

TREE = Path(pha_lightning.__file__).parents[1]
HEAVY = ("torch", "lightning", "transformers", "datasets", "jsonargparse")
#: runs ``main`` on the arguments, then prints which heavy packages were imported to stderr
IMPORTS_AFTER = (
    "import sys\nfrom pha_lightning.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit as exit_status:\n    code = exit_status.code\nelse:\n    code = 0\n"
    f"print('imported:', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    "sys.exit(code)"
)


def run_python(*args: str, tree: Path = TREE, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Python in a subprocess in ``tree``, with it first on the import path (the code under test)."""
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "100", **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], cwd=tree, env=environ, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--version"], ["tasks"], []])
def test_light_commands_import_no_torch_or_lightning(argv: list[str]) -> None:
    result = run_python("-c", IMPORTS_AFTER, *argv)
    assert result.returncode == (2 if not argv else 0), result.stderr
    assert "imported: []" in result.stderr, result.stderr


def test_command_table_lists_every_command_with_its_summary() -> None:
    result = run_python("-c", IMPORTS_AFTER, "--help")
    text = " ".join(result.stdout.split())  # argparse wraps the summaries
    for name, summary in all_commands().items():
        assert f"{name} {summary}" in text
    for option in ("-c CONFIG, --config CONFIG", "--print_config [=flags]", "--version"):
        assert option in text
    assert f"pha {pha_lightning.__version__}" in run_python("-c", IMPORTS_AFTER, "--version").stdout


def test_no_command_is_one_line_naming_the_commands() -> None:
    result = run_python("-c", IMPORTS_AFTER)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        "pha: error: a command is required, one of fit, validate, test, predict, retrieve, export, calibrate, sweep, tasks, serve "
        "(`pha --help` describes them)"
    )


def test_tasks_listing_names_every_builtin_task() -> None:
    # the built-in tasks as a fresh process sees them: tests in this process register tasks of their own
    builtin = run_python("-c", "from pha_lightning.data.catalog import available_tasks; print(*available_tasks())")
    listed = [line.split()[0] for line in run_python("-c", IMPORTS_AFTER, "tasks").stdout.splitlines()[1:] if line]
    assert builtin.stdout.split() and listed[: len(builtin.stdout.split())] == builtin.stdout.split()


def render(text: str, status: int = 0):
    """A stand-in for a parser's ``--help``: prints ``text`` and exits with ``status``."""

    def run() -> None:
        print(text)
        raise SystemExit(status)

    return run


def test_cached_help_is_what_was_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PHA_CACHE_DIR", str(tmp_path))
    for text in ("usage: pha fit — ünïcode\n  --x  X", "rendered again"):
        with pytest.raises(SystemExit) as exit_status:
            print_help("fit", render(text))
        assert exit_status.value.code == 0
        assert capsys.readouterr().out == "usage: pha fit — ünïcode\n  --x  X\n"  # the second call reads the first
    assert [path.name for path in tmp_path.iterdir()] == [cache_file("fit").name]


def test_failed_or_unwritable_help_is_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PHA_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_status:
        print_help("export", render("pha export: error", status=2))
    assert exit_status.value.code == 2 and capsys.readouterr().out == "pha export: error\n"
    assert not (tmp_path / "cache").exists()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PHA_CACHE_DIR", str(tmp_path / "file"))  # a file: no folder can be made there
    with pytest.raises(SystemExit):
        print_help("export", render("usage: pha export"))
    assert capsys.readouterr().out == "usage: pha export\n"
    monkeypatch.setenv("PHA_CACHE_DIR", "")
    assert cache_file("export") is None


def test_source_change_renders_the_help_again(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(TREE / "pha_lightning", tree / "pha_lightning", ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "import os\nfrom pha_lightning.cli.help_cache import print_help\n"
        "def render():\n    print(os.environ['RENDERED'])\n    raise SystemExit(0)\n"
        "print_help('fit', render)"
    )
    cache = {"PHA_CACHE_DIR": str(tmp_path / "cache")}

    def help_text(rendered: str) -> str:
        return run_python("-c", script, tree=tree, env={**cache, "RENDERED": rendered}).stdout

    assert help_text("first") == "first\n"
    assert help_text("second") == "first\n"  # from the cache
    with open(tree / "pha_lightning" / "cli" / "app.py", "a") as source:
        source.write("# changed\n")
    assert help_text("third") == "third\n"
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the stale entry is gone


def test_first_prediction_report_names_each_phase() -> None:
    from pha_lightning.training.callbacks import first_prediction_report

    marks = {"start": 10.0, "imports": 11.0, "parsing": 11.5, "model load": 13.0}
    assert first_prediction_report(marks, 14.3) == (
        "first prediction after 4.3 s (imports 1.0 s, parsing 0.5 s, model load 1.5 s)"
    )


@pytest.mark.parametrize(
    ("argv", "reads"),
    [
        (["fit", "--config", "run.yaml", "--trainer.max_steps=5"], False),
        (["predict", "--ckpt_path", "last", "--data.predict_file=help.jsonl"], False),
        (["fit", "--help"], True),
        (["validate", "--config", "run.yaml", "-h"], True),
        (["fit", "--print_config"], True),
        (["fit", "--print_config=skip_null"], True),
        (["fit", "--trainer.callbacks.help", "EarlyStopping"], True),
        ({"fit": {"trainer": {"max_steps": 1}}}, True),
    ],
)
def test_setting_descriptions_are_read_only_for_what_prints_them(argv: object, reads: bool) -> None:
    """Reading every setting's docstring costs ≈ 1.5 s of CPU at each start; only help and
    ``--print_config`` show them (a mapping of settings is read as before, in full)."""
    assert prints_help(argv) is reads


@pytest.mark.slow  # imports Lightning and builds one subcommand's parser
@pytest.mark.parametrize("command", ["validate", "predict"])
def test_a_command_builds_and_prints_its_own_parser(command: str, capsys: pytest.CaptureFixture) -> None:
    from pha_lightning.cli.app import run_cli

    with pytest.raises(SystemExit) as done:
        run_cli([command, "--help"])
    assert done.value.code in (None, 0)
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pha [options] {command} ") and "--ckpt_path" in out and "--data.tasks" in out
    assert "Steps of linear warm-up" in out


@pytest.mark.slow  # renders pha fit --help twice (Lightning's imports, its parser)
def test_cached_fit_help_is_byte_identical_to_the_rendered_one(tmp_path: Path) -> None:
    entry = "import sys\nfrom pha_lightning.cli import main\nmain(sys.argv[1:])"
    uncached = run_python("-c", entry, "fit", "--help", env={"PHA_CACHE_DIR": ""})
    cache = {"PHA_CACHE_DIR": str(tmp_path)}
    cold, cached = (run_python("-c", entry, "fit", "--help", env=cache) for _ in range(2))
    assert uncached.returncode == cold.returncode == cached.returncode == 0, uncached.stderr
    assert "--model.loss.lambda_ir" in uncached.stdout
    assert "Steps of linear warm-up" in uncached.stdout  # the docstring under OptimConfig.warmup_steps
    assert uncached.stdout == cold.stdout == cached.stdout
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.slow  # imports Lightning and builds PHA's LightningCLI parser
def test_command_table_covers_lightning_clis_top_level_help(capsys: pytest.CaptureFixture) -> None:
    from lightning.pytorch.cli import LightningCLI

    from pha_lightning.cli.app import run_cli

    assert set(LIGHTNING_COMMANDS) == set(LightningCLI.subcommands())
    assert not set(LIGHTNING_COMMANDS) & set(EXTRA_COMMANDS)
    with pytest.raises(SystemExit):
        run_cli(["--help"], other_commands=tuple(EXTRA_COMMANDS))
    lightning_help = capsys.readouterr().out
    options = {word.rstrip(",.") for word in lightning_help.split() if word.startswith("-")}
    table = run_python("-c", IMPORTS_AFTER, "--help").stdout
    assert options and all(option in table for option in options), options
