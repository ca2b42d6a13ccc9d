"""Saved weights as plain state dicts: do they fit a model, are they complete, under which names.

Checkpoints, bundles and routers hold only the trainable weights; every reader checks them with
the same two functions before loading them with ``strict=False``, so that a weight of another
model is refused and one left out does not silently keep its initial value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from pha_lightning.errors import ConfigError, PHAError


def check_state_fits(state: Mapping[str, Tensor], model_state: Mapping[str, Tensor], source: str) -> None:
    """Every saved weight must exist in the model with the same shape (another backbone would not fit)."""
    unexpected = sorted(set(state) - set(model_state))
    if unexpected:
        raise ConfigError(f"{source} holds {len(unexpected)} weights this model does not have, e.g. {unexpected[:3]}")
    wrong = [
        (k, tuple(v.shape), tuple(model_state[k].shape)) for k, v in state.items() if v.shape != model_state[k].shape
    ]
    if wrong:
        key, have, want = wrong[0]
        raise ConfigError(
            f"{source} does not fit this model: {len(wrong)} weights have other shapes, e.g. {key} is {have} "
            f"there and {want} here (trained on another backbone or architecture?)"
        )


def check_state_complete(
    state: Mapping[str, Tensor], wanted: Iterable[str], source: str, error: type[PHAError] = ConfigError
) -> None:
    """Every weight the model saves must be there: one left out would silently keep its initial value."""
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise error(f"{source} lacks {len(missing)} weights of this model, e.g. {missing[:3]}")


def merge_added_rows(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """``state`` with the prototype rows of tasks added by few-shot transfer (``prototypes.added``, in
    front) merged into ``prototypes.weight``: the weights of the plain model over every task."""
    state = dict(state)
    added, table = f"{prefix}prototypes.added", f"{prefix}prototypes.weight"
    if added in state:
        state[table] = torch.cat([state.pop(added), state[table]])
    return state


def model_state(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint's weights under the model's own names (the system keeps its model under ``model.``)."""
    return {key.removeprefix("model."): value for key, value in state_dict.items()}
