"""Command-line parsers whose errors are one ``pha: error: …`` line (exit status 2), like every other
error of the ``pha`` command: argparse and jsonargparse print the whole usage (for ``pha fit``,
over a hundred lines) before the one line that says what is wrong."""

from __future__ import annotations

import argparse
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from pha_lightning.errors import ConfigError


def one_line_error(prog: str, message: str) -> ConfigError:
    """The parser's message on one line, with where the valid options are listed."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return ConfigError(f"{text} (`{prog.replace(' [options]', '')} --help` lists the valid options)")


class CommandParser(argparse.ArgumentParser):
    """The parser of ``pha export`` and ``pha retrieve``."""

    def error(self, message: str) -> NoReturn:
        raise one_line_error(self.prog, message)


class PHAArgumentParser(LightningArgumentParser):
    """The parser of ``pha fit|validate|test|predict`` (and of each subcommand)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse parsing tentatively: it handles the error itself
            super().error(message, ex)
        subcommand_parser = getattr(ex, "subcommand_parser", None) or self
        raise one_line_error(subcommand_parser.prog, message) from None
