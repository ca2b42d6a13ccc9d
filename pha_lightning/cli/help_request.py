"""Whether a command line asks for help: apart from the entry point and the CLI so that both can
ask without importing each other."""

from __future__ import annotations

#: the options that print a command's help
HELP_FLAGS: tuple[str, ...] = ("-h", "--help")


def prints_help(args: object) -> bool:
    """Whether a command line asks for text made of the settings' descriptions: ``-h``/``--help``, a
    class's ``--<key>.help``, or ``--print_config`` (whose ``comments`` form has them). Only then does
    LightningCLI's parser read the docstrings under each setting (the classes' source: ≈ 1.5 s of CPU)."""
    if not isinstance(args, (list, tuple)):
        return True  # a mapping of settings (in-process use): read as it always was
    options = [str(token).split("=", 1)[0] for token in args if str(token).startswith("-")]
    return any(
        option in HELP_FLAGS or option.startswith("--print_config") or option.endswith(".help") for option in options
    )
