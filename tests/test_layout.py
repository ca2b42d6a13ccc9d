"""The package layout: dependencies point one way, and the model is usable without Lightning."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Collection
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import pha_lightning

PACKAGE = Path(pha_lightning.__file__).parent
#: Shared by every package: they import nothing of pha_lightning but each other.
FOUNDATION = {"errors", "validation", "hub", "files", "version", "cpus"}
#: What each layer may import (besides itself and the foundation).
ALLOWED: dict[str, set[str]] = {
    "foundation": set(),
    "data": set(),
    "formats": {"data"},  # files and plain state dicts: no model code, no Lightning
    "model": {"data", "formats"},
    "training": {"data", "formats", "model"},
    "cli": {"data", "formats", "model", "training", "routing"},
    "routing": {"data", "formats", "model"},  # pha_lightning.routing: the Router, without Lightning
}


def layer_of(module: str) -> str:
    """``pha_lightning.model.pha`` → ``model``; ``pha_lightning.hub`` → ``foundation``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return "foundation" if parts[1] in FOUNDATION else parts[1]


def imported_modules(path: Path, modules: Collection[str] | None = None) -> set[str]:
    """Every ``pha_lightning`` module a file imports, at any depth (lazy imports, ``TYPE_CHECKING``
    ones and ``importlib.import_module("...")`` too); ``from package import module`` names the module
    (of ``modules``, default: the package's)."""
    known = set(source_modules() if modules is None else modules)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pha_lightning")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pha_lightning"):
            names = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= names & known
            if names - known:
                found.add(node.module)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "importlib.import_module" and node.args:
            if isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("pha_lightning"):
                found.add(node.args[0].value)
    return found


