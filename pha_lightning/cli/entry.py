"""The ``pha`` console entry point: the table of commands, and dispatch to the one asked for.

This module imports only the standard library, so ``pha``, ``pha --help`` and ``pha --version``
answer at once; torch, Lightning and transformers are imported by the command that needs them
(``pha fit`` and its siblings by :mod:`pha_lightning.cli.app`). ``pha <command> --help`` is served
from the help cache (:mod:`pha_lightning.cli.help_cache`) after its first call. docs/usage.md,
"Start-up", says what each path costs.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import importlib
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

from pha_lightning import __version__
from pha_lightning.cli.help_request import HELP_FLAGS
from pha_lightning.cli.threads import choose_threads
from pha_lightning.errors import PHAError


class Command(NamedTuple):
    """A command of ``pha``: the module whose ``main(argv)`` runs it, and its line in ``pha --help``."""

    module: str
    summary: str


#: LightningCLI's subcommands over the training system and the data module (:mod:`pha_lightning.cli.app`)
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train on data.tasks; checkpoints select on val/avg (Lightning: runs the full optimization routine)",
    "validate": "evaluate a checkpoint or bundle on the validation splits; per-task metrics table and JSON",
    "test": "evaluate a checkpoint or bundle on the test splits; per-task metrics table and JSON",
    "predict": "predict raw JSONL examples (data.predict_file) or the test splits, from a checkpoint or bundle",
}

#: Commands beside LightningCLI's fit/validate/test/predict.
EXTRA_COMMANDS: dict[str, Command] = {
    "retrieve": Command("pha_lightning.cli.retrieve", "which trained tasks new tasks resemble, by the retriever"),
    "export": Command("pha_lightning.cli.export", "a checkpoint's portable bundle, or peft / AdapterHub adapters"),
    "calibrate": Command(
        "pha_lightning.cli.calibrate",
        "refit a checkpoint's routing (abstention threshold; a probe on unlabelled texts with --unlabelled_per_task)",
    ),
    "sweep": Command("pha_lightning.cli.sweep", "search pha fit settings with Optuna; best.yaml and a table of trials"),
    "tasks": Command("pha_lightning.cli.tasks", "the built-in tasks; with --config, a configuration's tasks checked"),
    "serve": Command(
        "pha_lightning.cli.serve", "an HTTP server (LitServe) of a bundle or checkpoint: mixed-task batches, routing"
    ),
}

#: Commands that compute with torch, for which ``pha`` chooses the thread count (:mod:`pha_lightning.cli.threads`).
COMPUTING_COMMANDS: tuple[str, ...] = (*LIGHTNING_COMMANDS, "retrieve", "calibrate", "serve")

DESCRIPTION = "PHA: Prototype-based HyperAdapter multi-task tuning of frozen transformers."
#: the sharded strategy's name is training.sharding.STRATEGY_NAME; LightningCLI's help shows it too, and
#: tests/cli/test_startup.py checks that this table names every option that help does
SHARDING_HINT = "Sharded training of big backbones: --trainer.strategy=pha_fsdp (docs/production.md)."

#: ``OSError`` numbers that mean the storage, not the program, failed: full, over quota, read-only, broken.
STORAGE_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


#: Options naming a file that pha reads more than once (checked, then parsed): a pipe given to one
#: (``--config <(...)``) would be empty the second time, so :func:`read_pipes` reads it once.
FILE_OPTIONS: tuple[str, ...] = ("-c", "--config", "--data.task_specs", "--task_specs")


def command_table() -> argparse.ArgumentParser:
    """The top-level parser as ``pha --help`` shows it: LightningCLI's options before a subcommand, and
    every command with its summary. Only ``--help`` and ``--version`` are parsed by it; any other
    command line goes to its command's own parser."""
    parser = argparse.ArgumentParser(prog="pha", description=f"{DESCRIPTION} {SHARDING_HINT}")
    parser.add_argument(
        "-c",
        "--config",
        help="fit/validate/test/predict: a configuration file in json or yaml format (before the command)",
    )
    parser.add_argument(
        "--print_config",
        metavar="=flags",
        nargs="?",
        help="fit/validate/test/predict: print the configuration after applying all other arguments and exit; "
        "flags: skip_default, skip_unset",
    )
    parser.add_argument("--version", action="version", version=f"pha {__version__}")
    commands = parser.add_subparsers(
        title="commands", description="`pha <command> --help` lists its options", metavar="<command>"
    )
    for name, summary in all_commands().items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def all_commands() -> dict[str, str]:
    """Every command of ``pha`` and its summary, in the order ``pha --help`` lists them."""
    return {**LIGHTNING_COMMANDS, **{name: command.summary for name, command in EXTRA_COMMANDS.items()}}


