"""Callbacks for production runs; the ``pha`` command adds the first six to every Trainer.

* :class:`StepSeed` — dropout randomness as a function of (seed, epoch, batch, rank), so a run
  resumed from any checkpoint draws exactly the masks an uninterrupted run draws.
* :class:`NonFiniteGuard` — stops at the first NaN/inf loss (or weight) with the step and every
  loss term, before the optimizer step and before any checkpoint of the bad state is written.
* :class:`Throughput` — examples/s and tokens/s of training, summed over ranks.
* :class:`RetrieverTaskAccuracy` — on validation, how often the nearest prototype (cosine of the
  normalised retrieval vector ``z`` with the normalised prototypes) is the example's own task.
* :class:`RetrievalProjector` — validation retrieval vectors and prototypes in TensorBoard's
  embedding projector, coloured by task.
* :class:`TrainingHealth` — after each validation and at the end of ``fit``: adapter/residual
  ratios, adapter norms, prototype shift and feature collapse (:mod:`pha_lightning.training.health`), logged
  to TensorBoard, printed at the end and written to ``<log_dir>/health.json``, with warnings.
* :class:`FinalValidation` — validates after the last step of a run in which no validation ran
  (shorter than ``val_check_interval``), so there is a best checkpoint to test.
* :class:`LatestCheckpoint` — the ``checkpoint`` callback: ``last.ckpt`` rewritten after every
  validation, so an interrupted run resumes from its latest state, not from its best one.
* :class:`JSONLPredictionWriter` — ``pha predict``: every prediction row, written once in input order.
* :class:`RecordTrainingExamples` — debugging: each rank writes which examples it trained on and
  its local loss, one JSON line per batch (the DDP test uses it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.nn import functional as F

from pha_lightning.errors import PHAError
from pha_lightning.files import atomic_write_text
from pha_lightning.training.health import HealthThresholds, format_health, health_report, probe_batches


class NonFiniteLossError(PHAError):
    """Training produced a NaN or infinite loss or weight."""


def _seed_env() -> int:
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class StepSeed(Callback):
    """Reseed torch's generators (CPU and every CUDA device) before every training batch.

    The seed is derived from ``(seed, epoch, batch index, global rank)``, so the dropout masks of
    a batch do not depend on how much randomness was drawn before it (evaluation loaders, a
    restart, a resume mid-epoch), and ranks draw different masks. ``seed`` defaults to the run's
    ``seed_everything`` value; it is stored in checkpoints and restored with them.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def _base(self) -> int:
        if self.seed is None:
            self.seed = _seed_env()
        return self.seed

    def step_seed(self, epoch: int, batch_idx: int, rank: int) -> int:
        return int(np.random.SeedSequence([self._base() & 0xFFFFFFFF, epoch, batch_idx, rank]).generate_state(1)[0])

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(self.step_seed(trainer.current_epoch, batch_idx, trainer.global_rank))

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self._base()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict["seed"])