def source_modules() -> dict[str, Path]:
    return {
        ".".join(("pha_lightning", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }


def test_every_module_lives_in_a_known_layer() -> None:
    layers = {layer_of(name) for name in source_modules()}
    assert layers == {"root", *ALLOWED}, layers


#: The most lines a module may have: a longer one holds more than one concern, and gets split along its seam.
MAX_MODULE_LINES = 600


def long_modules(modules: dict[str, Path], limit: int = MAX_MODULE_LINES) -> list[str]:
    """``"<module>: <lines> lines"`` for each of ``modules`` over ``limit`` lines."""
    counts = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in sorted(modules.items())}
    return [f"{name}: {count} lines" for name, count in counts.items() if count > limit]


def test_no_module_is_over_600_lines() -> None:
    assert long_modules(source_modules()) == [], f"over {MAX_MODULE_LINES} lines"


def test_long_module_check_names_the_file_and_its_count(tmp_path: Path) -> None:
    short, long = tmp_path / "short.py", tmp_path / "long.py"
    short.write_text("x = 1\n" * 600)
    long.write_text("x = 1\n" * 601)
    assert long_modules({"pha_lightning.short": short, "pha_lightning.long": long}) == ["pha_lightning.long: 601 lines"]


def test_dependencies_point_one_way() -> None:
    """data and the model never import training or the CLI; training never imports the CLI;
    the foundation imports no package; the data never imports the model."""
    wrong = []
    for name, path in sorted(source_modules().items()):
        layer = layer_of(name)
        if layer == "root":
            continue
        for target in imported_modules(path):
            other = layer_of(target)
            if other not in {layer, "foundation", "root", *ALLOWED[layer]}:  # root: __version__
                wrong.append(f"{name} imports {target} ({layer} → {other})")
    assert not wrong, "\n".join(wrong)


def test_layer_check_sees_a_wrong_import(tmp_path: Path) -> None:
    """The check above can fail: a data module importing the training system is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pha_lightning.training.system import PHAModule\n")
    assert imported_modules(bad) == {"pha_lightning.training.system"}
    assert layer_of("pha_lightning.training.system") not in {"data", "foundation", *ALLOWED["data"]}


#: The data package's modules by level: each imports data modules of lower levels only, so the task
#: abstraction and the schema know nothing of the files, the catalogue sits above every kind of
#: task, and the data module above the catalogue.
DATA_LEVELS: dict[str, int] = {
    **{"tasks": 0, "sampling": 0},
    **{"schema": 1, "examples": 1, "resume": 1, "synthetic": 1},
    **{"readers": 2, "token_cache": 2, "tables": 2},
    **{"benchmark": 3, "spec_task": 3},
    "kinds": 4,
    "catalog": 5,
    "datamodule": 6,
}


def data_level_breaches(modules: dict[str, Path], levels: dict[str, int]) -> list[str]:
    """Imports of a data module from one of its own level or above, and modules without a level."""
    wrong = []
    for name, path in sorted(modules.items()):
        short = name.removeprefix("pha_lightning.data.")
        if name == "pha_lightning.data" or not name.startswith("pha_lightning.data."):
            continue
        if short not in levels:
            wrong.append(f"{name} has no level in DATA_LEVELS")
            continue
        for target in imported_modules(path, modules):
            other = target.removeprefix("pha_lightning.data.")
            if target.startswith("pha_lightning.data.") and levels.get(other, levels[short]) >= levels[short]:
                wrong.append(f"{name} (level {levels[short]}) imports {target} (level {levels.get(other)})")
    return wrong


def test_the_data_package_is_layered() -> None:
    assert data_level_breaches(source_modules(), DATA_LEVELS) == []


def test_data_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    tasks, schema = tmp_path / "tasks.py", tmp_path / "schema.py"
    tasks.write_text("def f():\n    from pha_lightning.data.catalog import get_task\n")
    schema.write_text("from pha_lightning.data.tasks import Task\n")
    modules = {
        "pha_lightning.data.tasks": tasks,
        "pha_lightning.data.schema": schema,
        "pha_lightning.data.catalog": schema,
    }
    assert data_level_breaches(modules, {"tasks": 0, "schema": 1, "catalog": 5}) == [
        "pha_lightning.data.tasks (level 0) imports pha_lightning.data.catalog (level 5)"
    ]


def import_circle(modules: dict[str, Path]) -> list[str]:
    """A circle of imports among ``modules`` (``[a, b, a]``), or ``[]`` when there is none."""
    graph = {name: imported_modules(path, modules) & set(modules) - {name} for name, path in modules.items()}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        return list(err.args[1])
    return []


def test_no_import_circles() -> None:
    """No module imports one that imports it back, directly or through others, even lazily or for
    type hints only: each dependency has a direction, and a circle hides which way it goes."""
    assert import_circle(source_modules()) == []


def test_circle_check_sees_a_circle(tmp_path: Path) -> None:
    """Through a lazy import, a ``TYPE_CHECKING`` one and an ``importlib`` string, from a package."""
    files = {
        "pha_lightning.a": "def f():\n    from pha_lightning import b\n",
        "pha_lightning.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pha_lightning.c import C\n",
        "pha_lightning.c": "import importlib\nimportlib.import_module('pha_lightning.a')\n",
    }
    modules = {}
    for name, text in files.items():
        modules[name] = tmp_path / f"{name}.py"
        modules[name].write_text(text)
    assert sorted(set(import_circle(modules))) == sorted(files)
    modules["pha_lightning.c"].write_text("import importlib\n")
    assert import_circle(modules) == []


MIGRATION = "pha_lightning.formats.migration"
#: Words only an old format has: legacy values, format 1 bundles' ``hyperparameters``, version 1
#: checkpoints' ``portable_task_specs``; and the version fields, which only the migration reads.
OLD_FORMAT_KEYS = ("hyperparameters", "portable_task_specs")
VERSION_FIELDS = ("format_version", "CHECKPOINT_VERSION_KEY")


def old_format_reads(path: Path) -> list[str]:
    """Where a source file mentions an old format's words (outside docstrings and comments) or
    reads a format version (writing one, as a dict key or an assignment target, is fine)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None
    }
    written = {id(key) for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys}
    written |= {
        id(node.slice) for node in ast.walk(tree) if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            text = node.name
        else:
            continue
        if "legacy" in text.lower() or text in OLD_FORMAT_KEYS:
            found.append(f"{path.name}:{node.lineno} mentions {text!r}")
        elif text in VERSION_FIELDS and id(node) not in written:  # imports are ast.alias: not reads
            found.append(f"{path.name}:{node.lineno} reads {text!r}")
    return sorted(found, key=lambda hit: int(hit.split(":")[1].split()[0]))


def test_only_the_migration_module_reads_old_formats() -> None:
    """Checkpoints, bundles and configs of earlier versions are upgraded in one place; the rest of
    the code sees the current format only."""
    found = [
        hit for name, path in sorted(source_modules().items()) if name != MIGRATION for hit in old_format_reads(path)
    ]
    assert not found, "\n".join(found)


def test_old_format_check_sees_a_reader(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        'def f(record, checkpoint):\n    """Mentions legacy in a docstring: fine."""\n'
        '    record["format_version"] = 2\n    out = {"format_version": 2}\n'
        '    if record["format_version"] == 1:\n        return record.pop("hyperparameters")\n'
        "    return LEGACY_SETTINGS\n"
    )
    assert old_format_reads(bad) == [
        "bad.py:5 reads 'format_version'",
        "bad.py:6 mentions 'hyperparameters'",
        "bad.py:7 mentions 'LEGACY_SETTINGS'",
    ]


@pytest.mark.slow
def test_model_package_does_not_import_lightning() -> None:
    """Nor do the formats the model calls, nor the exports' view of the model."""
    code = (
        "import sys\n"
        "import pha_lightning.model, pha_lightning.model.exports, pha_lightning.data.tasks, pha_lightning.data.examples\n"
        "import pha_lightning.formats.checkpoint, pha_lightning.formats.bundle, pha_lightning.formats.peft\n"
        "import pha_lightning.formats.adapterhub, pha_lightning.formats.migration\n"
        "from pha_lightning import PHAModel, PHAConfig\n"
        "from pha_lightning.routing import Router\n"
        "print([m for m in sys.modules if m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning'))])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.slow
def test_plain_pytorch_model_saves_and_loads_its_architecture_alone(tmp_path: Path) -> None:
    """Built, saved and reloaded without Lightning (in a fresh interpreter): the bundle's config
    is the PHAConfig, and the reloaded model predicts exactly the same."""
    code = f"""
import json, sys, torch
from pha_lightning import PHAConfig, PHAModel
torch.manual_seed(0)
model = PHAModel(PHAConfig(tasks=["synth_polarity", "synth_score"], adapter_dim=16)).eval()
with torch.no_grad():
    model.prototypes.weight.add_(1.0)  # not the init: the weights must come from the bundle
path = model.save_pretrained({str(tmp_path / "bundle")!r})
again = PHAModel.from_pretrained(path)
examples = [{{"task": "synth_polarity", "sentence": "a lovely red cat"}}, {{"task": "synth_score", "sentence": "three nice dogs"}}]
print(json.dumps({{"same": model.predict(examples) == again.predict(examples),
                  "lightning": any(m.startswith("lightning") for m in sys.modules)}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"same": True, "lightning": False}
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["format_version"] == 3 and config["config"]["adapter_dim"] == 16
    assert not {"learning_rate", "warmup_steps", "lambda_ir", "hyperparameters"} & (set(config) | set(config["config"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"hypernet_calibration": "wide"}, "unknown model.arch.hypernet_calibration 'wide'; valid: ['width', 'none']"),
        ({"adapter_dim": 0}, "model.arch.adapter_dim"),
        ({"tasks": []}, "needs at least one task"),
    ],
)
def test_config_rejects_bad_values_by_name(override: dict, message: str) -> None:
    from pha_lightning.errors import ConfigError
    from pha_lightning.model.config import PHAConfig

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        PHAConfig(**{"tasks": ["synth_polarity"], **override})
