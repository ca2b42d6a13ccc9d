"""The shared base of the callbacks that watch the retriever during validation."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor


class ValidationRetrievalListener(Callback):
    """Base of the callbacks that read the retriever's output ``z`` during validation.

    Forward hooks are registered for the validation loop only (no extra forward pass):
    :meth:`on_retrieval` sees each batch's ``z``, in batch order, with the batch. A chunked forward
    (``model.arch.chunk_cost_tokens``) calls the retriever once per length-sorted chunk, so ``z`` is
    read from the model's merged output; paths that do not return it (T5 generation) call the
    retriever once on the whole batch. Models without a retriever or prototypes are skipped.
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._z: Tensor | None = None
        self._retriever_calls: list[Tensor] = []

    @staticmethod
    def _applies(pl_module: LightningModule) -> bool:
        return pl_module.model.retriever is not None and pl_module.model.prototypes is not None

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.reset()
        if self._applies(pl_module) and not self._handles:
            self._handles = [
                pl_module.model.register_forward_hook(self._capture_model),
                pl_module.model.retriever.register_forward_hook(self._capture_retriever),
            ]

    def _capture_model(self, _module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, dict) and output.get("z") is not None:
            self._z = output["z"].detach()

    def _capture_retriever(self, _module: Any, _inputs: Any, output: Tensor) -> None:
        self._retriever_calls.append(output.detach())

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._z, self._retriever_calls = None, []

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        z = self._z if self._z is not None else self._retriever_calls[0] if len(self._retriever_calls) == 1 else None
        if z is not None and z.shape[0] == len(batch["task_ids"]):
            self.on_retrieval(pl_module, z.float(), batch["task_ids"])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._applies(pl_module) and not trainer.sanity_checking:
            self.report(trainer, pl_module)

    def reset(self) -> None:
        """Forget the previous validation's observations."""

    def on_retrieval(self, pl_module: LightningModule, z: Tensor, task_ids: Tensor) -> None:
        """One validation batch's retrieval vectors and task ids."""

    def report(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log what was observed over the validation epoch."""
