"""The tokenised-data cache: what a split's tokens depend on, and its Arrow files on disk.

A split's file is named by a digest (:func:`cache_key`) of the settings that decide its tokens and of
its task's sources (or, where the task cannot name them, of the texts themselves). A file is written
atomically, then a checksum sidecar beside it; it is used only when it verifies against that sidecar
(:func:`load_verified`), else rebuilt. Tokenising runs in several processes on large splits
(:class:`Tokenising`); their shards are joined into the one file. docs/data.md ("The tokenised-data
cache") describes the layout; :class:`~pha_lightning.data.datamodule.PHADataModule` uses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from pha_lightning.cpus import available_cpus
from pha_lightning.data.examples import cap_chars
from pha_lightning.errors import ConfigError
from pha_lightning.files import atomic_replacement, atomic_write_text, reported_write, sha256_of

log = logging.getLogger(__name__)

#: Environment variable naming the tokenisation cache directory.
CACHE_DIR_ENV = "PHA_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/pha_lightning"
#: Bump when the tokenised layout changes, so older cache files are not reused.
CACHE_FORMAT_VERSION = 3  # 2: checksum sidecars; 3: keyed on the sources' identity
#: A split is tokenised by at most one process per this many rows: starting a process and sending it
#: its share costs more than it saves on fewer.
ROWS_PER_PROCESS = 10_000


def cache_directory(cache_dir: str | None) -> Path:
    """Directory of the tokenised split files: under ``cache_dir``, else ``$PHA_CACHE_DIR``, else the default."""
    base = Path(os.path.expanduser(cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR))
    if base.exists() and not base.is_dir():
        raise ConfigError(
            f"data.cache_dir {str(base)!r} is a file, not a directory; give a directory for the tokenised-data "
            f"cache (default: ${CACHE_DIR_ENV}, else {DEFAULT_CACHE_DIR})"
        )
    return base / "tokenized"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A stable digest of what decides a tokenizer's output: its full serialisation when it has a
    fast backend, else ``datasets``' hash of the object; plus class, special tokens and sides."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        from datasets.fingerprint import Hasher

        digest.update(Hasher.hash(tokenizer).encode())
    settings = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "padding_side": tokenizer.padding_side,
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
        "vocab_size": len(tokenizer),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def cache_key(settings: dict, columns: dict[str, list] | None = None) -> str:
    """A digest of the settings (and sources) that decide a split's tokens, and of its ``columns`` (texts,
    targets, ids, groups) where its task cannot name its sources."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_FORMAT_VERSION, **settings}, sort_keys=True).encode())
    for name in sorted(columns or {}):
        digest.update(f"\x00column:{name}\x00".encode())
        for value in columns[name]:
            digest.update(repr(value).encode())
            digest.update(b"\x1f")
    return digest.hexdigest()


def tokenize_columns(
    batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_source_length: int, max_target_length: int
) -> dict[str, list]:
    """Tokenise ``source`` (+ ``pair``) and, for seq2seq, ``target`` into ``labels``; add ``length``.

    A module-level function (not a method) so ``datasets`` can fingerprint it without pickling
    the data module. Seq2seq sources get no token type ids: T5 does not take them. Texts are cut to
    :data:`~pha_lightning.data.examples.CHARS_PER_TOKEN` characters per token first (bounded memory).
    """
    seq2seq = "target" in batch
    pair = batch.get("pair")
    features = dict(
        tokenizer(
            cap_chars(batch["source"], max_source_length),
            None if pair is None else cap_chars(pair, max_source_length),
            truncation=True,
            max_length=max_source_length,
            return_token_type_ids=False if seq2seq else None,
        )
    )
    if seq2seq:
        features["labels"] = tokenizer(
            text_target=cap_chars(batch["target"], max_target_length), truncation=True, max_length=max_target_length
        )["input_ids"]
    features["length"] = [len(ids) for ids in features["input_ids"]]
    return features


def checksum_path(path: Path) -> Path:
    """The sidecar of a cache file: its size and SHA-256, and the file's inode and modification time
    when they were taken; written after the file is in place."""
    return path.with_name(path.name + ".sha256.json")


def file_checksum(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"size": stat.st_size, "sha256": sha256_of(path), "inode": stat.st_ino, "mtime_ns": stat.st_mtime_ns}


