"""``pha predict``'s output, streamed: every prediction row is written, whole and in input order, as
soon as the rows before it are, to ``<output>.partial``, which becomes ``<output>`` only when every
example is predicted; beside it ``<output>.partial.json`` records what the rows answer (the input's
first lines, the model, the settings), so that ``--resume`` continues after them, or refuses naming
what changed (docs/production.md, "Predict on raw examples"). Also: how long the command took to its
first prediction."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pha_lightning.data.examples import whole_chunk_rows
from pha_lightning.errors import ConfigError
from pha_lightning.files import atomic_write_text
from pha_lightning.model.prediction import UNCALIBRATED_NOTE

#: appended to ``--predict_output`` for the rows of a prediction not (yet) finished
PARTIAL_SUFFIX = ".partial"
#: appended to ``--predict_output`` for what those rows answer (:func:`resume_start`)
STATE_SUFFIX = ".partial.json"


class InputPrefix:
    """The SHA-256 of a file's first lines, extended as more rows are complete: the part of the input
    the rows of a ``.partial`` answer (a changed later line, or an appended one, does not matter)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path
        self.lines = 0
        self.digest = hashlib.sha256()
        self.handle: IO[bytes] | None = None

    def extend_to(self, line: int) -> str:
        """The hex digest of the first ``line`` lines."""
        if self.handle is None:
            self.handle = open(self.path, "rb")
        while self.lines < line:
            raw = self.handle.readline()
            if not raw:
                break
            self.digest.update(raw)
            self.lines += 1
        return self.digest.hexdigest()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def resume_start(output: str, input_path: str, identity: dict[str, str], resume: bool, overwrite: bool) -> int:
    """How many examples of ``input_path`` an interrupted prediction to ``output`` completed, to go on
    after them: 0 without ``resume`` or without an interrupted prediction. A ``.partial`` left by one is
    never replaced silently (``overwrite`` starts over), nor continued when its rows answer another
    input, model or settings (``identity``): the error names what changed."""
    partial = Path(f"{output}{PARTIAL_SUFFIX}")
    if not partial.exists():
        if resume:
            print(f"pha predict --resume: no interrupted prediction at {partial}; predicting every example", flush=True)
        return 0
    if not resume:
        if overwrite:
            return 0
        raise ConfigError(
            f"{str(partial)!r} holds the rows of an interrupted prediction; pass --resume to continue after them, "
            "or --overwrite to start over"
        )
    state = _read_state(Path(f"{output}{STATE_SUFFIX}"))
    changed = [
        f"{key} {state['identity'].get(key)!r} -> {value!r}"
        for key, value in identity.items()
        if state["identity"].get(key) != value
    ]
    prefix = InputPrefix(input_path)
    if not changed and prefix.extend_to(state["lines"]) != state["input_sha256"]:
        changed.append(f"the first {state['lines']} lines of data.predict_file {input_path!r}")
    prefix.close()
    if changed:
        raise ConfigError(
            f"cannot resume the prediction in {str(partial)!r}: changed since it was interrupted: {'; '.join(changed)}; "
            "pass --overwrite instead of --resume to start over"
        )
    return state["rows"]


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if {"identity", "rows", "lines", "input_sha256"} <= set(state):
            return state
    except (OSError, ValueError):
        pass
    raise ConfigError(
        f"cannot resume: {str(path)!r}, which says what the interrupted prediction's rows answer, is missing or "
        "unreadable; pass --overwrite instead of --resume to start over"
    )


