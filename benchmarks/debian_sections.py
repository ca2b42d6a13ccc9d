"""Build the ``debian_sections`` task of the transfer-defaults study from Debian's package index.

A task unlike every source of the 18-task mix: the one-line synopsis of a Debian package (software
descriptions, a domain none of the sources has) labelled with its archive section. Six sections
whose names say what the software is for: games, graphics, mail, net, science, sound.

    apt-get update   # the index this reads; the study used bookworm main amd64
    python benchmarks/debian_sections.py <data dir>/debian/sections.jsonl

The file goes to the data folder, never into the repository: the task spec of
``results/transfer_defaults/targets.yaml`` reads it as ``debian/sections.jsonl`` under ``--data.data_dir``.

Synopses that occur in more than one section are dropped (their label is ambiguous), each synopsis
is kept once, and each section is capped at 600 rows drawn with seed 0.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
from collections import defaultdict
from pathlib import Path

SECTIONS = ("games", "graphics", "mail", "net", "science", "sound")
PER_SECTION = 600


def records(text: str) -> list[dict[str, str]]:
    """The ``Section`` and ``Description`` synopsis of every stanza of ``apt-cache dumpavail``."""
    rows = []
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if "Section" in fields and "Description" in fields:
            rows.append({"section": fields["Section"].rsplit("/", 1)[-1], "synopsis": fields["Description"].strip()})
    return rows


def build(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The task's rows: synopses of one section only, each once, at most ``PER_SECTION`` a section."""
    labels: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        labels[row["synopsis"]].add(row["section"])
    by_section: dict[str, list[str]] = defaultdict(list)
    for synopsis, sections in sorted(labels.items()):
        (section,) = sections if len(sections) == 1 else (None,)
        if section in SECTIONS:
            by_section[section].append(synopsis)
    rng = random.Random(0)
    out = []
    for section in SECTIONS:
        chosen = by_section[section]
        rng.shuffle(chosen)
        out += [{"synopsis": synopsis, "section": section} for synopsis in chosen[:PER_SECTION]]
    rng.shuffle(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="the JSON Lines file to write: <data dir>/debian/sections.jsonl")
    path = parser.parse_args().output
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    rows = build(records(dump))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    counts = {s: sum(r["section"] == s for r in rows) for s in SECTIONS}
    print(f"{path}: {len(rows)} rows {counts}")


if __name__ == "__main__":
    main()
