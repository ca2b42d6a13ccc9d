"""FSDP2 sharding of a :class:`~pha_lightning.model.PHAModel`, one unit per transformer block.

Every backbone block is its own ``fully_shard`` unit (gathered for its forward, freed after it);
the model itself is the root unit and holds the rest: embeddings, final norms, the LM head and
PHA's trainable parts. FSDP2 shards each parameter separately, so frozen weights get no gradient
and trainable ones sit beside them in the same unit. Code that reads weights outside the model's
forward (evaluation, generation, probes, transfer) runs inside :func:`gathered`.
docs/production.md, "Big backbones", explains the choices.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from pha_lightning.model.backbone import backbone_blocks


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` is an FSDP2 unit (:func:`shard_model` made it the root)."""
    return isinstance(module, FSDPModule)


def shard_model(model: nn.Module, mesh: DeviceMesh) -> None:
    """Shard ``model`` over every rank of ``mesh`` (idempotent): PHA has no tensor-parallel layers,
    so whatever data/tensor split the mesh has, parameters are sharded across all of its ranks."""
    if is_sharded(model):
        return
    flat = mesh if mesh.ndim == 1 else init_device_mesh(mesh.device_type, (mesh.size(),))
    for block in backbone_blocks(model.backbone, model.family):
        fully_shard(block, mesh=flat)
    # the root keeps its weights gathered from forward to backward: the heads and the contrastive
    # losses read them after the forward returns
    fully_shard(model, mesh=flat, reshard_after_forward=False)


def full_tensor(value: Tensor) -> Tensor:
    """The whole tensor of a shard (a collective: every rank must ask), or ``value`` itself."""
    return value.full_tensor() if isinstance(value, DTensor) else value


@contextmanager
def gathered(model: nn.Module, write_back: bool = False) -> Iterator[None]:
    """The root unit's whole weights, for code that reads them outside the model's forward (a
    collective: every rank must enter). FSDP2 frees the gathered copy on leaving, so with
    ``write_back`` what the code wrote into those weights is copied into the shards. A model that
    is not sharded is left as it is."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    written: dict[str, Tensor] = {}
    try:
        yield
        if write_back:
            written = {n: p.detach().clone() for n, p in model.named_parameters() if not isinstance(p, DTensor)}
    finally:
        model.reshard()
    if written:
        # imported here: torch's distributed checkpointing costs ≈ 50 ms at every start, and only this needs it
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, written, options=StateDictOptions(full_state_dict=True, strict=False))
