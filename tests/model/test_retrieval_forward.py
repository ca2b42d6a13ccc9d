"""The retrieval forward runs the blocks up to the retrieval point only, and gives the ``z`` of a full pass."""

from __future__ import annotations

import pytest
import torch

from pha_lightning import PHAConfig, PHAModel
from pha_lightning.errors import ConfigError
from pha_lightning.model.prediction import example_batches, predict_rows

TASKS = ["synth_polarity", "synth_match"]


@pytest.mark.parametrize("adapter_kind", ["bottleneck", "lora"])
def test_retrieval_forward_stops_at_the_retrieval_point_with_the_full_passs_z(
    tiny_bert: str, adapter_kind: str
) -> None:
    torch.manual_seed(0)
    model = PHAModel(
        PHAConfig(backbone=tiny_bert, backbone_init="random", tasks=TASKS, adapter_kind=adapter_kind, split_layer=2)
    ).eval()
    ran = []
    for index, block in enumerate(model.backbone.encoder.layer):
        block.register_forward_pre_hook(lambda *_, index=index: ran.append(index))
    tokens = model.tokenizer(["a red cat near the park", "two dogs"], padding=True, return_tensors="pt")
    batch = {**tokens, "task_ids": torch.tensor([0, 1])}
    with torch.no_grad():
        full = model(batch)
        assert ran == [0, 1, 2, 3]
        ran.clear()
        z = model.retrieval_forward(batch)
    assert ran == [0, 1]  # blocks 2 and 3, above the retrieval point, do not run
    torch.testing.assert_close(z, full["z"])
    with torch.no_grad():
        ran.clear()
        assert torch.equal(model(batch)["pooled"], full["pooled"])  # the next full pass is whole again
    assert ran == [0, 1, 2, 3]


EXAMPLES = [
    {"task": "synth_polarity", "sentence": "a red cat near the park"},
    {"sentence": "two dogs"},
    {"task": "synth_match", "sentence1": "i have a cat at the beach near the old house", "sentence2": "you have a dog"},
    {"sentence1": "a green bus at the beach", "sentence2": "a poor truck"},
]


def predicted_alike(model: PHAModel, rows_seen: list[int]) -> list[int]:
    """Predict :data:`EXAMPLES` in one batch; every row must be what it is when predicted alone.
    Returns the rows each call of the first block saw in the batch's prediction."""
    batch = next(example_batches(model, EXAMPLES, 4, None))
    together = sorted(predict_rows(model, batch), key=lambda row: row["index"])  # batches run sorted by length
    seen = list(rows_seen)
    for example, row in zip(EXAMPLES, together):
        alone = predict_rows(model, next(example_batches(model, [example], 1, None)))[0]
        assert {**row, "index": 0, "line": 1, "task_similarity": 0} == {**alone, "task_similarity": 0}
        assert row.get("task_similarity", 0) == pytest.approx(alone.get("task_similarity", 0), abs=1e-5)
    assert [row["routed"] for row in together] == [False, True, False, True]
    return seen


@pytest.mark.parametrize("chunk_cost_tokens", [None, 0])
def test_pha_routes_at_the_retrieval_point_of_the_one_pass(tiny_bert: str, chunk_cost_tokens: int | None) -> None:
    """The blocks below the retrieval point run once per row, named or not, whole batch or in
    length-sorted chunks (each chunk routes its own rows), and every row is what it is alone."""
    torch.manual_seed(0)
    config = PHAConfig(
        backbone=tiny_bert, backbone_init="random", tasks=TASKS, split_layer=2, chunk_cost_tokens=chunk_cost_tokens
    )
    model = PHAModel(config).eval()
    rows_seen: list[int] = []
    model.backbone.encoder.layer[0].register_forward_pre_hook(lambda _, args: rows_seen.append(len(args[0])))
    seen = predicted_alike(model, rows_seen)
    assert sum(seen) == 4 and (len(seen) == 1 if chunk_cost_tokens is None else len(seen) > 1)


def test_t5_runs_the_retrieval_pass_on_the_rows_that_name_no_task_only(tiny_t5: str) -> None:
    """T5 (routing before generation): the encoder sees the unnamed rows, then every row."""
    torch.manual_seed(0)
    model = PHAModel(PHAConfig(backbone=tiny_t5, backbone_init="random", tasks=TASKS, chunk_cost_tokens=None)).eval()
    rows_seen: list[int] = []
    model.backbone.encoder.block[0].register_forward_pre_hook(lambda _, args: rows_seen.append(len(args[0])))
    assert predicted_alike(model, rows_seen) == [2, 4]


def test_choosing_tasks_mid_pass_is_refused_where_the_lower_blocks_depend_on_the_task(tiny_bert: str) -> None:
    model = PHAModel(PHAConfig(backbone=tiny_bert, backbone_init="random", tasks=TASKS, method="hyperformer")).eval()
    assert not model.chooses_tasks_in_pass
    tokens = model.tokenizer(["two dogs"], return_tensors="pt")
    with pytest.raises(ConfigError, match="method 'hyperformer' on a encoder backbone cannot choose tasks"):
        model({**tokens, "task_ids": torch.tensor([-1])}, choose=lambda z, rows, features: rows["task_ids"])
