"""Writing outputs so that a fault (a full disk, a kill) never leaves a half-written file or
directory under its final name, and an ``OSError`` is one :class:`~pha_lightning.errors.OutputError`
naming the path. Every writer of the package goes through :func:`atomic_write` (a file written
through a handle), :func:`atomic_directory` (a directory of files) or :func:`atomic_replacement`
(a file written by a library that takes a file name)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from safetensors import SafetensorError

from pha_lightning.errors import OutputError, PHAError


def public_mode(mode: int = 0o666) -> int:
    """``mode`` under the process's umask: ``mkstemp``/``mkdtemp`` create private files (0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextmanager
def reported_write(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``what`` at ``path`` into one OutputError line, also
    when a library reports it as another error raised while handling it (torch's zip writer, datasets)."""
    try:
        yield
    except SafetensorError as err:  # safetensors reports a full disk as its own error
        raise OutputError(f"cannot write {what} {str(path)!r}: {_io_reason(err)}") from None
    except Exception as err:
        cause = os_error_behind(err)
        if cause is None:
            raise
        raise OutputError(f"cannot write {what} {str(path)!r}: {cause.strerror or cause}") from None


def os_error_behind(err: BaseException) -> OSError | None:
    """``err`` itself or the exception it was raised while handling, if that is an ``OSError``
    (not a PHAError: it has been reported already)."""
    chain: BaseException | None = err
    while chain is not None and not isinstance(chain, PHAError):
        if isinstance(chain, OSError):
            return chain
        chain = chain.__context__
    return None


def _io_reason(err: SafetensorError) -> str:
    """The operating system's words for the error number inside a SafetensorError (``… (os error 28)``)."""
    found = re.search(r"os error (\d+)|code: (\d+)", str(err))
    return os.strerror(int(found.group(1) or found.group(2))) if found else str(err)


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


@contextmanager
def atomic_replacement(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name to write ``path`` at, in a new private folder beside it (on the same file
    system, with room for the writer's own temporaries); renamed to ``path`` (replacing a file, or a
    whole directory) when the block ends without an error. The folder, with whatever is left in it,
    is removed either way. An ``OSError`` is not reported here: wrap in :func:`reported_write`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        temporary = folder / path.name
        yield temporary
        if temporary.is_dir() and path.exists():  # a rename replaces a file or an empty directory only
            os.replace(path, folder / f"{path.name}.old")
        os.replace(temporary, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_directory(path: str | os.PathLike, write_files: Callable[[Path], None], what: str) -> Path:
    """Write the directory ``path`` through ``write_files(folder)`` into a temporary sibling, then
    rename it into place (:func:`atomic_replacement`): readers never see a part of one. The
    directory and its files get the usual permissions under the umask (:func:`public_mode`)."""
    path = Path(path)
    with reported_write(path, what), atomic_replacement(path) as folder:
        folder.mkdir()
        write_files(folder)
        for file in folder.iterdir():
            file.chmod(public_mode())  # some writers create private files (safetensors: 0600)
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
