"""Errors that mean "the user asked for something that cannot work", reported without a traceback.

The ``pha`` command prints these as one clear message and exits with status 2; everything else
(a bug) keeps its traceback.
"""

from __future__ import annotations

#: ``pha``'s exit status after SIGTERM (every command, docs/production.md, "Signals"): 128 + 15, what a
#: shell reports for a process SIGTERM ended
SIGTERM_EXIT = 143


class PHAError(Exception):
    """Base class of the errors the ``pha`` command reports as a plain message."""


class ConfigError(PHAError, ValueError):
    """A configuration value is invalid; the message names it and what would be valid."""


class DataError(PHAError, RuntimeError):
    """Data cannot be loaded: a missing file, a malformed row, an unreachable hub."""


class OutputError(PHAError):
    """An output cannot be written (a full disk, a read-only or vanished directory); names the path."""
