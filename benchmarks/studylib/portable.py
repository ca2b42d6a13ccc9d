"""Committed results name no machine's paths: a data folder becomes ``<data dir>``, a file of a
checkout (this one, another worktree, an older commit's tree) ``<checkout>/…``, a virtual
environment's program ``<venv>/bin/…`` and a temporary folder ``<tmp>/…``
(benchmarks/README.md, "Records")."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

#: the folder that holds this checkout (and its sibling worktrees and data, wherever a machine put them)
CHECKOUTS = str(Path(__file__).resolve().parents[3])
#: an absolute path under a folder that only exists on one machine (up to a quote, space, bracket,
#: comma, backslash or backtick); ``<checkout>/x`` and relative paths do not match
MACHINE_PATH = re.compile(
    r"(?<![\w<>.~-])(?:/(?:work|tmp|root|home|Users|scratch|srv|mnt)|"
    + re.escape(CHECKOUTS)
    + r")/[^\s\"'`()\[\],;\\]*"
)
#: a data folder named by a setting or a flag: ``data_dir=X``, ``data_dir: X``, ``--data-dir X``
DATA_DIR_SETTING = re.compile(r"(data_dir[=:]\s*|--data-dir[= ])(/[^\s\"'`()\[\],;\\]+)")
#: entries of a checkout's top folder: a path through one of them is a checkout's file
CHECKOUT_ENTRIES = frozenset({".venv", "benchmarks", "configs", "docs", "pha_lightning", "results", "scripts", "tests"})
#: the first folders of the local data layout (docs/data.md): the path up to one is a data folder
DATA_FOLDERS = frozenset({"glue", "superglue", "classic"})


def portable_path(path: str, data_dirs: Iterable[str] = ()) -> str:
    """``path`` (absolute, of this machine) with its machine-specific part replaced by a placeholder."""
    for folder in sorted((d.rstrip("/") for d in data_dirs), key=len, reverse=True):
        if path == folder or path.startswith(folder + "/"):
            return "<data dir>" + path[len(folder) :]
    parts = path.strip("/").split("/")
    for i, part in enumerate(parts[1:], 1):
        if part in DATA_FOLDERS:
            return "/".join(["<data dir>", *parts[i:]])
        if part in CHECKOUT_ENTRIES:
            return "/".join(["<checkout>", *parts[i:]])
    if "bin" in parts[1:]:
        return "/".join(["<venv>", *parts[parts.index("bin", 1) :]])
    if parts[0] == "tmp":
        return "/".join(["<tmp>", *parts[1:]])
    if path.startswith(CHECKOUTS + "/"):  # <checkouts>/<worktree>/…: a checkout of the project
        return "/".join(["<checkout>", *path[len(CHECKOUTS) + 1 :].split("/")[1:]])
    return "/".join(["<checkout>", *parts[2:]])  # /work/<worktree>/…


def portable_text(text: str, data_dirs: Iterable[str] = ()) -> str:
    """``text`` with every machine path replaced (:func:`portable_path`); data folders named by a
    ``data_dir`` setting or a ``--data-dir`` flag count as data folders wherever they appear."""
    dirs = {*data_dirs, *(m.group(2).rstrip("/") for m in DATA_DIR_SETTING.finditer(text))}
    text = DATA_DIR_SETTING.sub(lambda m: m.group(1) + "<data dir>", text)
    return MACHINE_PATH.sub(lambda m: portable_path(m.group(0), dirs), text)


def machine_paths(text: str) -> list[str]:
    """The machine paths ``text`` still holds (none in a committed result)."""
    return MACHINE_PATH.findall(text)
