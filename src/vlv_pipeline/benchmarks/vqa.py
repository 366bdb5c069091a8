"""The official VQA files (VQAv2, OK-VQA) and the caption-only prompts of the paper's Table 3.

Both benchmarks ship two JSON files per split, as the VQA challenge released them:

- questions (``v2_OpenEnded_mscoco_val2014_questions.json``,
  ``OpenEnded_mscoco_val2014_questions.json``): ``{"questions": [{"question_id": int,
  "image_id": int, "question": str}, ...], ...}``;
- annotations (``v2_mscoco_val2014_annotations.json``, ``mscoco_val2014_annotations.json``):
  ``{"annotations": [{"question_id": int, "image_id": int, "answers": [{"answer": str, ...}
  x 10], "multiple_choice_answer": str (VQAv2), "question_type": str, "answer_type": str},
  ...], ...}``.

``image_id`` is the COCO image id. Every entry is checked; a file that is not there, not JSON,
or has an entry without a key the table needs stops the run with an error naming the file,
the entry and the key. The few-shot examples' images are captioned with COCO's own captions
(``captions_train2014.json``: ``{"annotations": [{"image_id": int, "id": int, "caption":
str}, ...]}``), the first caption (lowest ``id``) of each image.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlv_pipeline.benchmarks.json_files import load_json
from vlv_pipeline.errors import InputError
from vlv_pipeline.params.vqa import VQA_TRAIN_CAPTIONS_HINT

#: VQAv2's training annotations are the largest file read (a few hundred MB).
MAX_FILE_BYTES = 1024**3


QUESTION_COLUMNS = [
    "dataset",
    "question_id",
    "image_id",
    "question",
    "answers",
    "question_type",
    "answer_type",
]


def read_json(path: str | Path, what: str) -> dict:
    """A JSON object from ``path`` (``what`` says which file it should be, for messages), read
    as every input is (``imaging/reading.py``): a regular file (a link to one is followed),
    at most ``MAX_FILE_BYTES``."""
    path = Path(path)
    data = load_json(
        path,
        MAX_FILE_BYTES,
        missing=f"{what} {path} is not there: download it (docs/PAPER.md: Reproduce the paper's "
        "tables) or correct the path in conf",
        where=f"{what} {path}",
        invalid="{where} is not a JSON file: {error}",
    )
    if not isinstance(data, dict):
        raise InputError(f"{what} {path}: the file holds a {type(data).__name__}, not an object")
    return data


def _entries(data: dict, key: str, path: Path, what: str) -> list:
    entries = data.get(key)
    if not isinstance(entries, list):
        found = sorted(data)[:8]
        raise InputError(
            f"{what} {path} has no list {key!r} at its top level (keys: {found}): is it the {what}?"
        )
    return entries


def _field(entry: Any, index: int, key: str, kind: type, path: Path, list_key: str) -> Any:
    where = f"{path}: {list_key}[{index}]"
    if not isinstance(entry, dict):
        raise InputError(f"{where} is a {type(entry).__name__}, not an object")
    if key not in entry:
        raise InputError(f"{where} has no {key!r} (its keys: {sorted(entry)})")
    value = entry[key]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok or (kind is str and not value.strip()):
        raise InputError(
            f"{where}.{key} is {value!r}, not a{'n' if kind is int else ''} {kind.__name__}"
        )
    return value


def load_questions(path: str | Path) -> pd.DataFrame:
    """``question_id``, ``image_id``, ``question`` of an official questions file."""
    path = Path(path)
    entries = _entries(read_json(path, "VQA questions file"), "questions", path, "questions file")
    rows = [
        (
            _field(e, i, "question_id", int, path, "questions"),
            _field(e, i, "image_id", int, path, "questions"),
            _field(e, i, "question", str, path, "questions").strip(),
        )
        for i, e in enumerate(entries)
    ]
    table = pd.DataFrame(rows, columns=["question_id", "image_id", "question"])
    _no_repeats(table, path, "questions")
    return table


def load_annotations(path: str | Path) -> pd.DataFrame:
    """``question_id``, ``image_id``, ``answers`` (the annotators' answers, as released),
    ``answer`` (the example answer: ``multiple_choice_answer``, else the commonest),
    ``question_type`` and ``answer_type`` (empty when absent) of an official annotations file."""
    path = Path(path)
    what = "VQA annotations file"
    entries = _entries(read_json(path, what), "annotations", path, "annotations file")
    rows = []
    for i, e in enumerate(entries):
        qid = _field(e, i, "question_id", int, path, "annotations")
        image = _field(e, i, "image_id", int, path, "annotations")
        given = _field(e, i, "answers", list, path, "annotations")
        if not given:
            raise InputError(f"{path}: annotations[{i}].answers is empty")
        answers = [
            _field(a, j, "answer", str, path, f"annotations[{i}].answers")
            for j, a in enumerate(given)
        ]
        chosen = e.get("multiple_choice_answer")
        if not isinstance(chosen, str) or not chosen.strip():
            chosen = Counter(answers).most_common(1)[0][0]
        rows.append(
            (
                qid,
                image,
                answers,
                chosen,
                str(e.get("question_type") or ""),
                str(e.get("answer_type") or ""),
            )
        )
    columns = ["question_id", "image_id", "answers", "answer", "question_type", "answer_type"]
    table = pd.DataFrame(rows, columns=columns)
    _no_repeats(table, path, "annotations")
    return table


def _no_repeats(table: pd.DataFrame, path: Path, list_key: str) -> None:
    repeated = table["question_id"][table["question_id"].duplicated()]
    if len(repeated):
        raise InputError(
            f"{path}: question_id {int(repeated.iloc[0])} appears more than once in {list_key}"
        )


def load_vqa(questions: str | Path, annotations: str | Path) -> pd.DataFrame:
    """The questions joined with their annotations (``load_questions``, ``load_annotations``):
    every question must have its annotation, on the same image."""
    q, a = load_questions(questions), load_annotations(annotations)
    table = q.merge(a, on="question_id", how="left", suffixes=("", "_annotated"), indicator=True)
    lost = table[table["_merge"] != "both"]
    if len(lost):
        raise InputError(
            f"{len(lost)} questions of {questions} have no annotation in {annotations} (e.g. "
            f"question_id {int(lost['question_id'].iloc[0])}): are the two files of the same "
            "split and dataset?"
        )
    wrong = table[table["image_id"] != table["image_id_annotated"]]
    if len(wrong):
        row = wrong.iloc[0]
        raise InputError(
            f"question_id {int(row['question_id'])} is about image {int(row['image_id'])} in "
            f"{questions} but image {int(row['image_id_annotated'])} in {annotations}"
        )
    return table.drop(columns=["image_id_annotated", "_merge"]).reset_index(drop=True)


# an evaluation image's id -> its COCO id: the id itself, or a COCO file name
# (COCO_val2014_000000391895.jpg, 000000391895.jpg), under folders or not
_COCO_NAME = re.compile(r"(?:.*/)?(?:COCO_[A-Za-z]+\d{4}_)?(\d+)(?:\.[A-Za-z]+)?")


def coco_image_id(eval_id: str) -> int | None:
    """The COCO image id of an evaluation image's id (module comment above), or None when
    the id is none of those forms (e.g. the shapes world's content hashes)."""
    match = _COCO_NAME.fullmatch(str(eval_id).strip())
    return int(match.group(1)) if match else None


def questions_for_images(
    table: pd.DataFrame,
    eval_ids: Sequence[str],
    dataset: str,
    max_questions: int | None,
    seed: int,
    *,
    source: str = "",
) -> pd.DataFrame:
    """The questions of ``table`` (``load_vqa``) about the evaluation images, as rows of
    ``QUESTION_COLUMNS`` (``image_id``: the evaluation set's id, ``question_id`` a string),
    in question order; at most ``max_questions``, a sample seeded with ``seed``."""
    by_coco: dict[int, str] = {}
    for eval_id in eval_ids:
        coco = coco_image_id(eval_id)
        if coco is not None:
            by_coco.setdefault(coco, str(eval_id))
    chosen = table[table["image_id"].isin(by_coco.keys())]
    if chosen.empty:
        examples = ", ".join(repr(str(i)) for i in list(eval_ids)[:3])
        raise InputError(
            f"vqa: none of the {len(eval_ids)} evaluation images has a question in {dataset} "
            f"{source}(evaluation ids such as {examples}; the questions are about COCO ids "
            f"such as {int(table['image_id'].iloc[0]) if len(table) else '-'}): the evaluation "
            "set must be COCO images of the same split (val2014), named by their COCO id or "
            "file name"
        )
    if max_questions is not None and len(chosen) > max_questions:
        picked = np.random.default_rng(seed).choice(len(chosen), max_questions, replace=False)
        chosen = chosen.iloc[np.sort(picked)]
    return pd.DataFrame(
        {
            "dataset": dataset,
            "question_id": chosen["question_id"].astype(str).to_numpy(),
            "image_id": [by_coco[int(i)] for i in chosen["image_id"]],
            "question": chosen["question"].to_numpy(),
            "answers": [list(a) for a in chosen["answers"]],
            "question_type": chosen["question_type"].to_numpy(),
            "answer_type": chosen["answer_type"].to_numpy(),
        },
        columns=QUESTION_COLUMNS,
    )


def load_coco_captions(path: str | Path) -> dict[int, str]:
    """COCO image id -> its first caption (lowest annotation ``id``), white space collapsed,
    of a COCO captions file (``captions_train2014.json``), read and validated by the one COCO
    reader (``benchmarks.coco.read_coco_captions``; an ``images`` list is not needed)."""
    from vlv_pipeline.benchmarks.coco import read_coco_captions

    coco = read_coco_captions(path, need_images=False, hint=VQA_TRAIN_CAPTIONS_HINT)
    return {image: " ".join(texts[0].split()) for image, texts in coco.captions.items()}


def draw_examples(
    train: pd.DataFrame, captions: dict[int, str], count: int, seed: int, *, source: str = ""
) -> list[dict]:
    """``count`` few-shot examples from the training questions ``train`` (``load_vqa``) whose
    images have a caption, drawn with ``seed`` (distinct images): ``question_id``,
    ``image_id`` (COCO), ``question``, ``answer``, ``caption``. A k-shot prompt takes the first
    k, so the 4 examples are among the 32."""
    if count == 0:
        return []
    usable = train[train["image_id"].isin(captions.keys())]
    usable = usable.drop_duplicates("image_id")  # one question per image: varied examples
    if len(usable) < count:
        raise InputError(
            f"vqa: {count} examples asked for, but only {len(usable)} training images {source}"
            "have both a question and a caption: are the training files of the same split?"
        )
    picked = np.random.default_rng(seed).choice(len(usable), count, replace=False)
    rows = usable.iloc[picked]
    return [
        {
            "question_id": int(r.question_id),
            "image_id": int(r.image_id),
            "question": str(r.question),
            "answer": str(r.answer),
            "caption": captions[int(r.image_id)],
        }
        for r in rows.itertuples()
    ]


def build_prompt(instruction: str, examples: Iterable[dict], caption: str, question: str) -> str:
    """The answerer's prompt: the instruction, each example's description (its caption in
    the image's place), question and answer, then the asked image's description and question,
    ending at ``Answer:``."""
    parts = [instruction.strip(), ""]
    for ex in examples:
        parts += [_block(ex["caption"], ex["question"]) + f" {ex['answer']}", ""]
    parts.append(_block(caption, question))
    return "\n".join(parts)


def _block(caption: str, question: str) -> str:
    return f"Description: {' '.join(caption.split())}\nQuestion: {question.strip()}\nAnswer:"
