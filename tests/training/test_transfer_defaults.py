"""The transfer defaults are the ones the docs state (results/transfer_defaults chose them)."""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from pha_lightning.training.transfer import TransferConfig

ROOT = Path(__file__).resolve().parents[2]
#: a default stated as the configuration docs state one: "`model.transfer.tune: hypernetwork` (default"
STATED = re.compile(r"`model\.transfer\.(\w+): (\w+)` \(default")


def stated_defaults(doc: str) -> dict[str, str]:
    return dict(STATED.findall((ROOT / "docs" / doc).read_text()))


@pytest.mark.parametrize("name", ["init", "tune"])
def test_the_usage_docs_state_each_transfer_default(name: str) -> None:
    default = {f.name: f.default for f in fields(TransferConfig)}[name]
    assert stated_defaults("usage.md").get(name) == default, (
        f"docs/usage.md must state `model.transfer.{name}: {default}` (default …); it states "
        f"{stated_defaults('usage.md')}"
    )


def test_the_transfer_benchmark_measures_the_products_default() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from few_shot_transfer import parse_args
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert parse_args([]).tune == TransferConfig("source.ckpt").tune


def test_a_distant_nearest_source_gets_advice_a_close_one_none() -> None:
    from pha_lightning.training.transfer import CLOSE_SOURCE_SCORE, distant_source_advice

    rankings = {"debian_sections": [("cr", 0.766), ("sst2", 0.456)], "trec_fine": [("trec_coarse", 0.981)]}
    advice = distant_source_advice(rankings, "top1")
    assert advice is not None and "debian_sections (nearest cr +0.766)" in advice and "trec_fine" not in advice
    assert f"score < {CLOSE_SOURCE_SCORE}" in advice and "--model.transfer.init random" in advice
    assert distant_source_advice({"trec_fine": [("trec_coarse", 0.981)]}, "top1") is None
    assert distant_source_advice(rankings, "random") is None  # nothing retrieved, nothing to advise
