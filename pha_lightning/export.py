"""Portable adapter bundles: ``pha export`` and :meth:`PHAModel.from_pretrained`.

    pha export --ckpt_path runs/demo/.../checkpoints/last.ckpt --output_dir bundles/demo [--precompute_adapters]

A bundle is a small directory that serves a trained model without the training code's
checkpoint (and without any pickle):

* ``config.json`` — format and library versions; the backbone (name, the path it resolved to,
  revision when known, family, and its architecture, checked when the bundle is loaded); the
  method; every task with its label space and metrics; every model hyperparameter; the data
  settings that shape inputs (``max_source_length`` …); the validation metrics at export; and
  the SHA-256 of every weights file.
* ``adapter_model.safetensors`` — the PHA weights only (adapters, retriever, prototypes,
  hypernetwork, task heads; the backbone too only for ``finetune``): for t5-base about 31 MB
  (7.77 M float32 parameters), not the ~900 MB model.
* ``generated_adapters.safetensors`` (``--precompute_adapters``, methods with prototypes) —
  every task's generated adapter weights, so serving does not run the hypernetwork.

:class:`PHAModel` (``from pha_lightning import PHAModel``) rebuilds the frozen backbone from its
name, loads the bundle with ``safetensors`` and predicts exactly what the checkpoint predicts.
A model trained by few-shot transfer is exported as one plain model over its new and source
tasks, so its bundle does not need the source checkpoint. The bundle is written into a
temporary directory beside ``output_dir`` and renamed into place: nothing is ever half-written.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

import pha_lightning
from pha_lightning.adapters import WeightSet, stack_groups
from pha_lightning.backbone import PACKAGED_BACKBONES, backbone_family, load_backbone_config, resolve_backbone_path
from pha_lightning.checkpoints import backbone_fingerprint, check_state_fits, read_checkpoint
from pha_lightning.datamodule import Collator
from pha_lightning.errors import ConfigError, PHAError
from pha_lightning.module import PHAModule
from pha_lightning.predict import encode_examples, predict_loader, predict_rows
from pha_lightning.tasks import Task, get_task
from pha_lightning.transfer import with_legacy_settings
from pha_lightning.validation import ensure_writable_dir

BUNDLE_FORMAT = "pha-adapter-bundle"
BUNDLE_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTERS_NAME = "generated_adapters.safetensors"
#: Checkpoint hyperparameters that are not constructor arguments of a bundle's model.
NOT_MODEL_ARGS = ("_instantiator", "_class_path", "transfer")


class BundleError(PHAError):
    """A bundle directory is missing, incomplete, corrupt, or of an unknown format."""


# ---------------------------------------------------------------------------------------- writing
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def task_spec(task: Task) -> dict[str, Any]:
    return {
        "name": task.name,
        "label_names": list(task.label_names),
        "is_regression": task.is_regression,
        "metrics": list(task.metric_names),
        "target_range": list(task.target_range) if task.target_range else None,
    }


def backbone_record(name: str, init: str) -> dict[str, Any]:
    """How to rebuild the frozen backbone: name, resolved path, revision, family, architecture."""
    resolved = resolve_backbone_path(name)
    revision = getattr(load_backbone_config(name), "_commit_hash", None)
    if name in PACKAGED_BACKBONES:  # the model ships in a package: its version is the revision
        package = PACKAGED_BACKBONES[name][1].split("==")[0]
        try:
            revision = f"{package}=={importlib.metadata.version(package)}"
        except importlib.metadata.PackageNotFoundError:
            revision = PACKAGED_BACKBONES[name][1]
    return {
        "name": name,
        "resolved_path": resolved,
        "revision": revision,
        "family": backbone_family(name),
        "init": init,
        "architecture": backbone_fingerprint(name),
    }


def flatten_transfer(hparams: dict[str, Any], state: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor], dict | None]:
    """A transfer model as one plain model over its new tasks followed by its source tasks.

    Inside a transfer model the new tasks' prototype rows live in ``prototypes.added`` and the
    source rows in ``prototypes.weight`` (task order: new, then source); task heads are already in
    that order. Returns the plain hyperparameters, weights, and a record of the transfer.
    """
    transfer = hparams.get("transfer")
    if not transfer:
        return hparams, state, None
    source = read_checkpoint(transfer["checkpoint"])
    hparams = {**hparams, "tasks": [*hparams["tasks"], *source["hyper_parameters"]["tasks"]], "transfer": None}
    state = dict(state)
    if "prototypes.added" in state:
        state["prototypes.weight"] = torch.cat([state.pop("prototypes.added"), state["prototypes.weight"]])
    return hparams, state, transfer


def precompute_adapters(model: PHAModule) -> dict[str, Tensor]:
    """Every task's generated adapter weights, exactly as evaluation generates them (one task at a time)."""
    if model.hypernetwork is None or model.prototypes is None:
        raise ConfigError(f"method {model.hparams.method!r} generates no adapters from prototypes; nothing to precompute")
    tasks = torch.arange(len(model.task_objects), device=model.device)
    with torch.no_grad():
        table = stack_groups([model.generated_weights(task[None]) for task in tasks], tasks)
    return {f"generated.{name}": part.contiguous().cpu() for name, part in table.parts().items()}


