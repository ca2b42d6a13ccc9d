"""Tiny GLUE/SuperGLUE data written in each benchmark's own file format (with its quirks), the same
examples shaped like the hub's columns, and the records both must load into.

Quirks reproduced: tab-separated values with quote characters inside the text (only
``csv.QUOTE_NONE`` reads them right), MRPC's byte-order mark, CoLA without a header and without a
final newline, label words (RTE, QNLI, MNLI, CB), JSON booleans (BoolQ, WiC, WSC), MNLI's
``dev.jsonl`` variant next to the official TSVs, MultiRC's nested passages, WSC's ``target``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, Features, Value

BOM = "\ufeff"

# ----------------------------------------------------------------------------- local files
FILES: dict[str, str] = {
    # CoLA: no header; source, label, original mark, sentence; a leading quote in a sentence.
    "glue/CoLA/train.tsv": (
        "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
        'gj04\t0\t*\t"The more you eat, the fatter you get he said.\n'
        'cj99\t1\t\tBill\'s "book" arrived.\n'
    ),
    "glue/CoLA/dev.tsv": 'gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\ngj04\t0\t*\tHe "left.',
    "glue/SST-2/train.tsv": 'sentence\tlabel\nhide new secretions from the parental units \t0\n" a gorgeously strange movie \t1\n',
    "glue/SST-2/dev.tsv": "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n",
    "glue/MRPC/train.tsv": (
        BOM + "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " .\t'
        'Referring to him as only " the witness " , Amrozi accused his brother .\n'
        "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain .\tYucaipa bought Dominick 's in 1995 .\n"
    ),
    "glue/MRPC/dev.tsv": BOM + 'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said " no " .\tHe said no .\n',
    "glue/STS-B/train.tsv": (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n"
        "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a large flute.\tA man is playing a flute.\t3.800\n"
    ),
    "glue/STS-B/dev.tsv": (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        '0\tmain-news\theadlines\t2013\t0002\tnone\tnone\tA "quoted" man.\tA man.\t0.000\n'
    ),
    "glue/RTE/train.tsv": (
        "index\tsentence1\tsentence2\tlabel\n"
        "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\tnot_entailment\n"
        '1\tHe said "yes".\tHe agreed.\tentailment\n'
    ),
    "glue/RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve has died.\tDana Reeve is dead.\tentailment\n",
    "glue/QNLI/train.tsv": (
        "index\tquestion\tsentence\tlabel\n0\tWhat came into force?\tThe new constitution came into force.\tentailment\n"
    ),
    "glue/QNLI/dev.tsv": 'index\tquestion\tsentence\tlabel\n0\tWho "won"?\tIt rained.\tnot_entailment\n',
    "glue/QQP/train.tsv": (
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        '133273\t213221\t213222\tHow is the life of a "math" student?\tWhich level of prepration is enough?\t0\n'
    ),
    "glue/QQP/dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tWhy?\tWhy not?\t1\n",
    "glue/WNLI/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1\n",
    "glue/WNLI/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged with hair.\tThe hair is clogged.\t0\n",
    # MNLI: the official train TSV (12 columns), the dev.jsonl variant, an official mismatched TSV.
    "glue/MNLI/train.tsv": (
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
        "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
        "0\t31193\t31193n\tgovernment\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tConceptually cream skimming has two dimensions.\t"
        "Product and geography are what make cream skimming work. \tneutral\tneutral\n"
    ),
    "glue/MNLI/dev.jsonl": (
        json.dumps(
            {"premise": "The new rights are nice enough", "hypothesis": "Everyone likes them ", "label": "neutral"}
        )
        + "\n"
        + json.dumps({"premise": "This site has a list.", "hypothesis": "It has no list.", "label": "contradiction"})
        + "\n"
    ),
    "glue/MNLI/dev_mismatched.tsv": (
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
        "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
        "0\t75290\t75290c\tletters\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tYour contribution helped.\tIt did not help.\t"
        "contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n"
    ),
}


def _jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


FILES.update(
    {
        "superglue/BoolQ/train.jsonl": _jsonl(
            {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "idx": 0, "label": True}
        ),
        "superglue/BoolQ/val.jsonl": _jsonl(
            {"question": "does ethanol take more energy", "passage": "Ethanol fuel -- ...", "idx": 0, "label": False}
        ),
        "superglue/CB/train.jsonl": _jsonl(
            {
                "premise": "It was a complex language.",
                "hypothesis": "the language was peeled down",
                "label": "contradiction",
                "idx": 0,
            },
            {"premise": "A.", "hypothesis": "B.", "label": "neutral", "idx": 1},
        ),
        "superglue/CB/val.jsonl": _jsonl(
            {"premise": "Valence helped?", "hypothesis": "Valence was helping", "label": "entailment", "idx": 0}
        ),
        "superglue/COPA/train.jsonl": _jsonl(
            {
                "premise": "My body cast a shadow over the grass.",
                "choice1": "The sun was rising.",
                "choice2": "The grass was cut.",
                "question": "cause",
                "label": 0,
                "idx": 0,
            }
        ),
        "superglue/COPA/val.jsonl": _jsonl(
            {
                "premise": "The man turned on the faucet.",
                "choice1": "The toilet filled with water.",
                "choice2": "Water flowed from the spout.",
                "question": "effect",
                "label": 1,
                "idx": 0,
            }
        ),
        "superglue/MultiRC/train.jsonl": _jsonl(
            {
                "idx": 0,
                "version": 1.1,
                "passage": {
                    "text": "Sent 1: Gerd lives in Bonn.",
                    "questions": [
                        {
                            "question": "Where does Gerd live?",
                            "idx": 0,
                            "answers": [
                                {"text": "Bonn", "idx": 0, "label": 1},
                                {"text": "Paris", "idx": 1, "label": 0},
                            ],
                        },
                        {
                            "question": "Who lives in Bonn?",
                            "idx": 1,
                            "answers": [{"text": "Gerd", "idx": 2, "label": 1}],
                        },
                    ],
                },
            },
            {
                "idx": 1,
                "version": 1.1,
                "passage": {
                    "text": "Sent 1: It rains.",
                    "questions": [
                        {"question": "Does it rain?", "idx": 2, "answers": [{"text": "Yes", "idx": 3, "label": 1}]}
                    ],
                },
            },
        ),
        "superglue/MultiRC/val.jsonl": _jsonl(
            {
                "idx": 0,
                "version": 1.1,
                "passage": {
                    "text": "What causes a change in motion?",
                    "questions": [
                        {
                            "question": "Would mass matter?",
                            "idx": 0,
                            "answers": [{"text": "No", "idx": 0, "label": 0}, {"text": "Yes", "idx": 1, "label": 1}],
                        }
                    ],
                },
            }
        ),
        "superglue/RTE/train.jsonl": _jsonl(
            {"premise": "No weapons found.", "hypothesis": "Weapons found.", "label": "not_entailment", "idx": 0}
        ),
        "superglue/RTE/val.jsonl": _jsonl(
            {"premise": "Dana Reeve has died.", "hypothesis": "Dana Reeve is dead.", "label": "entailment", "idx": 0}
        ),
        "superglue/WiC/train.jsonl": _jsonl(
            {
                "word": "place",
                "sentence1": "Do you want to come over to my place later?",
                "sentence2": "A political system with no place for the less prominent groups.",
                "idx": 0,
                "label": False,
                "start1": 31,
                "start2": 27,
                "end1": 36,
                "end2": 32,
                "version": 1.1,
            }
        ),
        "superglue/WiC/val.jsonl": _jsonl(
            {
                "word": "board",
                "sentence1": "Room and board.",
                "sentence2": "He nailed boards across the windows.",
                "idx": 0,
                "label": False,
                "start1": 9,
                "start2": 10,
                "end1": 14,
                "end2": 16,
                "version": 1.1,
            }
        ),
        "superglue/WSC/train.jsonl": _jsonl(
            {
                "text": "Mark told Pete many lies about himself, which Pete included in his book. He should have been more skeptical.",
                "target": {"span2_index": 13, "span1_index": 0, "span1_text": "Mark", "span2_text": "He"},
                "idx": 0,
                "label": False,
            },
            {
                "text": "The trophy doesn't fit into the brown suitcase because it is too large.",
                "target": {"span1_index": 0, "span1_text": "The trophy", "span2_index": 9, "span2_text": "it"},
                "idx": 1,
                "label": True,
            },
        ),
        "superglue/WSC/val.jsonl": _jsonl(
            {
                "text": "The city councilmen refused the demonstrators a permit because they feared violence.",
                "target": {
                    "span1_index": 0,
                    "span1_text": "The city councilmen",
                    "span2_index": 9,
                    "span2_text": "they",
                },
                "idx": 0,
                "label": True,
            }
        ),
    }
)


def write_files(root: Path, files: dict[str, str] | None = None) -> Path:
    """Write the fixture files (or ``files``) under ``root``; returns ``root``."""
    for relative, text in (files or FILES).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    return root


def protocol_records(task: Any, splits: list[str], **options: Any) -> dict[str, list[dict]]:
    """``task.load_splits`` with every split's records as a list (a GLUE TSV's are a ``datasets`` table)."""
    loaded = task.load_splits(splits, **options)
    return {split: rows if isinstance(rows, list) else rows.to_list() for split, rows in loaded.items()}


# ----------------------------------------------------------------------------- expected records
EXPECTED: dict[tuple[str, str], list[dict]] = {
    ("cola", "train"): [
        {"sentence": "Our friends won't buy this analysis, let alone the next one we propose.", "label": 1, "idx": 0},
        {"sentence": '"The more you eat, the fatter you get he said.', "label": 0, "idx": 1},
        {"sentence": 'Bill\'s "book" arrived.', "label": 1, "idx": 2},
    ],
    ("cola", "dev"): [
        {"sentence": "The sailors rode the breeze clear of the rocks.", "label": 1, "idx": 0},
        {"sentence": 'He "left.', "label": 0, "idx": 1},
    ],
    ("sst2", "train"): [
        {"sentence": "hide new secretions from the parental units ", "label": 0, "idx": 0},
        {"sentence": '" a gorgeously strange movie ', "label": 1, "idx": 1},
    ],
    ("mrpc", "train"): [
        {
            "sentence1": 'Amrozi accused his brother , whom he called " the witness " .',
            "sentence2": 'Referring to him as only " the witness " , Amrozi accused his brother .',
            "label": 1,
            "idx": 0,
        },
        {
            "sentence1": "Yucaipa owned Dominick 's before selling the chain .",
            "sentence2": "Yucaipa bought Dominick 's in 1995 .",
            "label": 0,
            "idx": 1,
        },
    ],
    ("stsb", "train"): [
        {"sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off.", "label": 5.0, "idx": 0},
        {
            "sentence1": "A man is playing a large flute.",
            "sentence2": "A man is playing a flute.",
            "label": float(np.float32(3.8)),
            "idx": 1,
        },
    ],
    ("rte", "train"): [
        {
            "sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
            "sentence2": "Weapons of Mass Destruction Found in Iraq.",
            "label": 1,
            "idx": 0,
        },
        {"sentence1": 'He said "yes".', "sentence2": "He agreed.", "label": 0, "idx": 1},
    ],
    ("qnli", "dev"): [{"question": 'Who "won"?', "sentence": "It rained.", "label": 1, "idx": 0}],
    ("qqp", "train"): [
        {
            "question1": 'How is the life of a "math" student?',
            "question2": "Which level of prepration is enough?",
            "label": 0,
            "idx": 0,
        }
    ],
    ("mnli", "train"): [
        {
            "premise": "Conceptually cream skimming has two dimensions.",
            "hypothesis": "Product and geography are what make cream skimming work. ",
            "label": 1,
            "idx": 0,
        }
    ],
    ("mnli", "dev"): [
        {"premise": "The new rights are nice enough", "hypothesis": "Everyone likes them ", "label": 1, "idx": 0},
        {"premise": "This site has a list.", "hypothesis": "It has no list.", "label": 2, "idx": 1},
    ],
    ("mnli", "dev_mismatched"): [
        {"premise": "Your contribution helped.", "hypothesis": "It did not help.", "label": 2, "idx": 0}
    ],
    ("boolq", "train"): [{"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "label": 1, "idx": 0}],
    ("cb", "train"): [
        {"premise": "It was a complex language.", "hypothesis": "the language was peeled down", "label": 1, "idx": 0},
        {"premise": "A.", "hypothesis": "B.", "label": 2, "idx": 1},
    ],
    ("copa", "dev"): [
        {
            "premise": "The man turned on the faucet.",
            "choice1": "The toilet filled with water.",
            "choice2": "Water flowed from the spout.",
            "question": "effect",
            "label": 1,
            "idx": 0,
        }
    ],
    ("multirc", "train"): [
        {
            "question": "Where does Gerd live?",
            "answer": "Bonn",
            "paragraph": "Sent 1: Gerd lives in Bonn.",
            "label": 1,
            "idx": {"paragraph": 0, "question": 0, "answer": 0},
            "group": 0,
        },
        {
            "question": "Where does Gerd live?",
            "answer": "Paris",
            "paragraph": "Sent 1: Gerd lives in Bonn.",
            "label": 0,
            "idx": {"paragraph": 0, "question": 0, "answer": 1},
            "group": 0,
        },
        {
            "question": "Who lives in Bonn?",
            "answer": "Gerd",
            "paragraph": "Sent 1: Gerd lives in Bonn.",
            "label": 1,
            "idx": {"paragraph": 0, "question": 1, "answer": 2},
            "group": 1,
        },
        {
            "question": "Does it rain?",
            "answer": "Yes",
            "paragraph": "Sent 1: It rains.",
            "label": 1,
            "idx": {"paragraph": 1, "question": 2, "answer": 3},
            "group": 2,
        },
    ],
    ("superglue_rte", "train"): [
        {"premise": "No weapons found.", "hypothesis": "Weapons found.", "label": 1, "idx": 0}
    ],
    ("wic", "train"): [
        {
            "sentence1": "Do you want to come over to my place later?",
            "sentence2": "A political system with no place for the less prominent groups.",
            "word": "place",
            "start1": 31,
            "end1": 36,
            "start2": 27,
            "end2": 32,
            "label": 0,
            "idx": 0,
        }
    ],
    ("wsc", "train"): [
        {
            "text": "Mark told Pete many lies about himself, which Pete included in his book. He should have been more skeptical.",
            "span1_index": 0,
            "span1_text": "Mark",
            "span2_index": 13,
            "span2_text": "He",
            "label": 0,
            "idx": 0,
        },
        {
            "text": "The trophy doesn't fit into the brown suitcase because it is too large.",
            "span1_index": 0,
            "span1_text": "The trophy",
            "span2_index": 9,
            "span2_text": "it",
            "label": 1,
            "idx": 1,
        },
    ],
}


# ----------------------------------------------------------------------------- hub-shaped datasets
def _class(*names: str) -> ClassLabel:
    return ClassLabel(names=list(names))


HUB_LABELS: dict[str, ClassLabel | Value] = {
    "cola": _class("unacceptable", "acceptable"),
    "sst2": _class("negative", "positive"),
    "mrpc": _class("not_equivalent", "equivalent"),
    "qqp": _class("not_duplicate", "duplicate"),
    "stsb": Value("float32"),
    "mnli": _class("entailment", "neutral", "contradiction"),
    "qnli": _class("entailment", "not_entailment"),
    "rte": _class("entailment", "not_entailment"),
    "wnli": _class("not_entailment", "entailment"),
    "boolq": _class("False", "True"),
    "cb": _class("entailment", "contradiction", "neutral"),
    "copa": _class("choice1", "choice2"),
    "multirc": _class("False", "True"),
    "superglue_rte": _class("entailment", "not_entailment"),
    "wic": _class("False", "True"),
    "wsc": _class("False", "True"),
}


def hub_dataset(task: str, records: list[dict]) -> Dataset:
    """A ``datasets.Dataset`` with the hub's columns (and label feature) holding ``records``.

    Built from the expected records independently of the loader's own local→hub conversion; the
    hub's ``idx`` of a GLUE row is its position, MultiRC's is a ``{paragraph, question, answer}`` dict.
    """
    rows = []
    for position, record in enumerate(records):
        row = {key: value for key, value in record.items() if key not in ("group",)}
        if task in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"):
            row["idx"] = position
        rows.append(row)
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    features = {}
    for key, values in columns.items():
        if key == "label":
            features[key] = HUB_LABELS[task]
        elif key == "idx" and task == "multirc":
            features[key] = {"paragraph": Value("int32"), "question": Value("int32"), "answer": Value("int32")}
        elif isinstance(values[0], int):
            features[key] = Value("int32")
        else:
            features[key] = Value("string")
    return Dataset.from_dict(columns, features=Features(features))
