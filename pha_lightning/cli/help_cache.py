"""The help cache: ``pha <command> --help`` printed from a file after its first call.

Rendering ``pha fit --help`` imports Lightning, torch and transformers and builds LightningCLI's
parser from the classes' signatures and docstrings (about 11 s of CPU here, see
``results/startup/``); none of that can be deferred, since the help text is made of it. The text is
therefore stored under a key of everything it depends on: the command, pha's version and the
contents of its source files, the versions of Python and of the packages the parser reads, the
terminal width and the environment variables jsonargparse, Lightning and the locale read. A file is
written atomically and only after the command printed its help and exited with status 0; a cache
directory that cannot be written or read is no error, the help is then rendered every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pha_lightning
from pha_lightning.errors import PHAError
from pha_lightning.files import atomic_write_text

#: the cache directory; empty: no cache (default: $XDG_CACHE_HOME/pha-lightning or ~/.cache/pha-lightning)
CACHE_DIR_ENV = "PHA_CACHE_DIR"
#: distributions whose code or docstrings make up the help text
HELP_DISTRIBUTIONS: tuple[str, ...] = (
    "lightning",
    "jsonargparse",
    "docstring-parser",
    "typeshed-client",
    "torch",
    "transformers",
)
#: prefixes of the environment variables the help text may depend on (jsonargparse's, Lightning's, the locale)
HELP_ENV_PREFIXES: tuple[str, ...] = ("JSONARGPARSE_", "PL_", "LC_", "LANG")


def cache_dir() -> Path | None:
    """Where help texts are cached, or ``None`` when ``PHA_CACHE_DIR`` is set empty."""
    chosen = os.environ.get(CACHE_DIR_ENV)
    if chosen is not None:
        return Path(chosen).expanduser() if chosen else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pha-lightning"


def source_digest() -> str:
    """SHA-256 of the contents of every ``.py`` file of pha_lightning, with their paths."""
    root = Path(pha_lightning.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def help_key(command: str) -> str:
    """The key of ``pha <command> --help``'s text: a digest of everything the text depends on."""
    parts = [
        command,
        pha_lightning.__version__,
        source_digest(),
        sys.version,
        *(f"{name}={installed_version(name)}" for name in HELP_DISTRIBUTIONS),
        f"columns={shutil.get_terminal_size().columns}",
        *sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(HELP_ENV_PREFIXES) or k == "COLUMNS"),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def cache_file(command: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / f"help-{command}-{help_key(command)[:32]}.txt"


def print_help(command: str, render: Callable[[], None]) -> None:
    """Print ``pha <command> --help`` from the cache, or through ``render`` (which prints the help
    and exits), storing what it printed. Exits with status 0 either way, as ``render`` does."""
    path = cache_file(command)
    cached = read_cached(path)
    if cached is not None:
        sys.stdout.write(cached)
        raise SystemExit(0)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            render()
    except SystemExit as exit_status:
        if exit_status.code in (0, None) and path is not None:
            store(path, printed.getvalue())
        raise
    finally:
        sys.stdout.write(printed.getvalue())


def read_cached(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def store(path: Path, text: str) -> None:
    """Write the help text atomically and drop the command's stale entries; a failure is ignored."""
    try:
        atomic_write_text(path, text, "help cache file")
    except PHAError:
        return
    for stale in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.txt"):
        if stale != path:
            with contextlib.suppress(OSError):
                stale.unlink(missing_ok=True)
