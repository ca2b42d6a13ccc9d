"""Writing outputs so that a fault (a full disk, a kill) never leaves a half-written file under its
final name, and an ``OSError`` is one :class:`~pha_lightning.errors.OutputError` naming the path."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pha_lightning.errors import OutputError


def public_mode(mode: int = 0o666) -> int:
    """``mode`` under the process's umask: ``mkstemp``/``mkdtemp`` create private files (0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextmanager
def reported_write(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``what`` at ``path`` into one OutputError line."""
    try:
        yield
    except OSError as err:
        raise OutputError(f"cannot write {what} {str(path)!r}: {err.strerror or err}") from None


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None], what: str) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary sibling, flushed to disk, then renamed
    into place: readers see the old file or the whole new one, never a part; nothing is left behind
    when writing fails."""
    path = Path(path)
    with reported_write(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, public_mode())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, what: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")), what)


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in blocks (bundle weights, cache files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