class JSONLPredictionWriter(BasePredictionWriter):
    """Appends each row to ``<output>.partial`` as soon as the rows before it in input order are
    written, and renames the file to ``<output>`` when prediction ends: the output is only ever the
    whole prediction, and memory holds at most the rows of the chunks being predicted.

    Rows with an ``index`` (raw examples, predicted a chunk at a time: one batch of ``batch_size``
    first, then :data:`~pha_lightning.data.examples.CHUNK_BATCHES` batches each) are put in input
    order; at the end of every chunk the state file records how far a resume may start
    (:func:`resume_start`). Others (the test split) keep loader order. Under DDP every rank predicts
    every example; rank 0 writes.
    """

    def __init__(
        self,
        output_path: str,
        input_path: str | None = None,
        identity: dict[str, str] | None = None,
        batch_size: int = 1,
        start: int = 0,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self.partial = Path(f"{output_path}{PARTIAL_SUFFIX}")
        self.state = Path(f"{output_path}{STATE_SUFFIX}")
        self.input_path = input_path
        self.identity = identity or {}
        self.batch_size = batch_size
        self.start = start
        self.written = start
        self.pending: dict[int, dict[str, Any]] = {}
        self.routed = self.abstained = 0
        self.chunk_end_line = 0  # input line of the last row of the last whole chunk written
        self.file: IO[str] | None = None
        self.prefix: InputPrefix | None = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.written, self.pending = self.start, {}
        self.routed = self.abstained = 0  # of the rows predicted by this run
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        if self.start:
            self.chunk_end_line = keep_rows(self.partial, self.start)
            self.file = open(self.partial, "a", encoding="utf-8")
        else:
            self.chunk_end_line = 0
            self.file = open(self.partial, "w", encoding="utf-8")
        if self.input_path is not None:
            self.prefix = InputPrefix(self.input_path)
            self.save_state()

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if self.file is None or not isinstance(prediction, list):
            return
        for row in prediction:
            if "index" in row:
                self.pending[row["index"]] = row
            else:
                self.write_row(row)
        while self.written in self.pending:
            self.write_row(self.pending.pop(self.written))
        self.file.flush()

    def write_row(self, row: dict[str, Any]) -> None:
        """One row, and, when it completes a chunk of raw examples, the state a resume starts from."""
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.written += 1
        self.routed += bool(row.get("routed"))
        self.abstained += "abstained" in row
        if self.prefix is not None and whole_chunk_rows(self.written, self.batch_size) == self.written:
            self.file.flush()  # the rows before the state that names them
            self.chunk_end_line = row["line"]
            self.save_state()

    def save_state(self) -> None:
        """Record that the whole chunks written answer the input's first ``chunk_end_line`` lines."""
        state = {
            "identity": self.identity,
            "rows": whole_chunk_rows(self.written, self.batch_size),
            "lines": self.chunk_end_line,
            "input_sha256": self.prefix.extend_to(self.chunk_end_line),
        }
        atomic_write_text(self.state, json.dumps(state, indent=1), "prediction state file")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.prefix is not None:
            self.prefix.close()

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.file is None:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.close()
        os.replace(self.partial, self.output_path)
        self.state.unlink(missing_ok=True)
        print(f"wrote {self.written} predictions to {self.output_path}", flush=True)
        if self.routed:
            routing_note(self.routed, self.abstained, pl_module.model.calibration is not None)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Stopped (SIGTERM, an error): the rows written stay in ``<output>.partial``, never in the
        output itself, which only a finished prediction writes; no row written, nothing is left."""
        if self.file is None:
            return
        self.close()
        cause = {SIGTERMException: "by SIGTERM", KeyboardInterrupt: "by Ctrl-C"}.get(type(exception), "by an error")
        if not self.written:
            self.partial.unlink(missing_ok=True)
            self.state.unlink(missing_ok=True)
            if isinstance(exception, SIGTERMException):
                print("pha: stopped by SIGTERM before any prediction: nothing was written", file=sys.stderr, flush=True)
            return
        resume = (
            "run the same command with --resume to continue after them"
            if self.prefix is not None
            else "run the command again to predict every example"
        )
        print(
            f"pha: stopped {cause} after {self.written} predictions: wrote them to {self.partial} (in input order); "
            f"{self.output_path} was not written; {resume}",
            file=sys.stderr,
            flush=True,
        )


def keep_rows(path: Path, rows: int) -> int:
    """Cut ``path`` after its first ``rows`` lines (a resume redoes the rows of an unfinished chunk);
    the ``line`` of the last row kept."""
    with open(path, "r+b") as handle:
        last = b""
        for _ in range(rows):
            last = handle.readline()
        handle.truncate(handle.tell())
    return json.loads(last)["line"]


def routing_note(routed: int, abstained: int, calibrated: bool) -> None:
    """Say how many of the ``routed`` examples (without a task) were ``abstained``, or that routing had
    no calibration."""
    if routed and not calibrated:
        print(f"note: {UNCALIBRATED_NOTE}", flush=True)
    elif abstained:
        print(
            f"routing: {abstained} of {routed} examples without a task abstained (task null, the reason in "
            '"abstained"); name their tasks to predict them',
            flush=True,
        )


def first_prediction_report(marks: dict[str, float], now: float) -> str:
    """``first prediction after X s (imports Y s, …)``: ``marks`` are the times (``time.perf_counter()``)
    at which the command started and then each named phase ended, in order."""
    times = list(marks.values())
    phases = ", ".join(f"{name} {end - begin:.1f} s" for name, begin, end in zip(list(marks)[1:], times, times[1:]))
    return f"first prediction after {now - times[0]:.1f} s ({phases})"


class FirstPredictionTime(Callback):
    """Prints once, after the first predicted batch, how long the command took to get there and
    which start-up phases (``marks``, see :func:`first_prediction_report`) the time went to; the rest
    is reading the examples and predicting the first batch."""

    def __init__(self, marks: dict[str, float]) -> None:
        self.marks = marks
        self.reported = False

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.reported:
            return
        self.reported = True
        if trainer.is_global_zero:
            print(first_prediction_report(self.marks, time.perf_counter()), flush=True)
