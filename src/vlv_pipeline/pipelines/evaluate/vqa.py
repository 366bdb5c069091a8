"""Nodes of Table 3, caption-only VQA: questions about the evaluation images answered from each
captioner's caption alone, scored with the standard VQA accuracy.

``select_vqa_questions`` -> ``vqa_questions`` (the questions asked and their ten annotations,
                            written down)
``draw_vqa_examples``    -> ``vqa_examples`` (the few-shot examples, fixed by seed, written down)
``answer_vqa_questions`` -> ``vqa_answers`` (one answer and its accuracy per question,
                            captioner and shot count)
``vqa_table``            -> ``eval_table3`` (``PaperTable.to_dict()``)

``vqa.source: shapes`` (conf/base): questions made from each test image's true scene (colour,
shape, count, position, presence; ``metrics/questions.py``), answered from the caption by the
world's caption parser: exact, no LLM, no examples; one column per kind of question.
``vqa.source: files`` (conf/paper): the official VQAv2 / OK-VQA files, the questions about the
evaluation images, answered by an OpenAI-compatible LLM (``vqa.answerer``; paper: DeepSeek-V3)
with 0, 4 and 32 examples from the training questions; one column per dataset and shot count.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vlv_pipeline.benchmarks.vqa import (
    QUESTION_COLUMNS,
    build_prompt,
    draw_examples,
    load_coco_captions,
    load_vqa,
    questions_for_images,
)
from vlv_pipeline.captioners import CaptionerError, CaptionFailure, CaptionFailuresError, truncate
from vlv_pipeline.captioners.credentials import api_key
from vlv_pipeline.captioners.journal import FailureJournal
from vlv_pipeline.distributed import rank, share, together, world_size
from vlv_pipeline.errors import InputError
from vlv_pipeline.metrics.questions import QUESTION_KINDS, CaptionAnswerer, caption_questions
from vlv_pipeline.metrics.tables import PaperTable, Row
from vlv_pipeline.metrics.vqa import (
    PAPER_ANSWERER,
    PAPER_TABLE3,
    bootstrap_interval,
    vqa_accuracy,
)
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.vqa import VQAParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines.evaluate.nodes import EvalData, captioner_label
from vlv_pipeline.world.scene import Vocabulary

logger = logging.getLogger(__name__)

ANSWER_COLUMNS = [
    "dataset",
    "question_id",
    "image_id",
    "question_type",
    "captioner",
    "shots",
    "answer",
    "accuracy",
    "status",
]
KNOWN_DATASETS = {"vqav2": "VQAv2", "okvqa": "OK-VQA"}
RETRY_FAILED = "`--params vqa.retry_failed=true`"
_ANSWER_TYPES = {"count": "number", "presence": "yes/no"}


def select_vqa_questions(data: EvalData, params: VQAParams, world: WorldParams) -> pd.DataFrame:
    """The questions asked (``QUESTION_COLUMNS``; ``image_id`` is the evaluation set's):
    generated from each image's reference scene (shapes), or the official files' questions
    about the evaluation images (files), at most ``vqa.max_questions`` per dataset."""
    if params.source == "shapes":
        try:
            asked = caption_questions(data.references, Vocabulary.from_params(world), params.seed)
        except ValueError as error:
            raise InputError(
                f"vqa.source shapes asks about each evaluation image's true scene, read from its "
                f"reference caption, but {error}: use vqa.source files for other images"
            ) from None
        table = pd.DataFrame(
            {
                "dataset": "shapes",
                "question_id": [f"{i}-{q.kind}" for i, q in asked],
                "image_id": [data.image_ids[i] for i, _ in asked],
                "question": [q.text for _, q in asked],
                "answers": [list(q.answers) for _, q in asked],
                "question_type": [q.kind for _, q in asked],
                "answer_type": [_ANSWER_TYPES.get(q.kind, "other") for _, q in asked],
            },
            columns=QUESTION_COLUMNS,
        )
        if params.max_questions is not None and len(table) > params.max_questions:
            rng = np.random.default_rng(params.seed)
            keep = np.sort(rng.choice(len(table), params.max_questions, replace=False))
            table = table.iloc[keep].reset_index(drop=True)
        logger.info(
            "vqa: %d questions about %d shapes-world images", len(table), len(data.image_ids)
        )
        return table
    parts = []
    for dataset in params.datasets:
        source = f"({dataset.questions}) "
        full = load_vqa(dataset.questions, dataset.annotations)
        asked = questions_for_images(
            full, data.image_ids, dataset.name, params.max_questions, params.seed, source=source
        )
        logger.info(
            "vqa: %s: %d questions about %d of the %d evaluation images",
            dataset.name,
            len(asked),
            asked["image_id"].nunique(),
            len(data.image_ids),
        )
        parts.append(asked)
    return pd.concat(parts, ignore_index=True)


def draw_vqa_examples(params: VQAParams) -> dict:
    """The few-shot examples of every dataset (``max(vqa.shots)`` each, drawn with
    ``vqa.seed`` from the training questions, captioned with COCO's captions); a k-shot
    prompt takes the first k. None for the shapes world, whose answerer takes no examples."""
    record: dict[str, Any] = {"seed": params.seed, "shots": list(params.shots), "datasets": {}}
    if params.source == "shapes":
        record["note"] = "the shapes world's answerer (its caption parser) takes no examples"
        return record
    record["captions"] = "COCO's own captions of the training images (first by annotation id)"
    count = max(params.shots)
    for dataset in params.datasets:
        if count == 0:
            record["datasets"][dataset.name] = []
            continue
        train = load_vqa(dataset.train_questions, dataset.train_annotations)
        captions = load_coco_captions(dataset.train_captions)
        record["datasets"][dataset.name] = draw_examples(
            train, captions, count, params.seed, source=f"({dataset.train_questions}) "
        )
    return record


def _captioner_columns(captions: pd.DataFrame) -> list[str]:
    """Every captioner column of ``eval_captions``, then ``reference``; a column without any
    caption is left out."""
    columns = [c for c in captions.columns if c not in ("image_id", "reference")]
    columns.append("reference")
    return [c for c in columns if c in captions and captions[c].notna().any()]


def _caption_of(captions: pd.DataFrame, columns: list[str]) -> dict[str, dict[str, str]]:
    ids = captions["image_id"].astype(str)
    return {
        c: {i: str(t) for i, t in zip(ids, captions[c], strict=True) if isinstance(t, str)}
        for c in columns
    }


def answer_vqa_questions(
    questions: pd.DataFrame,
    examples: dict,
    captions: pd.DataFrame,
    credentials: dict,
    params: VQAParams,
    world: WorldParams,
) -> pd.DataFrame:
    """One row per question, captioner (every column of ``eval_captions`` and ``reference``)
    and shot count (``ANSWER_COLUMNS``): the answer from the caption alone and its VQA
    accuracy (0..1). A question whose image has no caption in a column is left out of that
    column's rows; a question the answerer gave up on is ``status`` failed, accuracy 0."""
    columns = _captioner_columns(captions)
    texts = _caption_of(captions, columns)
    if params.source == "shapes":
        return _answer_from_scenes(questions, texts, columns, Vocabulary.from_params(world))
    return _answer_with_llm(questions, examples, texts, columns, credentials, params)


def _answer_from_scenes(
    questions: pd.DataFrame, texts: dict, columns: list[str], vocab: Vocabulary
) -> pd.DataFrame:
    answerer = CaptionAnswerer(vocab)
    rows = []
    for q in questions.itertuples(index=False):
        for column in columns:
            caption = texts[column].get(str(q.image_id))
            if caption is None:
                continue
            answer = answerer.answer(q.question, caption)
            accuracy = vqa_accuracy(answer, list(q.answers))
            rows.append(
                (q.dataset, q.question_id, q.image_id, q.question_type, column, 0, answer)
                + (accuracy, "answered")
            )
    return pd.DataFrame(rows, columns=ANSWER_COLUMNS)


def make_answerer(params: VQAParams, credentials: dict):
    from vlv_pipeline.captioners.answerer import OpenAIAnswerer

    key = api_key(credentials, "vqa", "answerer", params.answerer.base_url)
    return OpenAIAnswerer(api_key=key, **params.answerer.model_dump())


def _answer_with_llm(
    questions: pd.DataFrame,
    examples: dict,
    texts: dict,
    columns: list[str],
    credentials: dict,
    params: VQAParams,
) -> pd.DataFrame:
    from vlv_pipeline.captioners.answerer import AnswerJournal, journal_path, prompt_key

    shown = examples.get("datasets", {})
    for dataset in questions["dataset"].unique():
        if max(params.shots) > len(shown.get(dataset, [])):
            raise InputError(
                f"vqa: {max(params.shots)} examples needed for {dataset}, but vqa_examples holds "
                f"{len(shown.get(dataset, []))}: rerun the evaluate pipeline from "
                "draw_vqa_examples"
            )
    # every prompt, by its key: a job is (row of questions, column, shots, key)
    jobs: list[tuple[int, str, int, str]] = []
    prompts: dict[str, tuple[int, str, int]] = {}
    records = questions.to_dict("records")

    def prompt(index: int, column: str, shots: int) -> str:
        q = records[index]
        caption = texts[column][str(q["image_id"])]
        return build_prompt(params.instruction, shown[q["dataset"]][:shots], caption, q["question"])

    for index, q in enumerate(records):
        for column in columns:
            if str(q["image_id"]) not in texts[column]:
                continue
            for shots in params.shots:
                key = prompt_key(prompt(index, column, shots))
                jobs.append((index, column, shots, key))
                prompts.setdefault(key, (index, column, shots))
    settings = params.answerer.model_dump(mode="json")
    journal = AnswerJournal(
        journal_path(params.journal_dir, settings), rank=rank() if world_size() > 1 else None
    )
    failures = FailureJournal.beside(journal)
    answerer, done, failed = together(
        lambda: (make_answerer(params, credentials), journal.read(), failures.read())
    )
    skipped = set() if params.retry_failed else set(failed) - set(done)
    pending = [k for k in prompts if k not in done and k not in skipped]
    block = share(len(pending))
    mine = pending[block.start : block.stop]
    allowed = math.floor(params.max_failed_fraction * len(prompts) + 1e-9)
    logger.info(
        "vqa: %d prompts (%d questions x %d captioners x shots %s, the same prompt asked "
        "once): %d answered in %s, %d skipped as failed earlier (%s asks them again), %d to ask",
        len(prompts),
        len(questions),
        len(columns),
        list(params.shots),
        sum(k in done for k in prompts),
        journal.path,
        sum(k in skipped for k in prompts),
        RETRY_FAILED,
        len(pending),
    )

    def ask_mine() -> None:
        seen = len(skipped & set(prompts))
        stop = False

        def feed():
            for key in mine:
                if stop:
                    return
                yield key, prompt(*prompts[key])

        try:
            for key, result in tqdm(
                answerer.answer_stream(feed()), total=len(mine), desc="vqa answers", unit="q"
            ):
                question = str(records[prompts[key][0]]["question"])
                if not isinstance(result, CaptionFailure):
                    journal.append(key, result, question)
                    continue
                failures.append(key, result.reason, result.attempts)
                seen += 1
                if seen > allowed and not stop:
                    stop = True
                    logger.error(
                        "vqa: %d prompts failed, more than vqa.max_failed_fraction = %g of %d "
                        "allows (%d): asking no more",
                        seen,
                        params.max_failed_fraction,
                        len(prompts),
                        allowed,
                    )
        except CaptionerError as error:
            raise CaptionerError(
                f"{error}\nThe answers made so far are kept in {journal.path}; a rerun asks only "
                "the questions still to do."
            ) from None

    if pending:
        together(ask_mine)
        done, failed = journal.read(), failures.read()
    lost = [k for k in prompts if k not in done and k in failed]
    if len(lost) > allowed:
        reason = truncate(failed[lost[0]]["reason"], 200)
        raise CaptionFailuresError(
            f"vqa: {len(lost)} of {len(prompts)} prompts got no usable answer, more than "
            f"vqa.max_failed_fraction = {params.max_failed_fraction:g} allows (at most "
            f"{allowed}); the reasons are in {failures.path} (e.g. {reason}). The answers made "
            f"are kept in {journal.path}. Fix the cause and rerun with {RETRY_FAILED}, or raise "
            "vqa.max_failed_fraction to score those questions as wrong."
        )
    unaccounted = [k for k in prompts if k not in done and k not in failed]
    if unaccounted:
        raise CaptionerError(
            f"vqa: {len(unaccounted)} prompts have neither an answer nor a recorded failure; "
            "rerun the evaluate pipeline to ask them"
        )
    if lost:
        logger.warning(
            "vqa: %d of %d prompts got no usable answer and count as wrong; the reasons are in "
            "%s, %s asks them again",
            len(lost),
            len(prompts),
            failures.path,
            RETRY_FAILED,
        )
    rows = []
    for index, column, shots, key in jobs:
        q = records[index]
        answer = done[key]["answer"] if key in done else None
        accuracy = vqa_accuracy(answer, list(q["answers"])) if answer is not None else 0.0
        rows.append(
            (q["dataset"], q["question_id"], q["image_id"], q["question_type"], column, shots)
            + (answer, accuracy, "answered" if answer is not None else "failed")
        )
    return pd.DataFrame(rows, columns=ANSWER_COLUMNS)


def _cell(frame: pd.DataFrame, seed: int, resamples: int) -> tuple[float, tuple, int]:
    values = frame["accuracy"].to_numpy(dtype=float)
    low, high = bootstrap_interval(values, frame["image_id"].to_numpy(), seed, resamples)
    return 100 * float(values.mean()), (100 * low, 100 * high), len(values)


def vqa_table(
    answers: pd.DataFrame,
    examples: dict,
    params: VQAParams,
    evaluate: EvaluateParams | None = None,
) -> dict:
    """Table 3 (``PaperTable.to_dict()``): the mean VQA accuracy (%) of every captioner,
    with a 95% bootstrap interval over images, by question kind and overall (shapes) or by
    dataset and shot count (files), beside the paper's published numbers (files). Rows are
    labelled as in Tables 1 and 2, from ``evaluate.captioners`` (``captioner_label``)."""
    shapes = params.source == "shapes"
    if shapes:
        columns = [(kind, kind) for kind in QUESTION_KINDS] + [("overall", "overall")]
    else:
        columns = [
            (f"{d.name}_{k}", f"{d.label or KNOWN_DATASETS.get(d.name, d.name)} {k}-shot")
            for d in params.datasets
            for k in params.shots
        ]
    rows = []
    for captioner in answers["captioner"].unique():
        mine = answers[answers["captioner"] == captioner]
        label, kind = captioner_label(captioner, evaluate)
        row = Row(label, {}, kind)
        cells = {}
        if shapes:
            for kind in QUESTION_KINDS:
                cells[kind] = mine[mine["question_type"] == kind]
            cells["overall"] = mine
        else:
            for d in params.datasets:
                for k in params.shots:
                    part = mine[(mine["dataset"] == d.name) & (mine["shots"] == k)]
                    cells[f"{d.name}_{k}"] = part
        for key, frame in cells.items():
            if frame.empty:
                row.values[key] = None
                continue
            mean, interval, count = _cell(frame, params.seed, params.bootstrap_resamples)
            row.values[key], row.intervals[key], row.count[key] = mean, interval, count
        rows.append(row)
    rows.sort(key=lambda r: r.kind != "model")  # the model's row first, the others in order
    notes = _notes(answers, examples, params)
    if not shapes:
        keys = {k for k, _ in columns}
        for label, values in PAPER_TABLE3.items():
            shown = {k: v for k, v in values.items() if k in keys}
            if shown:
                rows.append(Row(label, shown, "paper"))
    table = PaperTable(
        key="table3",
        title="Table 3: caption-only VQA accuracy (%)",
        columns=columns,
        rows=rows,
        notes=notes,
    )
    for row in rows:
        if row.kind != "paper":
            logger.info(
                "vqa: %s %s",
                row.label,
                {k: None if v is None else round(v, 2) for k, v in row.values.items()},
            )
    return table.to_dict()


def _paper_numbers() -> str:
    vlv = PAPER_TABLE3["VLV"]
    return (
        f"VQAv2 {vlv['vqav2_0']:.2f} / {vlv['vqav2_4']:.2f} / {vlv['vqav2_32']:.2f}, OK-VQA "
        f"{vlv['okvqa_0']:.2f} / {vlv['okvqa_4']:.2f} / {vlv['okvqa_32']:.2f}"
    )


def _notes(answers: pd.DataFrame, examples: dict, params: VQAParams) -> list[str]:
    per_image = answers.drop_duplicates(["dataset", "question_id"])
    n_questions, n_images = len(per_image), per_image["image_id"].nunique()
    common = (
        "Accuracy: the standard VQA accuracy (official answer normalisation; min(#annotators "
        "who gave the answer / 3, 1) averaged over the ten leave-one-annotator-out subsets), "
        "in %; brackets: 95% bootstrap interval over images."
    )
    if params.source == "shapes":
        return [
            f"Shapes world: {n_questions} questions about {n_images} test images, one of each "
            "kind per image (colour, shape, count, position, presence), made from the image's "
            "true scene with ten annotations each; answered from each caption alone by the "
            "world's caption parser, an exact reader, not an LLM. Shots do not apply to it, so "
            "the columns are the kinds of question, not the paper's datasets and shot counts.",
            common,
            f"The paper's Table 3 (VQAv2 and OK-VQA answered by {PAPER_ANSWERER} from COCO "
            f"captions, 0 / 4 / 32 shots) gives VLV {_paper_numbers()}: another task, not "
            "comparable with these columns.",
        ]
    model = params.answerer.model if params.answerer else "?"
    failed = answers[answers["status"] == "failed"]
    notes = [
        f"{n_questions} questions about {n_images} evaluation images, answered by {model} from "
        "each caption alone (the caption in the image's place, temperature "
        f"{params.answerer.temperature:g}); a k-shot prompt holds k examples drawn with seed "
        f"{examples.get('seed', params.seed)} from the training questions, captioned with "
        "COCO's own captions (the same examples for every captioner).",
        common,
        f"Paper rows: {PAPER_ANSWERER} on the VQAv2 and OK-VQA validation questions (the "
        "paper's Table 3); only its VLV row is recorded here.",
    ]
    if params.max_questions is not None:
        notes.append(
            f"At most {params.max_questions} questions per dataset (a sample seeded with "
            f"{params.seed}), where the paper's sample may differ."
        )
    if len(failed):
        by = failed.groupby("captioner").size().to_dict()
        notes.append(
            f"{len(failed)} answers failed (no usable answer after the retries) and count as "
            f"wrong: {by}."
        )
    return notes
