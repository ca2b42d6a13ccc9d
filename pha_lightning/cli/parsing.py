"""Command-line parsers whose errors are one ``pha: error: …`` line (exit status 2), like every other
error of the ``pha`` command: argparse and jsonargparse print the whole usage (for ``pha fit``,
over a hundred lines) before the one line that says what is wrong.

``pha export`` and ``pha retrieve`` take ``--config`` (a YAML file of their own options) and
``--print_config`` like LightningCLI's subcommands: the file's settings come first and the command
line's win.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import jsonargparse
import yaml

from pha_lightning.errors import ConfigError
from pha_lightning.validation import check_text_file

#: the options every :class:`CommandParser` adds itself
OWN_OPTIONS = ("config", "print_config")


def one_line_error(prog: str, message: str) -> ConfigError:
    """The parser's message on one line, with where the valid options are listed."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return ConfigError(f"{text} (`{prog.replace(' [options]', '')} --help` lists the valid options)")


def option_values(argv: Sequence[str], option: str) -> list[str]:
    """Every value of ``--option value`` or ``--option=value`` in a command line, in order."""
    values = []
    for index, token in enumerate(argv):
        if token == option and index + 1 < len(argv):
            values.append(argv[index + 1])
        elif token.startswith(option + "="):
            values.append(token.split("=", 1)[1])
    return values


class CommandParser(argparse.ArgumentParser):
    """The parser of ``pha export`` and ``pha retrieve``: one-line errors, ``--config``, ``--print_config``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--config",
            action="append",
            metavar="FILE",
            help="a YAML file of this command's options (keys as the option names, e.g. 'ckpt_path: a.ckpt'); "
            "given options win; may be repeated",
        )
        self.add_argument("--print_config", action="store_true", help="print the resolved options as YAML and exit")

    def error(self, message: str) -> NoReturn:
        raise one_line_error(self.prog, message)

    def parse_args(self, args: Sequence[str] | None = None, namespace: None = None) -> argparse.Namespace:  # type: ignore[override]
        """Options from the ``--config`` files, then the command line; ``--print_config`` prints them and exits."""
        argv = list(sys.argv[1:] if args is None else args)
        from_files = [token for path in option_values(argv, "--config") for token in self.config_tokens(path)]
        parsed = super().parse_args([*from_files, *argv])
        if parsed.print_config:
            print(yaml.safe_dump(self.settings(parsed), sort_keys=False), end="")
            raise SystemExit(0)
        return parsed

    def options(self) -> dict[str, argparse.Action]:
        """This command's options by name, without ``--config`` and ``--print_config``."""
        return {
            action.dest: action
            for action in self._actions
            if action.option_strings and action.dest not in (*OWN_OPTIONS, "help")
        }

    def settings(self, parsed: argparse.Namespace) -> dict[str, Any]:
        """The parsed options as plain YAML values (a file ``--config`` reads back)."""
        return {
            name: str(value) if isinstance(value, Path) else value
            for name, value in vars(parsed).items()
            if name in self.options()
        }

    def config_tokens(self, path: str) -> list[str]:
        """A config file's settings as command-line tokens (``None``: the default)."""
        loaded = read_config_mapping(path, f"{self.prog}'s options to values, e.g. 'ckpt_path: model.ckpt'")
        if loaded is None:
            raise ConfigError(f"config file {path!r} does not exist or cannot be read")
        options = self.options()
        unknown = [str(key) for key in loaded if key not in options]
        if unknown:
            raise ConfigError(
                f"config file {path!r}: {unknown} are not options of {self.prog}; valid: {sorted(options)}"
            )
        return [token for key, value in loaded.items() for token in _tokens(path, options[key], value)]


def read_config_mapping(path: str, maps: str) -> dict[str, Any] | None:
    """A YAML config file's mapping (``{}`` when empty); ``None`` when it cannot be read. One
    :class:`ConfigError` naming the file for text that is not UTF-8 or YAML, or not a mapping
    (a config file maps ``maps``)."""
    check_text_file(path, "config file")
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError:
        return None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path!r}: its top level is a {type(loaded).__name__}, not a mapping; a config file maps {maps}"
        )
    return loaded or {}


def _tokens(path: str, action: argparse.Action, value: Any) -> list[str]:
    """``--name value`` (or a list, or a flag) as the command line would give it."""
    flag = action.option_strings[0]
    if value is None:
        return []
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ConfigError(f"config file {path!r}: {action.dest} is a flag: true or false, got {value!r}")
        return [flag] if value else []
    if isinstance(value, list):
        if action.nargs not in ("+", "*"):
            raise ConfigError(f"config file {path!r}: {action.dest} takes one value, got the list {value!r}")
        return [flag, *(str(item) for item in value)] if value else []
    if isinstance(value, dict):
        raise ConfigError(f"config file {path!r}: {action.dest} takes a value, got the mapping {value!r}")
    return [f"{flag}={value}"]


class OneLineArgumentParser(jsonargparse.ArgumentParser):
    """A jsonargparse parser with one-line errors: ``pha serve``'s, and the base of LightningCLI's
    (``pha fit|validate|test|predict``, :class:`pha_lightning.cli.app.PHAArgumentParser`). This
    module imports no Lightning, so ``pha serve``'s main process, which LitServe forks its HTTP
    processes from, does not hold it."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse parsing tentatively: it handles the error itself
            super().error(message, ex)
        subcommand_parser = getattr(ex, "subcommand_parser", None) or self
        raise one_line_error(subcommand_parser.prog, message) from None
