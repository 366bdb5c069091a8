"""Nodes of Table 2, rated captions: a sample of the evaluation set, every captioner's caption
of it rated 0-6 by a judge (the shapes world's exact rubric scorer, or a VLM) and by human
raters through a blind rating page, and the table of the means.

``sample_rating_items`` -> ``rating_sample`` (the rated images and captions, written down)
``judge_rating_items``  -> ``rating_judgements`` (one score, or unparsed/failed, per caption)
``write_rating_page``   -> ``rating_page`` (the self-contained HTML page for human raters)
``read_user_ratings``   -> ``rating_users`` (the files the raters saved, checked)
``rating_table``        -> ``eval_table2`` (``PaperTable.to_dict()``)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vlv_pipeline.captioners import CaptionFailure
from vlv_pipeline.captioners.credentials import api_key
from vlv_pipeline.distributed import each_rank, rank
from vlv_pipeline.errors import InputError, ParameterError
from vlv_pipeline.metrics.rating_page import (
    image_data_url,
    page_items,
    rating_page_html,
    read_ratings,
)
from vlv_pipeline.metrics.rubric import mean_interval, rubric_hash, rubric_score, true_scene
from vlv_pipeline.metrics.tables import PaperTable, Row
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.rating import RatingParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines.evaluate.nodes import captioner_label

logger = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["image_id", "index", "captioner", "caption"]
JUDGEMENT_COLUMNS = ["image_id", "captioner", "status", "score", "answer"]
USER_COLUMNS = ["image_id", "captioner", "score", "rater"]
# The paper's Table 2 (arXiv 2507.07104 v2, section 4.2): 200 COCO 2014 val images, a VLM
# judge (Gemini 2.0 Flash) and 3 human raters, 0-6. Qwen2.5-VL-7B's row is published too but
# its numbers are not filled in here (see PAPER_NOTE).
PAPER_ROWS = [
    Row("VLV", {"judge": 5.18, "users": 5.17}, "paper"),
    Row("GPT-4o", {"judge": 5.25, "users": 5.20}, "paper"),
]
PAPER_NOTE = (
    "paper rows: 200 COCO 2014 val images, judged by Gemini 2.0 Flash and rated by 3 users "
    "(the paper's Table 2); its Qwen2.5-VL-7B row is not copied here."
)


def _captioners(captions: pd.DataFrame, params: RatingParams) -> list[str]:
    present = [c for c in captions.columns if c != "image_id" and captions[c].notna().any()]
    if params.captioners is None:
        return present
    unknown = [c for c in params.captioners if c not in present]
    if unknown:
        raise ParameterError(
            f"rating.captioners names {unknown}, not caption columns of eval_captions with any "
            f"caption (columns: {present})"
        )
    return list(params.captioners)


def sample_rating_items(data, captions: pd.DataFrame, params: RatingParams) -> pd.DataFrame:
    """``rating.images`` images of the evaluation set drawn at random (numpy's
    ``default_rng(rating.seed)``, without replacement, kept in the set's order), with every
    captioner's caption of each: one row per (image, captioner); ``index`` is the image's
    position in the evaluation set. A caption that is missing stays null (it is not rated)."""
    ids = [str(i) for i in data.image_ids]
    position = {image_id: i for i, image_id in enumerate(ids)}
    table = captions.assign(image_id=captions["image_id"].astype(str))
    unknown = set(table["image_id"]) - set(position)
    if unknown:
        raise InputError(
            f"eval_captions has {len(unknown)} images not in the evaluation set (e.g. "
            f"{sorted(unknown)[0]!r}): run evaluate's caption_eval_images again"
        )
    if "reference" not in table and any(r is not None for r in data.references):
        table["reference"] = [data.references[position[i]] for i in table["image_id"]]
    names = _captioners(table, params)
    n = len(table)
    k = min(params.images, n)
    chosen = np.sort(np.random.default_rng(params.seed).choice(n, size=k, replace=False))
    picked = table.iloc[chosen]
    rows = [
        (image_id, position[image_id], name, None if pd.isna(caption) else str(caption))
        for image_id, (_, row) in zip(picked["image_id"], picked.iterrows(), strict=True)
        for name, caption in ((name, row[name]) for name in names)
    ]
    logger.info(
        "rating: %d of %d images (seed %d), captions of %s", k, n, params.seed, ", ".join(names)
    )
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def _pil(data, index: int) -> Image.Image:
    pixels = data.pixels[index]
    array = pixels.permute(1, 2, 0).numpy() if hasattr(pixels, "permute") else np.asarray(pixels)
    return Image.fromarray(np.ascontiguousarray(array).astype(np.uint8))


def judge_rating_items(
    data,
    sample: pd.DataFrame,
    params: RatingParams,
    world: WorldParams,
    credentials: dict | None,
) -> pd.DataFrame:
    """Every caption of the sample rated by ``rating.judge``: one row per (image, captioner)
    with ``status`` rated (``score`` 0-6), unparsed (a VLM answer without the score line:
    ``score`` null, the answer kept), failed (no answer after the retries; asked again on a
    rerun) or missing (no caption to rate). ``answer`` is the judge's text (the exact judge's:
    its counts)."""
    rows = sample[sample["caption"].notna()]
    if params.judge == "none":
        return pd.DataFrame(columns=JUDGEMENT_COLUMNS)
    if params.judge == "rubric":
        results = _rubric_judgements(data, rows, world)
    else:
        results = _vlm_judgements(data, rows, params, credentials)
    out = []
    for (image_id, captioner, caption), result in zip(
        sample[["image_id", "captioner", "caption"]].itertuples(index=False),
        (results.get(i) for i in sample.index),
        strict=True,
    ):
        if pd.isna(caption):
            out.append((image_id, captioner, "missing", None, None))
        else:
            out.append((image_id, captioner, *result))
    table = pd.DataFrame(out, columns=JUDGEMENT_COLUMNS)
    table["score"] = table["score"].astype("Float64")
    counts = table["status"].value_counts().to_dict()
    logger.info("rating: judge %s: %s", params.judge, counts)
    return table


def _rubric_judgements(data, rows: pd.DataFrame, world: WorldParams) -> dict:
    from vlv_pipeline.world.scene import CaptionParser, Vocabulary

    parser = CaptionParser(Vocabulary.from_params(world))
    scenes: dict[int, list] = {}
    results = {}
    for label, index, caption in rows[["index", "caption"]].itertuples():
        if index not in scenes:
            reference = data.references[index]
            scene = true_scene(reference or "", parser)
            if scene is None:
                raise InputError(
                    f"rating.judge rubric rates captions against the shapes world's true scene, "
                    f"read from the reference caption, but image {data.image_ids[index]!r} has "
                    f"reference {reference!r}, which is not a caption of the world's vocabulary. "
                    "Outside the shapes world use rating.judge vlm (or none)"
                )
            scenes[index] = scene
        reading = rubric_score(caption, scenes[index], parser)
        results[label] = ("rated", float(reading.level), reading.explain())
    return results


def _vlm_judgements(data, rows: pd.DataFrame, params: RatingParams, credentials) -> dict:
    """The VLM's answers, from the journal or asked now (rank 0 asks; every rank reads)."""
    from vlv_pipeline.captioners.judge import (
        JudgeJournal,
        RubricJudge,
        item_key,
        journal_path,
        parse_score,
    )

    spec = params.vlm
    journal = JudgeJournal(journal_path(params.journal_dir, spec.model))
    keys = {
        label: item_key(str(image_id), caption)
        for label, image_id, caption in rows[["image_id", "caption"]].itertuples()
    }

    def ask() -> dict[str, str]:
        if rank() != 0:
            return {}
        done = journal.read()
        todo: dict[str, tuple[int, str, str]] = {}
        for label, image_id, index, caption in rows[["image_id", "index", "caption"]].itertuples():
            key = keys[label]
            if key not in done and key not in todo:
                todo[key] = (int(index), str(image_id), caption)
        logger.info(
            "rating: %d judge answers already in %s, %d to ask %s",
            len(set(keys.values()) & set(done)),
            journal.path,
            len(todo),
            spec.model,
        )
        if not todo:
            return {}
        key = api_key(credentials, "rating", "judge", spec.base_url)
        judge = RubricJudge(api_key=key, **spec.model_dump())
        failures: dict[str, str] = {}

        def items():
            for item, (index, _, caption) in todo.items():
                yield item, _pil(data, index), caption

        for item, answer in judge.rate_stream(items()):
            if isinstance(answer, CaptionFailure):
                failures[item] = answer.reason
            else:
                journal.append(item, answer, todo[item][1])
        if failures:
            logger.warning(
                "rating: the judge gave no answer for %d caption(s) (asked again on the next "
                "run); e.g. %s",
                len(failures),
                next(iter(failures.values())),
            )
        return failures

    failures = {k: v for part in each_rank(ask) for k, v in part.items()}
    answers = journal.read()
    results = {}
    for label, key in keys.items():
        if key in answers:
            answer = answers[key]["answer"]
            score = parse_score(answer)
            status = "rated" if score is not None else "unparsed"
            results[label] = (status, None if score is None else float(score), answer)
        else:
            results[label] = ("failed", None, failures.get(key, "no answer"))
    return results


