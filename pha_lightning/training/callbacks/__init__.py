"""Callbacks for production runs, one a module; the ``pha`` command adds the first ten to every Trainer.

* :class:`StepSeed` — dropout randomness as a function of (seed, epoch, batch, rank), so a run
  resumed from any checkpoint draws exactly the masks an uninterrupted run draws.
* :class:`NonFiniteGuard` — stops at the first NaN/inf loss (or weight) with the step and every
  loss term, before the optimizer step and before any checkpoint of the bad state is written.
* :class:`Throughput` — examples/s and tokens/s of training, summed over ranks.
* :class:`RetrieverTaskAccuracy` — on validation, how often the nearest prototype (cosine of the
  normalised retrieval vector ``z`` with the normalised prototypes) is the example's own task.
* :class:`RetrievalProjector` — validation retrieval vectors and prototypes in TensorBoard's
  embedding projector, coloured by task.
* :class:`RoutingCalibration` — after each validation, the routing calibration (confidence
  temperature, abstention threshold, confusable groups) of the weights being checkpointed; printed
  at the end of ``fit`` for the best checkpoint.
* :class:`TrainingHealth` — after each validation and at the end of ``fit``: adapter/residual
  ratios, adapter norms, prototype shift and feature collapse (:mod:`pha_lightning.training.health`), logged
  to TensorBoard, printed at the end and written to ``<log_dir>/health.json``, with warnings.
* :class:`DataSizeAdvice` — says once, at the start of ``fit``, when the training examples per task
  fall where PHA's other generated adapter kind was measured ahead (:mod:`pha_lightning.training.size_advice`).
* :class:`FinalValidation` — validates after the last step of a run in which no validation ran
  (shorter than ``val_check_interval``), so there is a best checkpoint to test.
* :class:`SignalStop` — SIGTERM stops prediction as Lightning stops training and evaluation, and the
  run says what it kept and how to resume; ``pha`` then exits with status 143.
* :class:`SlurmRequeue` — under SLURM, the pre-emption signal (SIGUSR1) writes ``hpc_ckpt_<n>.ckpt``
  at the end of the training step, not mid-step, then requeues the job: the requeued job resumes exactly.
* :class:`LatestCheckpoint` — the ``checkpoint`` callback: ``last.ckpt`` rewritten after every
  validation and at SIGTERM, so an interrupted run resumes from its latest state, not from its best one.
* :class:`JSONLPredictionWriter` — ``pha predict``: every prediction row, streamed in input order to a
  ``.partial`` file renamed when done (:func:`resume_start`: where ``--resume`` goes on);
  :class:`FirstPredictionTime` prints once how long the command took to its first prediction.
* :class:`TextProgress` — progress as plain lines (step, loss, examples/s, time left) where ``pha``'s
  output is no terminal (a log file), in place of a bar that a file shows only at the end.
* :class:`RecordTrainingExamples` — debugging: each rank writes which examples it trained on and
  its local loss, one JSON line per batch (the DDP test uses it).

:class:`ValidationRetrievalListener` is the base of the three retrieval callbacks.
"""

from pha_lightning.training.callbacks.final_validation import FinalValidation
from pha_lightning.training.callbacks.latest_checkpoint import LatestCheckpoint
from pha_lightning.training.callbacks.non_finite import NonFiniteGuard, NonFiniteLossError
from pha_lightning.training.callbacks.prediction_writer import (
    FirstPredictionTime,
    JSONLPredictionWriter,
    first_prediction_report,
    resume_start,
)
from pha_lightning.training.callbacks.record_examples import RecordTrainingExamples, example_fingerprint
from pha_lightning.training.callbacks.retrieval_listener import ValidationRetrievalListener
from pha_lightning.training.callbacks.retrieval_projector import RetrievalProjector
from pha_lightning.training.callbacks.retriever_accuracy import RetrieverTaskAccuracy
from pha_lightning.training.callbacks.routing_calibration import RoutingCalibration
from pha_lightning.training.callbacks.signal_stop import SignalStop
from pha_lightning.training.callbacks.size_advice import DataSizeAdvice
from pha_lightning.training.callbacks.slurm_requeue import SlurmRequeue
from pha_lightning.training.callbacks.step_seed import StepSeed
from pha_lightning.training.callbacks.text_progress import TextProgress
from pha_lightning.training.callbacks.throughput import Throughput, batch_token_count
from pha_lightning.training.callbacks.training_health import TrainingHealth

__all__ = [
    "DataSizeAdvice",
    "FinalValidation",
    "FirstPredictionTime",
    "JSONLPredictionWriter",
    "LatestCheckpoint",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "RecordTrainingExamples",
    "RetrievalProjector",
    "RetrieverTaskAccuracy",
    "RoutingCalibration",
    "SignalStop",
    "SlurmRequeue",
    "StepSeed",
    "TextProgress",
    "Throughput",
    "TrainingHealth",
    "ValidationRetrievalListener",
    "batch_token_count",
    "example_fingerprint",
    "first_prediction_report",
    "resume_start",
]
