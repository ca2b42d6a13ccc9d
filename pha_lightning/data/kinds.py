"""The built-in tasks that need code, by their spec's ``kind``: COPA (its question becomes text),
MultiRC (one record per answer of a nested passage, metrics grouped by question), WiC (the word
leads the first sentence) and WSC (the noun and the pronoun are marked in the text).

docs/data.md ("Encoder inputs of structured tasks") shows what each feeds the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pha_lightning.data.benchmark import BenchmarkTask
from pha_lightning.data.readers import JsonlFormat, Where, fail


def _span_matches(words: Sequence[str], index: int, span_text: str) -> bool:
    n = len(span_text.split())
    if index < 0 or index + n > len(words) or n == 0:
        return False
    return " ".join(words[index : index + n]).lower().startswith(" ".join(span_text.split()).lower())


def _locate_span(words: Sequence[str], index: int, span_text: str) -> int:
    """Word index of a span: the given one if the words there start with the span text, else the
    nearest index where they do (the official WSC files have a few off-by-some indices, which the
    hub's ``wsc.fixed`` corrects), else the given index if it is inside the text."""
    if _span_matches(words, index, span_text):
        return index
    found = [i for i in range(len(words)) if _span_matches(words, i, span_text)]
    if found:
        return min(found, key=lambda i: (abs(i - index), i))
    if 0 <= index and index + len(span_text.split()) <= len(words):
        return index
    raise ValueError(
        f"span {span_text!r} at word {index} lies outside the text ({len(words)} whitespace-separated words)"
    )


def _close_offset(words: Sequence[str], start: int, span_text: str) -> int:
    """Where the closing mark goes inside a span's last word: after the span text, so punctuation
    glued to the word stays outside (``"him."`` → ``"him"`` + mark + ``"."``); after the whole word
    when the span text does not match the words (a typo in the span text)."""
    n = len(span_text.split())
    joined = " ".join(words[start : start + n])
    core = " ".join(span_text.split())
    last = words[start + n - 1]
    if not joined.lower().startswith(core.lower()):
        return len(last)
    return len(last) - (len(joined) - len(core))


def mark_wsc_spans(text: str, span1_index: int, span1_text: str, span2_index: int, span2_text: str) -> str:
    """The WSC text with the noun (span 1) marked ``* … *`` and the pronoun (span 2) ``# … #``.

    Indices count whitespace-separated words. Punctuation glued to a span's last word stays outside
    the marks: ``"… told him."`` → ``"… told # him #."``. The official files hold spans that
    overlap (a noun phrase containing the pronoun, both starting at the same word); their marks
    nest: ``"* # his # mother *"``. Raises ``ValueError`` if a span lies outside the text.
    """
    words = text.split()
    spans = []
    for index, span_text, mark in ((span1_index, span1_text, "*"), (span2_index, span2_text, "#")):
        if not span_text.split():
            raise ValueError(f"the span marked {mark} has no text")
        start = _locate_span(words, int(index), span_text)
        end = start + len(span_text.split()) - 1
        spans.append((start, end, _close_offset(words, start, span_text), mark))
    spans.sort(key=lambda span: (span[0], -span[1]))  # outer first: it opens first and closes last
    opens: dict[int, list[str]] = {}
    closes: dict[int, list[tuple[int, str]]] = {}
    for start, end, offset, mark in spans:
        opens.setdefault(start, []).append(mark)
        closes.setdefault(end, []).append((offset, mark))
    marked = []
    for position, word in enumerate(words):
        # rightmost offset first, so earlier offsets stay valid; at one offset a later insertion
        # lands left of an earlier one, so the inner span's mark closes first
        for offset, mark in sorted(closes.get(position, []), key=lambda close: -close[0]):
            word = f"{word[:offset]} {mark}{word[offset:]}"
        marked.append("".join(f"{mark} " for mark in opens.get(position, [])) + word)
    return " ".join(marked)


COPA_QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}