def verifies(path: Path, recorded: dict) -> bool:
    """Whether a cache file is the one its sidecar describes: untouched since (same inode, size and
    modification time: no need to read it), else the same size and SHA-256."""
    if not isinstance(recorded, dict):
        return False
    stat = path.stat()
    if [recorded.get(k) for k in ("inode", "size", "mtime_ns")] == [stat.st_ino, stat.st_size, stat.st_mtime_ns]:
        return True
    return recorded.get("size") == stat.st_size and recorded.get("sha256") == sha256_of(path)


def load_verified(path: Path) -> Dataset | None:
    """A cached tokenised split, or ``None`` when there is none or it does not verify against its
    checksum (a full disk, a partial copy): then one line says so and the caller rebuilds it."""
    if not path.is_file():
        return None
    try:
        if verifies(path, json.loads(checksum_path(path).read_text())):
            return Dataset.from_file(str(path))
        problem = "its size or SHA-256 differs from the recorded one"
    except FileNotFoundError:
        problem = "it has no checksum (its write did not finish)"
    except (OSError, ValueError, pa.ArrowException) as err:  # an unreadable sidecar or Arrow file
        problem = f"it cannot be read ({type(err).__name__})"
    log.warning("tokenised-data cache %s is damaged (%s); rebuilding it", path, problem)
    return None


def join_arrow_files(parts: Sequence[str], path: Path) -> None:
    """The Arrow stream files ``parts`` (``datasets.map``'s shards, same schema), in order, as one file ``path``;
    read as files, a batch at a time (memory-mapped, every page read would count in the process's memory)."""
    with pa.OSFile(parts[0]) as first:
        schema = pa.ipc.open_stream(first).schema
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for part in parts:
            with pa.OSFile(part) as source:
                for batch in pa.ipc.open_stream(source):
                    writer.write_batch(batch)


@dataclass(frozen=True)
class Tokenising:
    """How a data module's splits are tokenised: its tokenizer, lengths and ``data.num_proc``."""

    tokenizer: PreTrainedTokenizerBase
    max_source_length: int
    max_target_length: int
    num_proc: int | None = None

    def processes(self, rows: int) -> int:
        """Processes that tokenise ``rows`` rows: ``num_proc`` (default: the CPUs this process may
        use), at most one per :data:`ROWS_PER_PROCESS` rows."""
        return max(1, min(self.num_proc or available_cpus(), rows // ROWS_PER_PROCESS))

    def dataset(
        self,
        dataset: Dataset,
        text_columns: list[str],
        path: Path | None = None,
        fingerprint: str | None = None,
        desc: str | None = None,
    ) -> Dataset:
        """:func:`tokenize_columns` over ``dataset`` in :meth:`processes` processes (contiguous shards,
        in order); written to the one Arrow file ``path`` when given (in memory otherwise)."""
        processes = self.processes(len(dataset))
        mapped = dataset.map(
            tokenize_columns,
            batched=True,
            remove_columns=text_columns,
            fn_kwargs={
                "tokenizer": self.tokenizer,
                "max_source_length": self.max_source_length,
                "max_target_length": self.max_target_length,
            },
            num_proc=processes if processes > 1 else None,
            cache_file_name=None if path is None else str(path),
            load_from_cache_file=False,
            new_fingerprint=fingerprint,
            desc=desc,
        )
        if path is not None and processes > 1:  # one file per process: joined into one
            join_arrow_files([entry["filename"] for entry in mapped.cache_files], path)
        return mapped

    def cached(self, dataset: Dataset, text_columns: list[str], path: Path, key: str, desc: str) -> Dataset:
        """:meth:`dataset` written to the cache file ``path``, then its checksum sidecar; memory-mapped from it."""
        # atomic: concurrent runs never see half a file; datasets' temporaries go to the same private folder
        with (
            reported_write(path.parent, "the tokenised-data cache (data.cache_dir)"),
            atomic_replacement(path) as temporary,
        ):
            self.dataset(dataset, text_columns, temporary, key[:32], desc)
        atomic_write_text(checksum_path(path), json.dumps(file_checksum(path)), "the tokenised-data cache")
        return Dataset.from_file(str(path))
