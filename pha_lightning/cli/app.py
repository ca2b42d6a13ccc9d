"""The ``pha`` command: a LightningCLI over :class:`PHAModule` and :class:`PHADataModule`.

``pha fit|validate|test|predict --config configs/<name>.yaml``. The model's settings come in groups
(``model.arch``, ``model.loss``, ``model.optim``, ``model.transfer``). The task list is configured
once (``data.tasks``) and linked into the model; the backbone is configured once
(``model.arch.backbone``) and linked into the data module, which needs its tokenizer. Checkpointing selects on ``val/avg``.
After ``validate`` and ``test`` the per-task metrics are printed as a table and written to
``<log_dir>/<stage>_metrics.json``. What the command line must satisfy before anything is built is
:mod:`~pha_lightning.cli.checks`; a checkpoint or bundle given as ``--ckpt_path`` (its defaults,
``last``, whether it serves the configuration) is :mod:`~pha_lightning.cli.saved`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonargparse
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pha_lightning.cli.checks import (
    check_config_file,
    check_option_names,
    check_predict_output,
    check_run_settings,
    predict_start,
    prediction_identity,
)
from pha_lightning.cli.help_request import prints_help
from pha_lightning.cli.native_heap import PREDICT_MMAP_THRESHOLD, check_mmap_threshold, fix_mmap_threshold
from pha_lightning.cli.parsing import OneLineArgumentParser, option_values
from pha_lightning.cli.quiet import hide_library_noise
from pha_lightning.cli.saved import LIGHTNING_CKPT_NAMES, check_saved, read_saved, resolve_ckpt_path, saved_defaults
from pha_lightning.data.catalog import portable_specs
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.errors import SIGTERM_EXIT, ConfigError, PHAError
from pha_lightning.files import atomic_write_text, reported_write
from pha_lightning.model.config import trains_retriever
from pha_lightning.training.callbacks import (
    DataSizeAdvice,
    FinalValidation,
    LatestCheckpoint,
    NonFiniteGuard,
    RetrievalProjector,
    RetrieverTaskAccuracy,
    RoutingCalibration,
    SignalStop,
    SlurmRequeue,
    StepSeed,
    TextProgress,
    Throughput,
    TrainingHealth,
)
from pha_lightning.training.distributed import end_process_group
from pha_lightning.training.outputs import AtomicCheckpointIO, RunLogger, log_artifacts, run_folder
from pha_lightning.training.run_record import write_run_record
from pha_lightning.training.sharding import STRATEGY_NAME
from pha_lightning.training.system import PHAModule
from pha_lightning.validation import ensure_writable_dir


def format_metrics_table(metrics: dict[str, float], stage: str) -> str:
    """Render ``<stage>/<task>/<metric>`` values as one row per task, with the average last."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == stage:
            rows.setdefault(parts[1], {})[parts[2]] = value
    width = max(len(name) for name in [*rows, "average"]) + 1
    lines = [f"{'task':<{width}} metrics ({stage}, ×100)"]
    for task, values in rows.items():
        lines.append(f"{task:<{width}} " + "  ".join(f"{name}={value:6.2f}" for name, value in values.items()))
    if f"{stage}/avg" in metrics:
        lines.append(f"{'average':<{width}} {metrics[f'{stage}/avg']:6.2f}")
    return "\n".join(lines)


def linked_specs(specs: object, tasks: list[str] | None, data_dir: str | None = None) -> list[dict] | None:
    """``model.arch.task_specs`` from ``data.task_specs`` (labels a spec leaves out read under ``data_dir``);
    a bad spec is left to :func:`check_run_settings`, which reports it in one line (jsonargparse would
    wrap it in a usage dump)."""
    try:
        return portable_specs(specs, tasks, data_dir)
    except PHAError:
        return None


class PHAArgumentParser(OneLineArgumentParser, LightningArgumentParser):
    """The parser of ``pha fit|validate|test|predict`` (and of each subcommand) and ``pha sweep``."""