def main(args: list[str] | None = None) -> None:
    """Console entry point of ``pha``."""
    started_at = time.perf_counter()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run_command(args, started_at)
    except Exception as err:
        if not report_error(err):
            raise
        raise SystemExit(2) from None


def run_command(args: list[str] | None, started_at: float) -> None:
    """``pha --help``/``--version`` here; ``pha <command> --help`` through the help cache; the rest by its
    command. ``args``: the command line after ``pha`` (``None``: ``sys.argv``)."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv:
        raise PHAError(f"a command is required, one of {', '.join(all_commands())} (`pha --help` describes them)")
    if len(argv) == 1 and argv[0] in (*HELP_FLAGS, "--version"):
        command_table().parse_args(argv)  # prints and exits
    piped = read_pipes(argv)
    if piped != argv:  # LightningCLI, and the launcher of a multi-device run, read sys.argv
        argv = piped
        if args is None:
            sys.argv[1:] = piped
        else:
            args = piped
    run = command_runner(argv, args, started_at)
    if len(argv) == 2 and argv[0] in all_commands() and argv[1] in HELP_FLAGS:
        from pha_lightning.cli.help_cache import print_help

        print_help(argv[0], run)
    else:
        if argv[0] in COMPUTING_COMMANDS:
            choose_threads()
        run()


def read_pipes(argv: list[str]) -> list[str]:
    """``argv`` with each pipe or FIFO given to a :data:`FILE_OPTIONS` option read once into a regular
    file (in a temporary folder removed at exit) that replaces it: every reader, and the processes a
    multi-device run starts with the same command line, then sees the whole text."""
    out, folder = list(argv), None
    for index, token in enumerate(argv):
        option, _, inline = token.partition("=")
        if option not in FILE_OPTIONS or (not inline and index + 1 == len(argv)):
            continue
        position, path = (index, inline) if inline else (index + 1, argv[index + 1])
        try:
            if not stat.S_ISFIFO(os.stat(path).st_mode):
                continue
            with open(path, "rb") as pipe:
                content = pipe.read()
        except OSError:
            continue  # not a readable file: its reader names it
        if folder is None:
            folder = tempfile.mkdtemp(prefix="pha-pipes-")
            atexit.register(shutil.rmtree, folder, True)
        copy = os.path.join(folder, f"{len(os.listdir(folder))}-{option.lstrip('-')}.yaml")
        with open(copy, "wb") as file:
            file.write(content)
        out[position] = f"{option}={copy}" if inline else copy
    return out


def command_runner(argv: list[str], args: list[str] | None, started_at: float) -> Callable[[], None]:
    """What runs the command line ``argv``: an extra command's ``main``, or the LightningCLI (also for
    the options before a subcommand, e.g. ``pha -c config.yaml fit``), given ``args`` as they came
    (LightningCLI warns when given the arguments it would read from ``sys.argv``)."""
    if argv[0] in EXTRA_COMMANDS:
        return lambda: importlib.import_module(EXTRA_COMMANDS[argv[0]].module).main(argv[1:])
    return lambda: importlib.import_module("pha_lightning.cli.app").main(
        args, started_at, other_commands=tuple(EXTRA_COMMANDS)
    )


def report_error(err: Exception) -> bool:
    """Print a user error as one ``pha: error: …`` line; ``False`` for a bug (it keeps its traceback)."""
    if is_user_error(err):
        print(f"pha: error: {err}", file=sys.stderr)
    elif isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
        # a writer that is not pha's own (TensorBoard's event files, Lightning's config.yaml)
        print(f"pha: error: cannot write {err.filename or 'an output file'}: {err.strerror}", file=sys.stderr)
    else:
        return False
    return True


def is_user_error(err: Exception) -> bool:
    """A :class:`PHAError`, or Lightning's ``MisconfigurationException`` (a trainer setting that cannot
    work). Lightning's module is looked up, not imported: when it is not loaded, nothing raised it."""
    lightning_errors = sys.modules.get("lightning.fabric.utilities.exceptions")
    return isinstance(err, PHAError) or (
        lightning_errors is not None and isinstance(err, lightning_errors.MisconfigurationException)
    )
