"""Checks of user inputs that would otherwise fail late, deep inside a run, or half-way through a write."""

from __future__ import annotations

import codecs
import math
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from numbers import Real
from pathlib import Path
from typing import Any, get_args

from pha_lightning.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric setting: finite, between optional bounds (open ends exclude
    the bound), an integer when ``integer``, and ``None`` too when ``optional``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False

    def describe(self) -> str:
        """``>= 1``, ``in (0, 100]``, ``> 0 or None``: what the error message says is valid."""
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {self.high}"
        else:
            text = "finite"
        return text + (" or None" if self.optional else "")

    def has_type(self, value: object) -> bool:
        """An ``int`` (a bool is none) for integer settings, any real number otherwise."""
        return not isinstance(value, bool) and isinstance(value, int if self.integer else Real)

    def contains(self, value: object) -> bool:
        if value is None:
            return self.optional
        if not self.has_type(value) or not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


@dataclass(frozen=True)
class Choice:
    """The valid values of a string setting (the same interface as :class:`Range`)."""

    values: tuple[str, ...]

    @classmethod
    def of(cls, literal: Any) -> Choice:
        """The values of a ``Literal`` type, which the CLI parses too: declared once, as the type."""
        return cls(get_args(literal))

    def describe(self) -> str:
        return f"one of {list(self.values)}"

    def contains(self, value: object) -> bool:
        return value in self.values


#: Ranges most settings share: a size or count, a positive or non-negative number, a fraction (dropout, ε).
SIZE = Range(1, integer=True)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, high_open=True)
#: What random generators accept as a seed (numpy's and Lightning's ``seed_everything``: unsigned 32-bit).
SEED = Range(0, 2**32 - 1, integer=True)


def check_range(name: str, value: object, valid: Range | Choice) -> None:
    """A ConfigError naming the setting, its value and the valid range, unless ``value`` is valid.

    Called by constructors, so a bad constant is one clear line when the configuration is read,
    not a tensor error (or a silent NaN) deep inside a run."""
    if valid.contains(value):
        return
    if isinstance(valid, Choice):
        raise ConfigError(f"unknown {name} {value!r}; valid: {list(valid.values)}")
    kind = ("an integer " if valid.integer else "a number ") if value is not None and not valid.has_type(value) else ""
    raise ConfigError(f"{name} must be {kind}{valid.describe()}, got {value!r}")


def check_ranges(prefix: str, ranges: Mapping[str, Range | Choice], values: Mapping[str, object]) -> None:
    """:func:`check_range` for every setting of ``ranges``, named ``<prefix>.<setting>``."""
    for key, valid in ranges.items():
        check_range(f"{prefix}.{key}", values[key], valid)


def setting(
    default: Any = MISSING, valid: Range | Choice | None = None, *, factory: Any = MISSING, **metadata: Any
) -> Any:
    """A dataclass field whose valid values (and any other ``metadata``, e.g. ``structural``) live on it:
    the one place a setting is declared; :func:`check_settings` reads ``valid``."""
    return field(default=default, default_factory=factory, metadata={"valid": valid, **metadata})


def valid_values(cls: type) -> dict[str, Range | Choice]:
    """The declared valid values of every setting of a dataclass (those that declare any)."""
    return {f.name: f.metadata["valid"] for f in fields(cls) if f.metadata.get("valid") is not None}


def check_settings(prefix: str, cls: type, values: Mapping[str, object]) -> None:
    """Check each of ``values`` that ``cls`` (a dataclass of :func:`setting` fields) declares valid
    values for, named ``<prefix>.<setting>``; called by the dataclass itself and by the CLI right
    after parsing, so a bad value is one line before anything is built."""
    declared = valid_values(cls)
    check_ranges(prefix, {key: declared[key] for key in declared if key in values}, values)


def field_flag(cls: type, flag: str) -> tuple[str, ...]:
    """The settings of a dataclass whose metadata sets ``flag`` (e.g. ``structural``)."""
    return tuple(f.name for f in fields(cls) if f.metadata.get(flag))


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create ``path`` if needed and prove a file can be written in it; a clear error otherwise."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".pha-write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to {what} {str(path)!r}: {err.strerror or err}") from None
    return path


def undecodable_bytes(path: str | os.PathLike, encoding: str) -> tuple[int, str]:
    """``(line, problem)`` for the first bytes of ``path`` that ``encoding`` cannot decode, the
    problem saying what to do. Re-reads the file line by line: a UnicodeDecodeError only knows its
    offset inside the chunk being decoded, not the line."""
    name = "UTF-8" if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig") else encoding
    decoder = codecs.getincrementaldecoder(encoding)()
    advice = "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 IN > OUT, if it was written as Latin-1)"
    number = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as err:
                return (
                    number,
                    f"byte {err.start + 1} of the line ({line[err.start : err.end]!r}) is not valid {name}; {advice}",
                )
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return number, f"the file ends inside a {name} character (cut short?); {advice}"
    return number, f"the file is not valid {name}; {advice}"  # not reached for a file that failed to decode


def check_text_file(path: str | os.PathLike, what: str) -> None:
    """A ConfigError naming the file and line when ``path`` (if it exists) is not UTF-8 text: the
    reader further on would fail with a bare UnicodeDecodeError."""
    try:
        Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        line, problem = undecodable_bytes(path, "utf-8")
        raise ConfigError(f"{what} {str(path)!r}, line {line}: {problem}") from None
    except OSError:
        return  # a missing or unreadable file is reported by the reader itself


def weights_only_failure(err: BaseException) -> str | None:
    """Why ``torch.load(weights_only=True)`` did not load a file, as the predicate of a sentence naming
    the file; ``None`` when ``err`` is no such failure. torch's own text is a paragraph that advises
    loading the file again with ``weights_only=False``: the opposite of what a user with an untrusted
    file should do. A file that asks to build objects (a pickled class or function) is refused; any
    other (damaged, or not a checkpoint) cannot be read."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|Please use|\n\s*\n|$)", str(err), re.DOTALL)
    reason = " ".join(found.group(1).split()) if found else " ".join(str(err).split()[:12])
    if reason.startswith("Unsupported global"):
        return f"is refused: it holds more than tensors and plain values ({reason}), and unpickling the rest could run any code"
    return f"cannot be read (not a weights-only pickle: {reason})"