class CopaTask(BenchmarkTask):
    def _check_record(self, record: dict, where: Where) -> None:
        if record["question"] not in COPA_QUESTIONS:
            raise fail(where, f"question {record['question']!r} is neither 'cause' nor 'effect'")

    def encoder_text(self, record: dict) -> tuple[str, str | None]:
        question = COPA_QUESTIONS[record["question"]]
        return f"{record['premise']} {question}", f"choice1: {record['choice1']} choice2: {record['choice2']}"


class MultiRCTask(BenchmarkTask):
    """MultiRC: one record per answer option; ``group`` numbers the questions."""

    def _hub_rows_from_json(self, raw: dict, fmt: JsonlFormat, where: Where) -> list[dict]:
        try:
            passage = raw["passage"]
            paragraph = passage["text"]
            rows = []
            for question in passage["questions"]:
                for answer in question["answers"]:
                    rows.append(
                        {
                            "paragraph": paragraph,
                            "question": question["question"],
                            "answer": answer["text"],
                            "idx": {"paragraph": raw["idx"], "question": question["idx"], "answer": answer["idx"]},
                            "label": self._label_from_text(answer["label"], where),
                        }
                    )
        except (KeyError, TypeError) as err:
            raise fail(
                where,
                f"expected {{idx, passage: {{text, questions: [{{question, idx, answers: [{{text, idx, label}}]}}]}}}} ({err!r})",
            ) from None
        return rows

    def record_from_hub_row(self, row: Mapping[str, Any], where: Where, position: int) -> dict:
        record = super().record_from_hub_row(row, where, position)
        idx = row.get("idx")
        if not isinstance(idx, Mapping) or not {"paragraph", "question", "answer"} <= set(idx):
            raise fail(where, f"idx {idx!r} should be {{paragraph, question, answer}}")
        record["idx"] = {key: int(idx[key]) for key in ("paragraph", "question", "answer")}
        return record

    def _finish(self, records: list[dict]) -> list[dict]:
        groups: dict[tuple[int, int], int] = {}
        for record in records:
            key = (record["idx"]["paragraph"], record["idx"]["question"])
            record["group"] = groups.setdefault(key, len(groups))
        return records

    def encoder_text(self, record: dict) -> tuple[str, str | None]:
        return f"{record['question']} {record['answer']}", record["paragraph"]


class WiCTask(BenchmarkTask):
    def encoder_text(self, record: dict) -> tuple[str, str | None]:
        return f"{record['word']}: {record['sentence1']}", record["sentence2"]


class WSCTask(BenchmarkTask):
    """WSC: the inputs mark the noun ``* … *`` and the pronoun ``# … #``."""

    def _hub_rows_from_json(self, raw: dict, fmt: JsonlFormat, where: Where) -> list[dict]:
        target = raw.get("target")
        if not isinstance(target, dict) or "text" not in raw or "label" not in raw:
            raise fail(where, "expected {text, target: {span1_text, span1_index, span2_text, span2_index}, idx, label}")
        spans = self.spec.keep or ()
        missing = [key for key in spans if key not in target]
        if missing:
            raise fail(where, f"target lacks {missing}")
        row = {"text": raw["text"], **{key: target[key] for key in spans}, "label": raw["label"]}
        if "idx" in raw:
            row["idx"] = raw["idx"]
        row["label"] = self._label_from_text(raw["label"], where)
        return [row]

    def _check_record(self, record: dict, where: Where) -> None:
        for key in ("span1_index", "span2_index"):
            if isinstance(record[key], bool) or not isinstance(record[key], int):
                raise fail(where, f"{key} {record[key]!r} is not a word index")
        try:
            self.marked_text(record)
        except ValueError as err:
            raise fail(where, str(err)) from None

    @staticmethod
    def marked_text(record: dict) -> str:
        return mark_wsc_spans(
            record["text"], record["span1_index"], record["span1_text"], record["span2_index"], record["span2_text"]
        )

    def encoder_text(self, record: dict) -> tuple[str, str | None]:
        return self.marked_text(record), None

    def seq2seq_source(self, record: dict) -> str:
        return f"{self.name} text: {self.marked_text(record)}"


#: The task class of each ``kind`` a spec may name.
KINDS: dict[str, type[BenchmarkTask]] = {"copa": CopaTask, "multirc": MultiRCTask, "wic": WiCTask, "wsc": WSCTask}