def write_rating_page(data, sample: pd.DataFrame, params: RatingParams) -> str:
    """The blind rating page of the sample (``metrics/rating_page.py``): one HTML file, the
    images embedded, the captions of each in a seeded order without names."""
    items = page_items(sample, params.seed)
    first = dict(zip(sample["image_id"].astype(str), sample["index"], strict=False))
    images, side = [], None
    for item in items:
        image = _pil(data, int(first[item.image_id]))
        side = image.width
        images.append(image_data_url(image, params.page_image_format))
    return rating_page_html(items, images, pixelated=side is not None and side < 128)


def read_user_ratings(sample: pd.DataFrame, params: RatingParams) -> pd.DataFrame:
    """The rating files named in ``rating.ratings`` (one per rater), checked against this
    run's page (``metrics.rating_page.read_ratings``): one row per scored caption."""
    if not params.ratings:
        return pd.DataFrame(columns=USER_COLUMNS)
    items = page_items(sample, params.seed)
    frames = [
        read_ratings(Path(p), items, complete=params.complete_ratings) for p in params.ratings
    ]
    table = pd.concat(frames, ignore_index=True)
    raters = table["rater"].nunique()
    if raters < len(params.ratings):
        logger.warning(
            "rating: %d rating files name only %d distinct raters; each file counts as its rater's",
            len(params.ratings),
            raters,
        )
        table["rater"] = [f"{r} ({i})" for i, frame in enumerate(frames) for r in frame["rater"]]
    logger.info("rating: %d user scores from %d file(s)", len(table), len(params.ratings))
    return table