def write_bundle(
    output_dir: str | os.PathLike,
    hparams: Mapping[str, Any],
    state: Mapping[str, Tensor],
    *,
    data: Mapping[str, Any] | None = None,
    precomputed: Mapping[str, Tensor] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle atomically: everything goes to a temporary sibling directory, renamed at the end."""
    output_dir = Path(output_dir).expanduser().absolute()
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {str(output_dir)!r} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConfigError(f"output_dir {str(output_dir)!r} is not empty; pass --overwrite to replace it")
    if hparams.get("backbone_init") == "random":
        raise ConfigError(
            "this model's frozen backbone was built at random init (backbone_init='random'); its weights are in "
            "no checkpoint or bundle, so the model cannot be rebuilt elsewhere: bundles need a pretrained backbone"
        )
    parent = ensure_writable_dir(output_dir.parent, "the parent of output_dir")
    model_hparams = {k: v for k, v in hparams.items() if k not in NOT_MODEL_ARGS}
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{output_dir.name}.tmp-"))
    try:
        weights = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "pha_bundle": str(BUNDLE_VERSION)})
        files = {WEIGHTS_NAME: _sha256(tmp / WEIGHTS_NAME)}
        if precomputed:
            save_file(dict(precomputed), str(tmp / ADAPTERS_NAME), metadata={"format": "pt", "pha_bundle": str(BUNDLE_VERSION)})
            files[ADAPTERS_NAME] = _sha256(tmp / ADAPTERS_NAME)
        config = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "library": "pha-lightning",
            "library_version": pha_lightning.__version__,
            "torch_version": torch.__version__,
            "transformers_version": importlib.metadata.version("transformers"),
            "backbone": backbone_record(model_hparams["backbone"], model_hparams.get("backbone_init", "pretrained")),
            "method": model_hparams.get("method", "pha"),
            "tasks": [task_spec(get_task(name)) for name in model_hparams["tasks"]],
            "hyperparameters": model_hparams,
            "data": {k: v for k, v in (data or {}).items() if k not in NOT_MODEL_ARGS},
            "num_parameters": sum(v.numel() for v in weights.values()),
            "files": files,
            **(extra or {}),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=False, default=str) + "\n")
        _public_permissions(tmp)
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{output_dir.name}.old-"))
            os.replace(output_dir, old / "bundle")
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def _public_permissions(directory: Path) -> None:
    """mkdtemp makes a private (0700) directory: give the bundle the usual permissions under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def export_checkpoint(
    ckpt_path: str | os.PathLike, output_dir: str | os.PathLike, *, precompute: bool = False, overwrite: bool = False
) -> Path:
    """Write the bundle of a training checkpoint (see the module docstring)."""
    ckpt_path = str(ckpt_path)
    checkpoint = read_checkpoint(ckpt_path)
    hparams, state, transfer = flatten_transfer(dict(checkpoint["hyper_parameters"]), dict(checkpoint["state_dict"]))
    precomputed = None
    if precompute:
        model = _build_model(hparams, state)
        precomputed = precompute_adapters(model)
    extra = {
        "source_checkpoint": {
            "path": os.path.abspath(ckpt_path),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
        },
        "val_metrics": checkpoint.get("pha_val_metrics", {}),
        "transfer": transfer,
    }
    return write_bundle(
        output_dir,
        hparams,
        state,
        data=checkpoint.get("datamodule_hyper_parameters"),
        precomputed=precomputed,
        extra=extra,
        overwrite=overwrite,
    )


def _build_model(hparams: Mapping[str, Any], state: Mapping[str, Tensor]) -> PHAModule:
    """The trained model (backbone rebuilt from its name), to generate adapters exactly as serving would."""
    model = PHAModule(**{k: v for k, v in hparams.items() if k not in NOT_MODEL_ARGS})
    check_state_fits(state, model.state_dict(), "the checkpoint")
    model.load_state_dict(dict(state), strict=False)
    return model.eval()


# ---------------------------------------------------------------------------------------- reading
def read_bundle_config(path: str | os.PathLike) -> dict[str, Any]:
    """The bundle's ``config.json``, checked for format and completeness."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {str(path)!r} does not exist or is not a directory")
    config_path = path / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"bundle {str(path)!r} has no {CONFIG_NAME}: not a pha bundle, or not completely copied") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{config_path} cannot be read: {err}") from None
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{config_path} is not a pha adapter bundle config (format {config.get('format') if isinstance(config, dict) else None!r})")
    if not isinstance(config.get("format_version"), int) or config["format_version"] > BUNDLE_VERSION:
        raise BundleError(
            f"{config_path} has format_version {config.get('format_version')!r}; this pha-lightning "
            f"{pha_lightning.__version__} reads versions up to {BUNDLE_VERSION}"
        )
    missing = [key for key in ("backbone", "hyperparameters", "tasks", "files") if key not in config]
    if missing:
        raise BundleError(f"{config_path} lacks {missing}")
    config["hyperparameters"] = with_legacy_settings(config["hyperparameters"])
    return config


def _read_tensors(path: Path, expected_sha256: str | None) -> dict[str, Tensor]:
    if not path.is_file():
        raise BundleError(f"bundle file {path} is missing")
    if expected_sha256 is not None and _sha256(path) != expected_sha256:
        raise BundleError(f"bundle file {path} is corrupt or truncated (its SHA-256 differs from the one in {CONFIG_NAME})")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise BundleError(f"bundle file {path} cannot be read: {err}") from None


def read_bundle_weights(path: str | os.PathLike, config: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """The PHA weights of a bundle (checked against the SHA-256 its config records)."""
    config = read_bundle_config(path) if config is None else config
    return _read_tensors(Path(path) / WEIGHTS_NAME, config["files"].get(WEIGHTS_NAME))


def is_bundle(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).is_dir() and (Path(path) / CONFIG_NAME).exists()


def load_bundle_into(model: PHAModule, path: str | os.PathLike, config: Mapping[str, Any] | None = None) -> None:
    """Load a bundle's weights into an already built model (the ``pha`` command does this)."""
    config = read_bundle_config(path) if config is None else config
    state = read_bundle_weights(path, config)
    source = f"bundle {str(path)!r}"
    check_state_fits(state, model.state_dict(), source)
    missing = sorted(model.saved_state_keys() - set(state))
    if missing:
        raise BundleError(f"{source} lacks {len(missing)} weights of this model, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=False)


class PHAModel(PHAModule):
    """A trained PHA model for inference, restored from a bundle.

        from pha_lightning import PHAModel
        model = PHAModel.from_pretrained("bundles/demo")
        model.predict([{"task": "synth_polarity", "sentence": "the red cat was lovely"}, {"sentence": "..."}])
    """

    #: the bundle's config.json once loaded
    bundle_config: dict[str, Any] | None = None
    #: precomputed generated adapters ``generated.<part>`` of shape (tasks, layers, …), if in use
    generated_table: dict[str, Tensor] | None = None
    #: one task's generated weights: the kind (and part names) the table is served as
    generated_kind: WeightSet | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        backbone: str | None = None,
        use_precomputed_adapters: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> PHAModel:
        """Rebuild the frozen backbone and load a bundle (safetensors only: nothing is unpickled).

        ``backbone`` replaces the recorded backbone name (e.g. a local copy of the same model);
        it must have the architecture the bundle was trained on. Precomputed adapters, when the
        bundle has them, replace the hypernetwork at inference unless ``use_precomputed_adapters``
        is false.
        """
        config = read_bundle_config(path)
        hparams = {k: v for k, v in config["hyperparameters"].items() if k not in NOT_MODEL_ARGS}
        recorded = config["backbone"]
        name = backbone or hparams["backbone"]
        found = backbone_fingerprint(name)
        if found is None:
            raise ConfigError(
                f"the backbone {name!r} of bundle {str(path)!r} cannot be found here"
                + ("" if backbone else f" (trained on {recorded.get('resolved_path')!r}); pass backbone=<a local copy of it>")
            )
        if recorded.get("architecture") and found != recorded["architecture"]:
            raise ConfigError(
                f"backbone {name!r} is not the model bundle {str(path)!r} was trained on: its architecture "
                f"{found} differs from the recorded {recorded['architecture']}"
            )
        hparams["backbone"] = name
        model = cls(**hparams)
        load_bundle_into(model, path, config)
        model.bundle_config = config
        if use_precomputed_adapters and ADAPTERS_NAME in config["files"]:
            table = _read_tensors(Path(path) / ADAPTERS_NAME, config["files"][ADAPTERS_NAME])
            model.use_generated_table(table)
        return model.eval().to(map_location)

    def use_generated_table(self, table: Mapping[str, Tensor] | None) -> None:
        """Serve generated adapters from ``table`` (see :func:`precompute_adapters`) instead of the hypernetwork."""
        if table is not None:
            with torch.no_grad():  # one task's weights: what the table must hold, and of which kind
                self.generated_kind = super().generated_weights(torch.zeros(1, dtype=torch.long, device=self.device))
            expected = {f"generated.{name}" for name in self.generated_kind.parts()}
            if set(table) != expected or any(len(part) != len(self.task_objects) for part in table.values()):
                raise BundleError(f"precomputed adapters hold {sorted(table)} for the wrong tasks or parts; expected {sorted(expected)}")
        self.generated_table = dict(table) if table is not None else None

    def generated_weights(self, task_ids: Tensor) -> WeightSet:
        if self.generated_table is None or torch.is_grad_enabled() or self.training:
            return super().generated_weights(task_ids)
        tasks, group_of = torch.unique(task_ids, return_inverse=True)
        names = self.generated_kind.parts()
        parts = {name: self.generated_table[f"generated.{name}"].to(task_ids.device).index_select(0, tasks) for name in names}
        return self.generated_kind.with_parts(parts, group_of)

    def save_pretrained(self, output_dir: str | os.PathLike, *, precompute: bool = False, overwrite: bool = False) -> Path:
        """Write this model's bundle (its data settings come from the bundle it was loaded from, if any)."""
        hparams = dict(self.hparams)
        if hparams.get("transfer"):
            raise ConfigError("export a transfer model from its checkpoint (pha export), which flattens its tasks")
        state = {k: v for k, v in self.state_dict().items() if k in self.saved_state_keys()}
        data = (self.bundle_config or {}).get("data", {})
        precomputed = precompute_adapters(self) if precompute else None
        return write_bundle(output_dir, hparams, state, data=data, precomputed=precomputed, overwrite=overwrite)

    @torch.no_grad()
    def predict(self, examples: Iterable[Mapping[str, Any]], batch_size: int = 32) -> list[dict[str, Any]]:
        """Predict raw examples (dicts as in a ``pha predict`` JSONL file); rows come back in input order."""
        rows = [(number, dict(example)) for number, example in enumerate(examples, start=1)]
        if not rows:
            return []
        data = (self.bundle_config or {}).get("data", {})
        tokenizer = self.tokenizer
        encoded = encode_examples(
            rows, self.task_objects, self.family, tokenizer, int(data.get("max_source_length") or 128), source="example"
        )
        collator = Collator(tokenizer.pad_token_id, tokenizer.pad_token_type_id, tokenizer.padding_side)
        was_training = self.training
        self.eval()
        out: list[dict[str, Any]] = []
        try:
            for batch in predict_loader(encoded, collator, batch_size):
                batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                out.extend(predict_rows(self, batch))
        finally:
            self.train(was_training)
        return sorted(out, key=lambda row: row["index"])


# ---------------------------------------------------------------------------------------- command
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pha export",
        description="Write a portable adapter bundle (config.json + adapter_model.safetensors) from a checkpoint.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by pha fit")
    parser.add_argument("--output_dir", required=True, help="the bundle directory to create")
    parser.add_argument(
        "--precompute_adapters",
        action="store_true",
        help="also store every task's generated adapters (generated_adapters.safetensors): serving skips the hypernetwork",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace output_dir if it exists and is not empty")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path = export_checkpoint(args.ckpt_path, args.output_dir, precompute=args.precompute_adapters, overwrite=args.overwrite)
    sizes = {p.name: p.stat().st_size for p in sorted(path.iterdir())}
    print(f"wrote bundle {path}: " + ", ".join(f"{name} ({size / 1e6:.2f} MB)" for name, size in sizes.items()), flush=True)


if __name__ == "__main__":
    main()