class RunConfigSaver(SaveConfigCallback):
    """Lightning's writer of the run's ``config.yaml``; a full or read-only disk is one error naming
    the folder. Loggers that store files (MLflow, W&B) get it as an artifact."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.log_dir = run_folder(trainer)  # a collective under DDP: every rank asks
        with reported_write(self.log_dir, "the run's config.yaml under"):
            if trainer.log_dir is not None:
                super().setup(trainer, pl_module, stage)
            elif not self.already_saved:  # Lightning's writer asserts a logger folder; MLflow's has none
                if trainer.is_global_zero:
                    os.makedirs(self.log_dir, exist_ok=True)
                    path = os.path.join(self.log_dir, self.config_filename)
                    self.parser.save(
                        self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile
                    )
                    self.save_config(trainer, pl_module, stage)
                self.already_saved = trainer.strategy.broadcast(True)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Global rank 0, after ``config.yaml`` is written."""
        log_artifacts(trainer, [Path(self.log_dir) / self.config_filename], self.log_dir)


class PHACLI(LightningCLI):
    """LightningCLI with PHA's links, checkpoint defaults and per-task metric reports."""

    def __init__(self, *args: Any, started_at: float | None = None, **kwargs: Any) -> None:
        """``started_at``: ``time.perf_counter()`` when the command started (default: now); the time
        until here is the imports' share of ``pha predict``'s first-prediction report."""
        now = time.perf_counter()
        #: when each start-up phase ended: imports, parsing (set by instantiate_classes), model load
        self.startup_marks = {"start": now if started_at is None else started_at, "imports": now}
        #: examples of data.predict_file an interrupted prediction completed (``pha predict --resume``)
        self.predict_start = 0
        command_line = kwargs.get("args")
        #: the subcommand the command line starts with, the only one whose parser is built (``None``: all)
        self.invoked = invoked_subcommand(sys.argv[1:] if command_line is None else command_line)
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        """Lightning's subcommands, or only the one the command line starts with: building a subcommand's
        parser reads its classes' signatures (≈ 0.1–0.4 s of CPU each), and ``pha fit`` parses fit's alone."""
        every = LightningCLI.subcommands()
        return {self.invoked: every[self.invoked]} if self.invoked in every else every

    def instantiate_classes(self) -> None:
        self.startup_marks["parsing"] = time.perf_counter()
        super().instantiate_classes()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.tasks", "model.arch.tasks")
        # the model keeps each spec task's portable spec (no file paths): checkpoints serve it alone
        parser.link_arguments(
            ("data.task_specs", "data.tasks", "data.data_dir"), "model.arch.task_specs", compute_fn=linked_specs
        )
        # the retriever exists when a loss trains it (the system derives the same: trains_retriever)
        parser.link_arguments(
            ("data.tasks", "model.loss.lambda_ir", "model.loss.lambda_pro"),
            "model.arch.retriever",
            compute_fn=trains_retriever,
        )
        parser.link_arguments("model.arch.backbone", "data.backbone")
        parser.link_arguments("data.max_target_length", "model.arch.generation_max_length")
        parser.add_lightning_class_args(LatestCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/avg",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "step{step:06d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, evaluate the best checkpoint on the test split (fit only).",
        )
        parser.add_argument(
            "--predict_output",
            type=str | None,
            default=None,
            help="predict: the JSONL file to write predictions to (default: <log_dir>/predictions.jsonl).",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            nargs="?",
            const=True,  # `--overwrite` alone, as pha export takes it
            default=False,
            help="predict: replace predict_output if it exists (without it, an existing file is refused), "
            "or start over from an interrupted prediction's <predict_output>.partial.",
        )
        parser.add_argument(
            "--resume",
            type=bool,
            nargs="?",
            const=True,
            default=False,
            help="predict: continue an interrupted prediction of data.predict_file after the rows its "
            "<predict_output>.partial holds (refused, naming what changed, when the input's lines, the model "
            "or the settings did); without one, predict every example.",
        )
        parser.add_argument(
            "--predict_mmap_threshold",
            type=int | None,
            default=PREDICT_MMAP_THRESHOLD,
            help="predict: glibc serves blocks of at least this many bytes with their own mmap and returns them "
            "when freed, so that the padded batches of a long prediction do not fragment the heap (memory stays "
            'flat, at some CPU cost: docs/production.md, "Memory of a long prediction"); null: glibc\'s own '
            "threshold, which rises to the largest block freed. Linux with glibc only; elsewhere ignored.",
        )

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(
                self.model, datamodule=self.datamodule, ckpt_path=self._checkpoint_to_test(), verbose=False
            )
            self._report("test")

    def _checkpoint_to_test(self) -> str | None:
        """The best checkpoint; without one (validation off, or no monitored value), the last
        checkpoint, or the weights in memory when none was saved; the log says which."""
        callback = self.trainer.checkpoint_callback
        if callback is not None and callback.best_model_path:
            return "best"
        if callback is not None and callback.last_model_path:
            rank_zero_info(
                f"test_after_fit: no validated best checkpoint; testing the last checkpoint {callback.last_model_path}"
            )
            return callback.last_model_path
        rank_zero_info("test_after_fit: no checkpoint was saved; testing the weights at the end of training")
        return None

    def before_validate(self) -> None:
        self._prepare_checkpoint()
        self._quiet_lightning_table()

    def before_test(self) -> None:
        self._prepare_checkpoint()
        self._quiet_lightning_table()

    def before_fit(self) -> None:
        self._prepare_checkpoint()
        write_run_record(self.trainer, self.command_line)
        if self.config[self.subcommand].get("test_after_fit"):
            self.datamodule.check_sources(
                ("train", "validation", "test")
            )  # a missing test file: now, not after training

    def before_predict(self) -> None:
        from pha_lightning.training.callbacks import FirstPredictionTime, JSONLPredictionWriter

        self._prepare_checkpoint()
        self.startup_marks["model load"] = time.perf_counter()
        config = self.config[self.subcommand]
        output = config.get("predict_output") or os.path.join(run_folder(self.trainer), "predictions.jsonl")
        self.datamodule.predict_start = self.predict_start
        writer = JSONLPredictionWriter(
            output,
            input_path=config.data.get("predict_file"),
            identity=prediction_identity(config),
            batch_size=self.datamodule.eval_batch_size,
            start=self.predict_start,
        )
        self.trainer.callbacks.extend([writer, FirstPredictionTime(self.startup_marks)])
        fix_mmap_threshold(config.get("predict_mmap_threshold"))
        # the writer keeps nothing; Lightning's own list of every prediction would grow with the file
        self.config_init[self.subcommand]["return_predictions"] = False

    # ------------------------------------------------------------------ checkpoints and bundles as inputs
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:  # noqa: ANN001
        """Before parsing: a ``--ckpt_path`` (checkpoint or bundle) on the command line supplies the
        defaults of ``data.*`` and ``model.*`` it was trained with, so ``pha predict --ckpt_path X
        --data.predict_file in.jsonl`` needs no config. Explicit options and configs still win, and a
        mismatch with the checkpoint is then reported (see ``_parse_ckpt_path``)."""
        #: the command line as run (``None``: given as a mapping), for the run's record
        self.command_line: list[str] | None = None
        if isinstance(args, (list, tuple)) or args is None:
            argv = list(sys.argv[1:] if args is None else args)
            self.command_line = ["pha", *argv]
            check_option_names(argv)
            for path in option_values(argv, "--config"):
                check_config_file(path)
            self._defaults_from_checkpoint(parser, argv)
        super().parse_arguments(parser, args)
        if self.config.get("subcommand"):
            check_run_settings(self.config[self.config.subcommand])

    def _defaults_from_checkpoint(self, parser: LightningArgumentParser, argv: list[str]) -> None:
        if not argv or argv[0] not in self.subcommands():
            return
        path = _option_value(argv, "--ckpt_path")
        if path is None or path in ("last", *LIGHTNING_CKPT_NAMES) or not os.path.exists(path):
            return
        for key, value in saved_defaults(self._read_saved(path)).items():
            try:
                parser.set_defaults({f"{argv[0]}.{key}": value})
            except KeyError:  # not a command-line setting
                continue

    def _read_saved(self, path: str) -> dict:
        """What a checkpoint or bundle was trained with (:func:`read_saved`), read once."""
        cached = getattr(self, "_saved", None)
        if cached is None or cached["path"] != path:
            self._saved = read_saved(path)
        return self._saved

    def _parse_ckpt_path(self) -> None:  # LightningCLI calls this private hook after parsing; no public one exists
        """Replaces LightningCLI's (which overrides the model config with the checkpoint's hyperparameters
        and fails with a traceback on a corrupt file): resolve ``last`` across the run's version folders
        and SLURM ``hpc_ckpt`` files, read the checkpoint or bundle safely, and check that it was trained
        on the tasks, backbone, method and architecture the configuration asks for."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = resolve_ckpt_path(config)
        if config.get("ckpt_path") == "last":
            config.ckpt_path = ckpt_path
        if not ckpt_path or ckpt_path in LIGHTNING_CKPT_NAMES:
            return
        if not os.path.exists(ckpt_path):
            raise ConfigError(f"ckpt_path {ckpt_path!r} does not exist")
        check_saved(self._read_saved(ckpt_path), config, subcommand, ckpt_path)

    def _prepare_checkpoint(self) -> None:
        """Load checkpoints with ``weights_only`` (no arbitrary unpickling); put a bundle's weights in place."""
        init = self.config_init[self.subcommand]
        if "weights_only" in init and init.get("weights_only") is None:
            init["weights_only"] = True
        saved = getattr(self, "_saved", None)
        if saved is not None and saved["kind"] == "bundle" and init.get("ckpt_path") == saved["path"]:
            self.model.model.load_bundle(saved["path"], saved["config"])
            init["ckpt_path"] = None

    def before_instantiate_classes(self) -> None:
        """Fail before anything starts when an output directory cannot be written."""
        if not self.subcommand:
            return
        config = self.config[self.subcommand]
        ensure_writable_dir(config.trainer.get("default_root_dir") or os.getcwd(), "trainer.default_root_dir")
        dirpath = config.get("checkpoint", {}).get("dirpath")
        if dirpath:
            ensure_writable_dir(dirpath, "checkpoint.dirpath")
        if self.subcommand == "predict" and config.get("predict_output"):
            check_predict_output(
                config.predict_output, config.data.get("predict_file"), config.get("ckpt_path"), config.get("overwrite")
            )
        if self.subcommand == "predict":
            check_mmap_threshold(config.get("predict_mmap_threshold"), "predict_mmap_threshold")
            self.predict_start = predict_start(config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with PHA's writers unless the configuration names its own: checkpoints written
        atomically (:class:`AtomicCheckpointIO`) and, for the default logger, a version folder claimed
        atomically (:class:`RunLogger`), so concurrent runs in one folder never share one; and, when
        the output is no terminal (a log file), progress as text lines (:class:`TextProgress`)."""
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("logger") in (None, True):
            kwargs.setdefault("logger", RunLogger(trainer.get("default_root_dir") or os.getcwd()))
        plugins = trainer.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        callbacks = trainer.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        bar_chosen = any(isinstance(callback, ProgressBar) for callback in callbacks)
        if trainer.get("enable_progress_bar") is not False and not bar_chosen and not sys.stdout.isatty():
            kwargs.setdefault("callbacks", [*callbacks, TextProgress()])  # a bar in a file shows nothing
        return super().instantiate_trainer(**kwargs)

    def _quiet_lightning_table(self) -> None:
        # Lightning repeats epoch-level metrics in one column per dataloader (one per task here);
        # the per-task table printed after the run replaces it.
        self.config_init[self.subcommand]["verbose"] = False

    def after_validate(self) -> None:
        self._report("val")

    def after_test(self) -> None:
        self._report("test")

    def _report(self, stage: str) -> None:
        # every rank asks: under DDP the log folder is broadcast from rank 0, a collective
        self._write_report(stage, run_folder(self.trainer))

    @rank_zero_only
    def _write_report(self, stage: str, log_dir: str) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
        print(format_metrics_table(metrics, stage), flush=True)
        path = atomic_write_text(
            Path(log_dir) / f"{stage}_metrics.json", json.dumps(metrics, indent=2, sort_keys=True), "metrics file"
        )
        print(f"wrote {path}", flush=True)


class TasksCLI(PHACLI):
    """The ``fit`` parser without a subcommand, building nothing: ``pha tasks`` only reads the data settings."""

    def instantiate_classes(self) -> None:
        """Nothing is built here: the data module is built from ``config.data`` by ``pha tasks``."""


def invoked_subcommand(args: object) -> str | None:
    """The first word of a command line given as a list (``pha fit …``: ``fit``), else ``None``."""
    return args[0] if isinstance(args, (list, tuple)) and args and isinstance(args[0], str) else None


def run_cli(
    args: list[str] | None,
    started_at: float | None = None,
    callbacks: Sequence[Callback] = (),
    other_commands: tuple[str, ...] = (),
) -> PHACLI:
    """``pha fit|validate|test|predict``: PHA's LightningCLI; ``started_at`` (``time.perf_counter()``
    when the command started) times ``pha predict``'s first prediction; ``callbacks`` join the
    trainer's (``pha sweep``'s pruning); ``other_commands`` (the entry point's, which imports this
    module) are named in the help. Returns the CLI, its trainer done."""
    # each setting's help text is the docstring under its dataclass field; reading those docstrings
    # (the classes' source, ≈ 1.5 s of CPU) is left out when no help is printed
    jsonargparse.set_parsing_settings(
        docstring_parse_attribute_docstrings=prints_help(sys.argv[1:] if args is None else args)
    )
    hide_library_noise()
    try:
        return _run_phacli(args, started_at, callbacks, other_commands)
    except SIGTERMException:  # Lightning's loops stopped at SIGTERM; SignalStop said what was kept
        raise SystemExit(SIGTERM_EXIT) from None


def main(args: list[str] | None, started_at: float, other_commands: tuple[str, ...]) -> None:
    """``pha fit|validate|test|predict`` as a process: :func:`run_cli`, then, once the CLI and its model
    (whose sharded parameters hold process groups too) are let go, the end of the process group
    (:func:`end_process_group`), also after the SIGTERM stop. After an error the group is left alone:
    destroying it waits for collectives in flight, which a lost peer would hold up."""
    status = None
    try:
        run_cli(args, started_at, other_commands=other_commands)
    except SystemExit as stop:  # the SIGTERM stop, --help, a refused command line
        status = stop.code
    end_process_group()
    if status is not None:
        raise SystemExit(status)


def _run_phacli(
    args: list[str] | None, started_at: float | None, callbacks: Sequence[Callback], other_commands: tuple[str, ...]
) -> PHACLI:
    """PHA's LightningCLI with its trainer defaults (every run's callbacks) and parser settings."""
    return PHACLI(
        PHAModule,
        PHADataModule,
        args=args,
        started_at=started_at,
        seed_everything_default=42,
        trainer_defaults={
            # the temperature batch sampler shards data across ranks itself
            "use_distributed_sampler": False,
            "callbacks": [
                LearningRateMonitor(logging_interval="step"),
                StepSeed(),  # exact resume: dropout randomness per (seed, epoch, batch, rank)
                NonFiniteGuard(),  # stop at the first NaN/inf loss, before it reaches weights or checkpoints
                Throughput(),  # throughput/examples_per_s, throughput/tokens_per_s
                RetrieverTaskAccuracy(),  # retriever/val_task_accuracy
                RetrievalProjector(),  # TensorBoard projector: validation z and prototypes, by task
                RoutingCalibration(),  # routing confidence, abstention threshold, confusable groups; reported after fit
                TrainingHealth(),  # health/*: adapter/residual ratios, collapse; <log_dir>/health.json
                FinalValidation(),  # a run shorter than val_check_interval still ends validated
                DataSizeAdvice(),  # once: the other generated adapter kind was measured ahead at this data size
                SignalStop(),  # SIGTERM: stop prediction too; say what was kept and how to resume
                SlurmRequeue(),  # under SLURM: the pre-emption signal checkpoints at a step boundary, then requeues
                *callbacks,
            ],
        },
        # PHAModule.configure_optimizers is the optimiser: LightningCLI's --optimizer would silently replace it
        auto_configure_optimizers=False,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        parser_class=PHAArgumentParser,
        parser_kwargs={
            "prog": "pha",  # also when run as python -m, or in-process
            "description": "PHA: Prototype-based HyperAdapter multi-task tuning of frozen transformers. "
            f"Other commands: {', '.join(f'pha {name} --help' for name in other_commands)}. "
            f"Sharded training of big backbones: --trainer.strategy={STRATEGY_NAME} (docs/production.md).",
        },
    )


def _option_value(argv: list[str], option: str) -> str | None:
    """The value of ``--option`` in a command line (the last one wins), or ``None``."""
    values = option_values(argv, option)
    return values[-1] if values else None
