"""``pha fit`` checkpoints as plain dicts: read safely, upgraded, and seen as the model they serve.

:func:`read_checkpoint` is the one way a checkpoint file is read: ``weights_only=True`` (no
arbitrary unpickling), a missing, truncated, corrupt or foreign file is one
:class:`~pha_lightning.errors.PHAError` naming it, and a checkpoint of an earlier version is upgraded
(:mod:`~pha_lightning.formats.migration`). A few-shot transfer checkpoint records the architecture
its model was built with (:data:`SERVED_ARCH_KEY`), so that it serves without its source checkpoint
(:func:`served_hyper_parameters`, :func:`as_served`). Whether a checkpoint fits the configuration
asked for is the training side's question (:mod:`pha_lightning.training.checkpoints`).
"""

from __future__ import annotations

from typing import Any

import torch

from pha_lightning.errors import PHAError
from pha_lightning.formats.migration import upgrade_checkpoint
from pha_lightning.formats.state import merge_added_rows
from pha_lightning.validation import weights_only_failure

#: A few-shot transfer checkpoint's record of its model's architecture as built: the new tasks in front
#: of the source's (:meth:`~pha_lightning.model.PHAModel.add_tasks`), which the hyperparameters lack.
SERVED_ARCH_KEY = "pha_served_arch"


def read_checkpoint(path: str) -> dict:
    """Load a PHA checkpoint without unpickling arbitrary objects; a bad file is a clear error."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PHAError(f"checkpoint {path!r} does not exist") from None
    except Exception as err:  # truncated, corrupt, or not a checkpoint at all
        failure = weights_only_failure(err)
        if failure is not None:
            raise PHAError(
                f"checkpoint {path!r} {failure}; pha loads checkpoints as tensors and plain values only: "
                "use a checkpoint written by pha fit, or a bundle (pha export, safetensors)"
            ) from None
        raise PHAError(f"checkpoint {path!r} cannot be read ({type(err).__name__}: {err})") from None
    if "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise PHAError(f"{path!r} is not a pha checkpoint (no state_dict / hyper_parameters)")
    return upgrade_checkpoint(checkpoint, f"checkpoint {path!r}")


def served_hyper_parameters(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters of the plain model a few-shot transfer checkpoint holds: the architecture
    it recorded as built (its new tasks in front of its source's, :data:`SERVED_ARCH_KEY`) and no
    transfer, so that it serves without its source checkpoint. Other checkpoints: their own."""
    hyper_parameters = checkpoint["hyper_parameters"]
    if not hyper_parameters.get("transfer") or SERVED_ARCH_KEY not in checkpoint:
        return hyper_parameters
    return {**hyper_parameters, "arch": checkpoint[SERVED_ARCH_KEY], "transfer": None}


def as_served(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A few-shot transfer checkpoint, in place, as the plain model it holds (:func:`served_hyper_parameters`,
    the new tasks' prototype rows merged into the table); other checkpoints are left as they are."""
    served = served_hyper_parameters(checkpoint)
    if served is not checkpoint["hyper_parameters"]:
        checkpoint["hyper_parameters"] = served
        if "state_dict" in checkpoint:  # a sharded checkpoint's weights are loaded by its strategy
            checkpoint["state_dict"] = merge_added_rows(checkpoint["state_dict"], "model.")
    return checkpoint