class NonFiniteGuard(Callback):
    """Stop training at the first non-finite loss or weight, keeping every checkpoint written so far good.

    * the loss is checked before ``backward`` (on every rank together under DDP, so no rank is
      left waiting): no gradient of a NaN loss reaches the optimizer;
    * the trainable weights are checked after each optimizer step, before the checkpoint
      callbacks of that step run (Lightning runs them last);
    * a checkpoint about to be written with a non-finite weight is refused.

    The error names the global step, the epoch and batch, and every loss term of the bad batch
    (recomputed without gradients), and the last checkpoint written.
    """

    def __init__(self, check_weights: bool = True) -> None:
        self.check_weights = check_weights
        self._batch: Any = None
        self._batch_idx = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
                f"{self._batch_idx}): {self._terms(pl_module)}. Training stopped before the optimizer step; "
                f"{self._last_checkpoint(trainer)}"
            )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.check_weights:
            return
        bad = _non_finite_weights(pl_module)
        any_bad = bool(bad)
        if trainer.world_size > 1:
            any_bad = trainer.strategy.reduce_boolean_decision(any_bad, all=False)
            bad = bad or ["(on another rank)"]
        if any_bad:
            raise NonFiniteLossError(
                f"non-finite weights after the optimizer step of step {trainer.global_step - 1} (epoch "
                f"{trainer.current_epoch}, batch {batch_idx}), e.g. {bad[:3]}; the loss was finite: "
                f"{self._terms(pl_module)}. No checkpoint of this state was written; {self._last_checkpoint(trainer)}"
            )
        self._batch = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = [
            k
            for k, v in checkpoint.get("state_dict", {}).items()
            if v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            raise NonFiniteLossError(f"refusing to write a checkpoint with non-finite weights, e.g. {bad[:3]}")

    def _terms(self, pl_module: LightningModule) -> str:
        terms_fn = getattr(pl_module, "loss_terms", None)
        if self._batch is None or terms_fn is None:
            return "loss terms unavailable"
        try:
            with torch.no_grad():
                terms = terms_fn(self._batch)
        except Exception as err:  # the report must not hide the original problem
            return f"loss terms could not be recomputed ({type(err).__name__}: {err})"
        return ", ".join(f"{name}={float(value):.6g}" for name, value in terms.items())

    @staticmethod
    def _last_checkpoint(trainer: Trainer) -> str:
        paths = [
            getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
            for cb in trainer.checkpoint_callbacks
        ]
        written = [p for p in paths if p and os.path.exists(p)]
        return f"the last good checkpoint is {written[0]}" if written else "no checkpoint had been written yet"


class LatestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` holds the state after every validation.

    Lightning 2.6 rewrites ``last.ckpt`` only when a top-k checkpoint is saved, so once the
    monitored metric stops improving, ``last.ckpt`` is the best state, and a resumed run repeats
    every step since then. ``save_last: link`` keeps Lightning's behaviour.

    A resumed run keeps its best-checkpoint record (docs/production.md, "Resume an interrupted run
    exactly"): Lightning forgets the best score whenever the checkpoint folder differs from the one
    the state was saved in, so the first validation after resuming became "best" however bad it was. Without an explicit
    ``dirpath`` the run keeps writing to the folder of the run it resumes (not the new logger
    version's); a run folder that was moved or copied elsewhere (another worktree, another mount
    point) is recognised by the resumed ``last.ckpt`` living there, and its record follows it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.follows_log_dir = self.dirpath is None  # setup() derives it from the logger's version
        self.resumed_from: str | None = None

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.resumed_from = str(trainer.ckpt_path) if trainer.ckpt_path else None  # runs before load_state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        folder = self._run_folder(state_dict)
        if folder and (self.follows_log_dir or folder == self.dirpath):
            if folder != self.dirpath or folder != state_dict.get("dirpath"):
                rank_zero_info(f"resuming: checkpoints stay in the resumed run's folder {folder}")
            self.dirpath = folder
            state_dict = _rebased(state_dict, folder)
        super().load_state_dict(state_dict)

    def _run_folder(self, state_dict: dict[str, Any]) -> str | None:
        """Where the resumed run's checkpoints are now: the folder of the resumed checkpoint when it
        is this callback's ``last`` file (the folder may have moved since it was saved), else the
        folder the state names, if it still exists."""
        last, saved = state_dict.get("last_model_path"), state_dict.get("dirpath")
        resumed = self.resumed_from
        if resumed and last and os.path.basename(last) == os.path.basename(resumed) and os.path.isfile(resumed):
            return os.path.dirname(os.path.realpath(resumed))
        return saved if saved and os.path.isdir(saved) else None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ranked = (self.best_model_path, dict(self.best_k_models))
        super().on_validation_end(trainer, pl_module)
        if self.save_last is not True or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if trainer.state.fn != TrainerFn.FITTING or ranked != (self.best_model_path, dict(self.best_k_models)):
            return  # not training, or Lightning wrote last.ckpt with the new top-k checkpoint
        self.last_model_path = self.last_model_path or self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        trainer.save_checkpoint(self.last_model_path)


def _rebased(state_dict: dict[str, Any], folder: str) -> dict[str, Any]:
    """A ModelCheckpoint state with its folder and every checkpoint path it names moved to ``folder``."""

    def move(path: str) -> str:
        return os.path.join(folder, os.path.basename(path)) if path else path

    return {
        **state_dict,
        "dirpath": folder,
        **{
            key: move(state_dict[key])
            for key in ("best_model_path", "kth_best_model_path", "last_model_path")
            if key in state_dict
        },
        "best_k_models": {move(path): score for path, score in state_dict.get("best_k_models", {}).items()},
    }


def _non_finite_weights(module: LightningModule) -> list[str]:
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in module.named_parameters() if p.requires_grad]
    if not params:
        return []
    finite = torch.stack([torch.isfinite(p).all() for p in params])  # one sync for all of them
    if bool(finite.all()):
        return []
    return [name for name, ok in zip(names, finite.tolist()) if not ok]


def batch_token_count(batch: dict[str, Tensor]) -> int:
    """Real (non-padding) tokens of a batch: input tokens, plus target tokens on the seq2seq path."""
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
    if "labels" in batch:
        tokens += int((batch["labels"] != -100).sum())
    return tokens


class Throughput(Callback):
    """Log ``throughput/examples_per_s`` and ``throughput/tokens_per_s`` of training.

    Measured as wall-clock time between consecutive training batches (data loading, forward,
    backward, optimizer step), over a sliding window of ``window`` batches; validation time is not
    counted. Under DDP the rates are summed over ranks (the whole job's throughput).
    """

    def __init__(self, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=window)
        self._last: float | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        self._samples.append((now - (self._last or now), len(batch["task_ids"]), batch_token_count(batch)))
        self._last = now
        seconds = sum(s[0] for s in self._samples)
        if seconds <= 0:
            return
        rates = torch.tensor(
            [sum(s[1] for s in self._samples) / seconds, sum(s[2] for s in self._samples) / seconds],
            device=pl_module.device,
            dtype=torch.float64 if pl_module.device.type == "cpu" else torch.float32,
        )
        if trainer.world_size > 1:
            rates = trainer.strategy.reduce(rates, reduce_op="sum")
        pl_module.log("throughput/examples_per_s", float(rates[0]), on_step=True, on_epoch=False)
        pl_module.log("throughput/tokens_per_s", float(rates[1]), on_step=True, on_epoch=False)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last = None  # the next training batch restarts the clock

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last = None


class _ValidationRetrievalListener(Callback):
    """Base of the callbacks that read the retriever's output ``z`` during validation.

    Forward hooks are registered for the validation loop only (no extra forward pass):
    :meth:`on_retrieval` sees each batch's ``z``, in batch order, with the batch. A chunked forward
    (``model.chunk_cost_tokens``) calls the retriever once per length-sorted chunk, so ``z`` is
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


class RetrieverTaskAccuracy(_ValidationRetrievalListener):
    """Log ``retriever/val_task_accuracy`` (×100): the share of validation examples whose nearest
    prototype (cosine of the normalised ``z`` with the normalised prototypes) is their own task —
    the retriever's task identification. Counts are summed over ranks.
    """

    def reset(self) -> None:
        self._correct = self._total = 0

    def on_retrieval(self, pl_module: LightningModule, z: Tensor, task_ids: Tensor) -> None:
        with torch.no_grad():
            nearest = (F.normalize(z, dim=-1) @ pl_module.model.prototypes.normalized().float().T).argmax(-1)
        self._correct += int((nearest == task_ids).sum())
        self._total += len(nearest)

    def report(self, trainer: Trainer, pl_module: LightningModule) -> None:
        counts = torch.tensor(
            [self._correct, self._total],
            dtype=torch.float64 if pl_module.device.type == "cpu" else torch.float32,
            device=pl_module.device,
        )
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        if counts[1] > 0:
            pl_module.log("retriever/val_task_accuracy", float(100 * counts[0] / counts[1]))


class RetrievalProjector(_ValidationRetrievalListener):
    """Send validation retrieval vectors and the prototypes to TensorBoard's embedding projector.

    After each validation, global rank 0 writes up to ``points_per_task`` of its normalised ``z``
    per task and every normalised prototype as one embedding tagged ``retrieval``, with metadata
    columns ``kind`` (example / prototype) and ``task``: colour by ``task`` in the projector to see
    whether the retriever separates tasks and where each prototype sits (cosine space, as
    retrieval scores it). Does nothing without a TensorBoard logger; ``pha retrieve --output_dir``
    draws the same picture as a PNG for any checkpoint and task set.
    """

    def __init__(self, points_per_task: int = 200) -> None:
        super().__init__()
        if points_per_task < 1:
            raise ValueError(f"points_per_task must be >= 1, got {points_per_task}")
        self.points_per_task = points_per_task

    def reset(self) -> None:
        self._points: list[Tensor] = []
        self._tasks: list[int] = []
        self._count: dict[int, int] = {}

    def on_retrieval(self, pl_module: LightningModule, z: Tensor, task_ids: Tensor) -> None:
        keep = []
        for row, task in enumerate(task_ids.tolist()):
            if self._count.get(task, 0) < self.points_per_task:
                self._count[task] = self._count.get(task, 0) + 1
                keep.append(row)
        if keep:
            self._points.append(F.normalize(z[keep], dim=-1).cpu())
            self._tasks.extend(task_ids[keep].tolist())

    def report(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = _tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero or not self._tasks:
            return
        names = [task.name for task in pl_module.model.task_objects]
        prototypes = pl_module.model.prototypes.normalized().detach().float().cpu()
        writer.add_embedding(
            torch.cat([*self._points, prototypes]),
            metadata=[["example", names[t]] for t in self._tasks] + [["prototype", name] for name in names],
            metadata_header=["kind", "task"],
            global_step=trainer.global_step,
            tag="retrieval",
        )


class TrainingHealth(Callback):
    """Measure the run's health (:func:`pha_lightning.training.health.health_report`) on the first
    ``probe_examples`` examples of each task's validation loader: before training, after each
    validation, and at the end of ``fit``. The prototypes' initial values travel in checkpoints,
    so a resumed run still reports how far they moved from their very start.
    """

    def __init__(self, probe_examples: int = 64, thresholds: HealthThresholds = HealthThresholds()) -> None:
        self.probe_examples = probe_examples
        self.thresholds = thresholds
        self.initial_prototypes: Tensor | None = None
        self.reports: dict[str, dict[str, Any]] = {}

    def measure(self, trainer: Trainer, pl_module: LightningModule, when: str) -> dict[str, Any]:
        loaders = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else trainer.val_dataloaders
        batches = probe_batches(loaders or [], self.probe_examples, pl_module.device)
        report = health_report(pl_module.model, batches, self.initial_prototypes, self.thresholds)
        report["step"] = trainer.global_step
        self.reports[when] = report
        return report

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.initial_prototypes is None and pl_module.model.prototypes is not None:
            self.initial_prototypes = pl_module.model.prototypes.table().detach().cpu().clone()
        if "start" not in self.reports:
            self.measure(trainer, pl_module, "start")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        report = self.measure(trainer, pl_module, "end")
        for logger in trainer.loggers:
            logger.log_metrics(_health_scalars(report), step=trainer.global_step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report = self.reports.get("end")
        if report is None or report["step"] != trainer.global_step:
            report = self.measure(trainer, pl_module, "end")
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if trainer.is_global_zero:
            print(f"training health at step {report['step']} (docs/training_health.md):\n{format_health(report)}")
            if log_dir:
                atomic_write_text(
                    Path(log_dir) / "health.json", json.dumps(self.reports, indent=1) + "\n", "health report"
                )

    def state_dict(self) -> dict[str, Any]:
        return {"initial_prototypes": self.initial_prototypes, "reports": self.reports}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial_prototypes = state_dict.get("initial_prototypes")
        self.reports = state_dict.get("reports", {})


def _health_scalars(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as ``health/...`` scalars (per block, per layer, per task)."""
    scalars = {
        f"health/{key}/block_{b}": r
        for key in ("adapter_to_residual", "lora_to_base")
        for b, r in enumerate(report[key])
    }
    for key in ("shared_adapter_norm", "generated_adapter_norm", "generated_between_task_spread"):
        scalars.update({f"health/{key}/layer_{i}": v for i, v in enumerate(report.get(key, []))})
    for key in ("prototype_shift", "top_axis_share"):
        scalars.update({f"health/{key}/{task}": v for task, v in report.get(key, {}).items()})
    if report["top_axis_share"]:
        scalars["health/max_top_axis_share"] = max(report["top_axis_share"].values())
    return scalars


def _tensorboard_writer(trainer: Trainer) -> Any:
    """The SummaryWriter of the trainer's TensorBoard logger, if it has one."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def example_fingerprint(input_ids: Tensor, attention_mask: Tensor) -> str:
    """A short digest of one example's real tokens (padding excluded)."""
    ids = input_ids[attention_mask.bool()].tolist()
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:16]


class FinalValidation(Callback):
    """Validate after the last training step when no validation has run during this fit.

    A smoke run shorter than ``val_check_interval`` would otherwise end with no validated
    checkpoint, and checkpoint selection (``checkpoint.monitor``) with nothing to select from.
    Setting ``trainer.should_stop`` at the last step makes Lightning validate once more before
    stopping, inside the fit, so ModelCheckpoint saves and ranks that checkpoint as usual.
    """

    def __init__(self) -> None:
        self.validated = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.validated = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated = True

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.validated or not trainer.enable_validation or not _is_last_step(trainer, batch_idx):
            return
        rank_zero_info(
            f"no validation has run in the {trainer.global_step} training steps of this run "
            f"(val_check_interval {trainer.val_check_interval}): validating after the last step, "
            "so that the final checkpoint is validated and can be selected and tested"
        )
        trainer.should_stop = True


def _is_last_step(trainer: Trainer, batch_idx: int) -> bool:
    """Whether this batch ends training: ``max_steps`` reached, or the last batch of the last epoch."""
    if 0 <= trainer.max_steps <= trainer.global_step:
        return True
    last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
    return last_epoch and batch_idx + 1 >= trainer.num_training_batches


class RecordTrainingExamples(Callback):
    """Debugging: each rank appends one JSON line per training batch to
    ``<dirpath>/train_examples_rank<global rank>.jsonl``: global step, epoch, batch index, this
    rank's (unsynced) loss, and a fingerprint of every example's tokens with its task id.

        pha fit ... --trainer.callbacks+=pha_lightning.training.callbacks.RecordTrainingExamples \\
                    --trainer.callbacks.dirpath=runs/debug
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        row = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "loss": float(loss) if loss is not None else math.nan,
            "examples": [
                example_fingerprint(i, m) for i, m in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu())
            ],
            "task_ids": batch["task_ids"].tolist(),
        }
        with open(Path(self.dirpath) / f"train_examples_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines, atomically (:func:`~pha_lightning.files.atomic_write`)."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return atomic_write_text(path, text, "predictions file")


class JSONLPredictionWriter(BasePredictionWriter):
    """Collects every prediction row and writes them once, in input order, when prediction ends.

    Rows with an ``index`` (raw examples) are sorted by it; others (the test split) keep loader
    order. Under DDP every rank predicts every example; rank 0 writes.
    """

    def __init__(self, output_path: str) -> None:
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self.rows: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:  # noqa: ANN001
        if isinstance(prediction, list):
            self.rows.extend(prediction)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        rows = self.rows
        if rows and all("index" in row for row in rows):
            rows = sorted(rows, key=lambda row: row["index"])
        path = write_jsonl_atomic(self.output_path, rows)
        print(f"wrote {len(rows)} predictions to {path}", flush=True)
