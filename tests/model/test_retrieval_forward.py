"""The retrieval forward runs the blocks up to the retrieval point only, and gives the ``z`` of a full pass."""

from __future__ import annotations

import pytest
import torch

from pha_lightning import PHAConfig, PHAModel

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
