"""``pha predict`` streams its input: chunks are read, encoded and predicted longest first, and their
rows written in input order while the next chunk is predicted, to ``<output>.partial`` (renamed when
done); nothing grows with the file; an interrupted run resumes after its last whole chunk, or refuses
naming what changed. The model here is a stand-in whose rows depend on the tokens and on the batch
(its padded width), so that equal outputs mean equal examples in equal batches."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import LightningModule, Trainer

from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.data.examples import CHUNK_BATCHES, chunk_end, encode_examples, read_jsonl, whole_chunk_rows
from pha_lightning.errors import ConfigError
from pha_lightning.model.prediction import input_fields
from pha_lightning.training.callbacks import JSONLPredictionWriter, resume_start

BATCH = 4
CHUNK = BATCH * CHUNK_BATCHES
#: ENDS[k]: where chunk k ends (one batch first, then chunks of CHUNK_BATCHES batches)
ENDS = [BATCH + k * CHUNK for k in range(64)]
IDENTITY = {"ckpt_path": "model.ckpt (1 bytes)", "data.eval_batch_size": str(BATCH)}


class Echo(LightningModule):
    """Rows from the tokens alone (their count) and the batch's padded width; ``observe`` sees every batch."""

    def __init__(self, observe: Callable[[dict], None] | None = None) -> None:
        super().__init__()
        self.observe = observe

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        if self.observe is not None:
            self.observe(batch)
        width = batch["input_ids"].shape[1]
        lengths = batch["attention_mask"].sum(-1).tolist()
        return [input_fields(meta) | {"prediction": n, "width": width} for meta, n in zip(batch["meta"], lengths)]


def write_examples(path: Path, count: int, start: int = 0) -> Path:
    words = "the red cat near the park was lovely and earned three points".split()
    with open(path, "a") as handle:
        for i in range(start, start + count):
            handle.write(json.dumps({"task": "synth_polarity", "sentence": " ".join(words[: 2 + (i * 7) % 11])}) + "\n")
            if i % 10 == 3:
                handle.write("\n")  # blank lines count in `line`, not in `index`
    return path


def data(path: Path) -> PHADataModule:
    return PHADataModule(
        tasks=["synth_polarity"],
        eval_batch_size=BATCH,
        max_source_length=32,
        predict_file=str(path),
        cache_tokenized=False,
    )


def predict(
    datamodule: PHADataModule, output: Path, start: int = 0, observe: Callable[[dict], None] | None = None
) -> None:
    """What ``pha predict`` does with a data module: the writer, Lightning's own list of rows off."""
    datamodule.predict_start = start
    writer = JSONLPredictionWriter(str(output), str(datamodule.predict_file), IDENTITY, batch_size=BATCH, start=start)
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[writer]
    )
    trainer.predict(Echo(observe), datamodule=datamodule, return_predictions=False)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_streamed_rows_are_the_whole_file_rows_in_input_order(tmp_path: Path) -> None:
    examples = write_examples(tmp_path / "in.jsonl", 3 * CHUNK + 5)  # whole chunks and a part
    datamodule = data(examples)
    output = tmp_path / "out.jsonl"
    predict(datamodule, output)
    whole = encode_examples(list(read_jsonl(examples)), datamodule.task_objects, "encoder", datamodule.tokenizer, 32)
    expected = [input_fields(ex["meta"]) | {"prediction": len(ex["input_ids"])} for ex in whole]
    streamed = rows(output)
    assert [{k: v for k, v in row.items() if k != "width"} for row in streamed] == expected
    assert [row["index"] for row in streamed] == list(range(3 * CHUNK + 5))
    assert not Path(f"{output}.partial").exists() and not Path(f"{output}.partial.json").exists()


def chunk_of(index: int) -> int:
    """The number of the chunk that holds example ``index``."""
    return next(number for number, end in enumerate(ENDS) if index < end)


def test_chunks_are_one_batch_then_chunk_batches_batches() -> None:
    assert [chunk_end(start, BATCH) for start in (0, 1, BATCH - 1)] == [BATCH] * 3
    assert [chunk_end(start, BATCH) for start in (BATCH, BATCH + 1, ENDS[1] - 1, ENDS[1])] == [ENDS[1]] * 3 + [ENDS[2]]
    assert chunk_end(2 * CHUNK, BATCH) == ENDS[2]  # a resume at an older layout's chunk end: on to this one's
    assert [whole_chunk_rows(rows, BATCH) for rows in (0, BATCH - 1, BATCH, ENDS[1] - 1, ENDS[1], ENDS[3] + 2)] == [
        0,
        0,
        BATCH,
        BATCH,
        ENDS[1],
        ENDS[3],
    ]