def _order(names: list[str]) -> list[str]:
    """The model's row (``vlv``) first, the reference captions last."""
    first = [n for n in names if n == "vlv"]
    last = [n for n in names if n == "reference"]
    return first + [n for n in names if n not in ("vlv", "reference")] + last


def rating_table(
    sample: pd.DataFrame,
    judgements: pd.DataFrame,
    users: pd.DataFrame,
    params: RatingParams,
    evaluate: EvaluateParams | None = None,
) -> dict:
    """Table 2: per captioner, the judge's mean score and the users' (each caption's mean
    over the raters, then the mean over captions), each with its 95% interval and the number
    of captions it averages; the paper's published numbers below. Rows are labelled as in
    Tables 1 and 3, from ``evaluate.captioners`` (``captioner_label``). ``PaperTable.to_dict()``."""
    names = _order(list(dict.fromkeys(sample["captioner"])))
    images = sample["image_id"].nunique()
    rows, notes = [], []
    judged = params.judge != "none"
    for name in names:
        values, intervals, count = {}, {}, {}
        if judged:
            mine = judgements[(judgements["captioner"] == name) & (judgements["status"] == "rated")]
            values["judge"], interval = _mean(mine["score"].astype(float), params)
            count["judge"] = len(mine)
            if interval is not None:
                intervals["judge"] = interval
        mine = users[users["captioner"] == name]
        if len(mine):
            per_caption = mine.groupby("image_id")["score"].mean()
            values["users"], interval = _mean(per_caption, params)
            count["users"] = len(per_caption)
            if interval is not None:
                intervals["users"] = interval
        else:
            values["users"] = None
        label, kind = captioner_label(name, evaluate)
        rows.append(Row(label, values, kind, intervals, count))
    columns = [("judge", _judge_header(params))] if judged else []
    columns.append(("users", "users (0-6)"))
    notes.append(
        f"{images} images drawn at random (seed {params.seed}) from the evaluation set; their "
        "ids and captions are in rating_sample"
        + (" (the paper rates 200)" if images < 200 else "")
        + "."
    )
    notes.append(_judge_note(params, judgements, evaluate))
    notes.append(_interval_note(params))
    if len(users):
        notes.append(
            f"users: {users['rater'].nunique()} rater(s), from {len(params.ratings)} file(s) saved "
            "from the blind rating page (rating_page); a caption's score is its raters' mean."
        )
    else:
        notes.append(
            "users: no rating file given (rating.ratings). The blind rating page is "
            "rating_page.html: rate it, save, and name the saved file in rating.ratings."
        )
    notes.append(PAPER_NOTE)
    table = PaperTable(
        key="table2",
        title="Table 2: rated captions (0-6, higher is better)",
        columns=columns,
        rows=rows + [Row(r.label, dict(r.values), r.kind) for r in PAPER_ROWS],
        notes=notes,
    )
    return table.to_dict()


