"""Make result files portable before committing them: every machine path becomes ``<data dir>``,
``<checkout>/…``, ``<venv>/bin/…`` or ``<tmp>/…`` (benchmarks/README.md, "Records").

    python benchmarks/portable_results.py --data-dir <data dir> results/modern

Rows copied from a study that ran elsewhere (a frozen worktree, another machine) are rewritten in
place; files that hold no machine path are left untouched. ``--check`` only lists what would change.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studylib.portable import machine_paths, portable_text

#: the text formats results are committed in
TEXT_SUFFIXES = frozenset({".md", ".json", ".jsonl", ".yaml", ".txt", ".csv", ".log"})


def result_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if not path.exists():
            raise SystemExit(f"no file or folder {path}")
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        files += [f for f in candidates if f.is_file() and f.suffix in TEXT_SUFFIXES]
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="result files or folders")
    parser.add_argument("--data-dir", action="append", default=[], help="a data folder named in the results")
    parser.add_argument("--check", action="store_true", help="list the files that hold machine paths; change nothing")
    args = parser.parse_args()
    changed = 0
    for path in result_files(args.paths):
        text = path.read_text()
        portable = portable_text(text, args.data_dir)
        if portable != text:
            changed += 1
            print(f"{path}: {len(machine_paths(text))} machine path(s){'' if args.check else ' replaced'}")
            if not args.check:
                path.write_text(portable)
    print(f"{changed} file(s) {'hold machine paths' if args.check else 'rewritten'}")


if __name__ == "__main__":
    main()