def test_batches_go_longest_first_within_a_chunk(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []  # (chunk, width) of every batch
    predict(
        data(write_examples(tmp_path / "in.jsonl", ENDS[2])),
        tmp_path / "out.jsonl",
        observe=lambda batch: seen.append(
            (chunk_of(min(m["index"] for m in batch["meta"])), batch["input_ids"].shape[1])
        ),
    )
    assert [chunk for chunk, _ in seen] == sorted(chunk for chunk, _ in seen)  # chunk after chunk
    assert [chunk for chunk, _ in seen].count(0) == 1  # the first chunk: one batch
    for chunk in (1, 2):
        widths = [width for c, width in seen if c == chunk]
        assert len(widths) == CHUNK_BATCHES and widths == sorted(widths, reverse=True) and widths[0] > widths[-1]


def test_first_rows_are_written_before_the_last_chunk_is_predicted(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    written_then: dict[int, int] = {}  # chunk: rows written when its first batch came

    def observe(batch: dict) -> None:
        chunk = chunk_of(min(m["index"] for m in batch["meta"]))
        if chunk not in written_then:
            partial = Path(f"{output}.partial")
            written_then[chunk] = len(partial.read_text().splitlines()) if partial.exists() else 0

    predict(data(write_examples(tmp_path / "in.jsonl", ENDS[3])), output, observe=observe)
    # the first batch's rows are out before the second chunk starts; each chunk's before the next one's
    assert written_then == {0: 0, 1: BATCH, 2: ENDS[1], 3: ENDS[2]}
    assert len(rows(output)) == ENDS[3]


def _live_bytes(tmp_path: Path, count: int) -> int:
    """The most memory (traced Python allocations) live when a batch of the second half of a prediction of
    ``count`` lines is predicted (past the start-up's one-off allocations)."""
    examples = write_examples(tmp_path / f"in_{count}.jsonl", count)
    datamodule = data(examples)
    datamodule.tokenizer  # loaded before measuring
    live: list[int] = []
    tracemalloc.start()
    try:
        predict(
            datamodule,
            tmp_path / f"out_{count}.jsonl",
            observe=lambda _: live.append(tracemalloc.get_traced_memory()[0]),
        )
    finally:
        tracemalloc.stop()
    return max(live[len(live) // 2 :])


def test_memory_does_not_grow_with_the_number_of_lines(tmp_path: Path) -> None:
    small, large = _live_bytes(tmp_path, 8 * CHUNK), _live_bytes(tmp_path, 48 * CHUNK)
    # each of the 2 560 more lines held (its encoded example, or its row in a list) would add > 250 KB
    assert large < small + 250_000, (small, large)


def _interrupted(tmp_path: Path, examples: Path, output: Path, at_index: int) -> None:
    def fail(batch: dict) -> None:
        if any(m["index"] >= at_index for m in batch["meta"]):
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        predict(data(examples), output, observe=fail)


def test_resume_after_an_interruption_ends_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    examples = write_examples(tmp_path / "in.jsonl", 4 * CHUNK + 9)
    whole = tmp_path / "whole.jsonl"
    predict(data(examples), whole)
    output = tmp_path / "out.jsonl"
    _interrupted(tmp_path, examples, output, at_index=ENDS[2] + 10)  # in the fourth chunk
    partial = Path(f"{output}.partial")
    kept = rows(partial)
    assert not output.exists() and [row["index"] for row in kept] == list(range(len(kept)))
    assert len(kept) >= ENDS[2] and kept == rows(whole)[: len(kept)]  # whole chunks, in input order
    start = resume_start(str(output), str(examples), IDENTITY, resume=True, overwrite=False)
    assert start == ENDS[2]  # after the last whole chunk: the batches of the rest are an uninterrupted run's
    predict(data(examples), output, start=start)
    assert output.read_bytes() == whole.read_bytes()
    assert not partial.exists() and not Path(f"{output}.partial.json").exists()


def test_resume_refuses_a_changed_input_or_model_naming_it(tmp_path: Path) -> None:
    examples = write_examples(tmp_path / "in.jsonl", 3 * CHUNK)
    output = tmp_path / "out.jsonl"
    _interrupted(tmp_path, examples, output, at_index=ENDS[2])
    with pytest.raises(
        ConfigError, match=r"holds the rows of an interrupted prediction; pass --resume .* or --overwrite"
    ):
        resume_start(str(output), str(examples), IDENTITY, resume=False, overwrite=False)
    assert resume_start(str(output), str(examples), IDENTITY, resume=False, overwrite=True) == 0
    changed = {**IDENTITY, "data.eval_batch_size": "8"}
    with pytest.raises(ConfigError, match=r"changed since it was interrupted: data.eval_batch_size '4' -> '8';"):
        resume_start(str(output), str(examples), changed, resume=True, overwrite=False)
    write_examples(examples, 5, start=3 * CHUNK)  # lines appended after the rows kept: still resumable
    assert resume_start(str(output), str(examples), IDENTITY, resume=True, overwrite=False) == ENDS[2]
    lines = examples.read_text().split("\n")
    lines[3] = lines[3].replace("the", "a", 1)
    examples.write_text("\n".join(lines))
    with pytest.raises(
        ConfigError, match=rf"changed since it was interrupted: the first \d+ lines of data.predict_file '{examples}'"
    ):
        resume_start(str(output), str(examples), IDENTITY, resume=True, overwrite=False)