def _mean(scores: pd.Series, params: RatingParams):
    return mean_interval(
        scores.tolist(), params.interval, seed=params.seed, samples=params.bootstrap_samples
    )


def _judge_header(params: RatingParams) -> str:
    if params.judge == "rubric":
        return "exact rubric judge (0-6)"
    return f"VLM judge: {params.vlm.model} (0-6)"


def _judge_note(
    params: RatingParams, judgements: pd.DataFrame, evaluate: EvaluateParams | None = None
) -> str:
    if params.judge == "none":
        return "judge: none (rating.judge none)."
    counts = judgements.groupby(["captioner", "status"]).size().unstack(fill_value=0)
    tally = "; ".join(
        f"{captioner_label(name, evaluate)[0]}: "
        + ", ".join(
            f"{int(row.get(s, 0))} {s}"
            for s in ("rated", "unparsed", "failed", "missing")
            if row.get(s, 0)
        )
        for name, row in counts.loc[_order(list(counts.index))].iterrows()
    )
    if params.judge == "rubric":
        return (
            "judge: exact, not a VLM. The shapes world's rubric scorer (metrics/rubric.py) "
            "rates each caption against the true scene, read from the image's reference "
            "caption: objects named, missed, hallucinated, with wrong attributes or in the "
            "wrong cell, mapped to 0-6 by a written rule. The paper's judge is Gemini 2.0 "
            f"Flash on COCO images: its numbers below are not comparable. Captions: {tally}."
        )
    from vlv_pipeline.captioners.judge import prompt_hash

    return (
        f"judge: {params.vlm.model} (OpenAI-compatible, {params.vlm.base_url}) with the "
        f"project's rubric (prompt {prompt_hash()}, rubric {rubric_hash()}); an answer that "
        "does not end with the line `Score: N` is unparsed and left out of the mean (never "
        f"counted as 0), a failed request is asked again on the next run. Captions: {tally}."
    )


def _interval_note(params: RatingParams) -> str:
    if params.interval == "t":
        return "Intervals: 95% interval of the mean, Student's t over the rated captions."
    return (
        f"Intervals: 95% interval of the mean, percentile bootstrap over the rated captions "
        f"({params.bootstrap_samples} resamples, seed {params.seed})."
    )
