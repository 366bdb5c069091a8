"""A model card's evaluation: ``validate_stage1``'s and ``validate_stage2``'s numbers in the
card's words (``stage1_evaluation``, ``stage2_evaluation``), and the card of a saved model
directory rewritten with them (``update_evaluation``: the text between the evaluation markers
and the header's ``model-index``, atomically), as ``ModelCardDataset``
(``datasets/model_card.py``) does after validation. The cards are ``models/model_card.py``'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from vlv_pipeline.errors import MissingInputError
from vlv_pipeline.models.model_card_parts import (
    CARD,
    EVALUATION_END,
    EVALUATION_START,
    card_header,
    number_text,
    render_card,
)


def evaluation_text(evaluation: Mapping) -> str:
    """The card's evaluation paragraph for ``evaluation`` (``stage1_evaluation``'s or
    ``stage2_evaluation``'s)."""
    lines = [evaluation["summary"], ""]
    metrics = evaluation.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {number_text(value)} |" for name, value in metrics.items()]
        lines.append("")
    samples = evaluation.get("samples") or []
    if samples:
        lines += ["| caption | reference |", "|---|---|"]
        for sample in samples:
            caption = str(sample.get("caption", "")).replace("|", "\\|")
            reference = str(sample.get("reference") or "").replace("|", "\\|")
            lines.append(f"| {caption} | {reference} |")
        lines.append("")
    return "\n".join(lines).strip()


def with_evaluation(card: str, evaluation: Mapping) -> str:
    """``card`` with its evaluation paragraph and the header's ``model-index`` replaced."""
    from huggingface_hub import EvalResult, ModelCard

    parsed = ModelCard(card, ignore_metadata_errors=True)
    dataset = evaluation.get("dataset") or {}
    results = [
        EvalResult(
            task_type=evaluation["task"],
            dataset_type=dataset.get("type", "images"),
            dataset_name=dataset.get("name", "validation images"),
            dataset_split=dataset.get("split"),
            metric_type=name,
            metric_name=name.replace("_", " "),
            metric_value=float(value),
        )
        for name, value in (evaluation.get("metrics") or {}).items()
    ]
    parsed.data.eval_results = results or None
    parsed.data.metrics = list((evaluation.get("metrics") or {}).keys()) or None
    if results and not parsed.data.model_name:
        parsed.data.model_name = "vlv-pipeline model"
    text = parsed.text
    block = f"{EVALUATION_START}\n{evaluation_text(evaluation)}\n{EVALUATION_END}"
    start, end = text.find(EVALUATION_START), text.find(EVALUATION_END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(EVALUATION_END) :]
    else:
        text = f"{text.rstrip()}\n\n## Evaluation\n\n{block}\n"
    return str(ModelCard(f"---\n{parsed.data.to_yaml()}\n---\n{text}"))


def update_evaluation(directory: str | os.PathLike, evaluation: Mapping) -> Path:
    """Rewrite ``directory``'s card with ``evaluation`` (``with_evaluation``), atomically:
    a temporary beside it, flushed, renamed over it (``files.atomic_target``). A directory
    saved before cards gets a card holding the evaluation alone."""
    from vlv_pipeline.files import atomic_target

    directory = Path(directory)
    if not directory.is_dir():
        raise MissingInputError(f"no model directory at {directory} to write the card of")
    card = directory / CARD
    old = card.read_text(encoding="utf-8") if card.is_file() else _bare_card(directory)
    new = with_evaluation(old, evaluation)
    with atomic_target(card) as tmp:
        tmp.write_text(new, encoding="utf-8")
    return card


def _bare_card(directory: Path) -> str:
    header = card_header(tags=["vlv", "vision-language-vision"])
    body = (
        f"# {directory.name}\n\nA model directory saved before this project wrote model "
        "cards: only its evaluation is recorded here.\n"
    )
    return render_card(header, body)


# ------------------------------------------------------------- validation's numbers


def stage1_evaluation(metrics: Mapping) -> dict:
    """The encoder's card evaluation from ``validate_stage1``'s metrics."""
    sampling = metrics.get("sampling") or {}
    how = (
        f"rendered by the frozen T2I model from their caption embeddings "
        f"({sampling.get('steps')} steps, guidance {sampling.get('guidance')}, "
        f"{sampling.get('scheduler')}, seed {sampling.get('seed')})"
    )
    split = metrics.get("split") or "first non-empty"
    reconstruction = metrics.get("reconstruction") or {}
    if reconstruction:
        summary = (
            f"`validate_stage1`: {metrics.get('images')} images of the `{split}` split "
            f"{how}, judged by the attribute probe against their ground-truth captions "
            "(share of reconstructions whose whole scene, or each attribute, matches)."
        )
    else:
        summary = (
            f"`validate_stage1`: {metrics.get('images')} images of the `{split}` split {how}; "
            "no attribute probe in this environment, so no number: see the grid "
            "`08_reporting/stage1_grid.png` of the same version."
        )
    return {
        "source": "validate_stage1",
        "task": "image-feature-extraction",
        "dataset": {"name": f"{split} images", "type": "images", "split": split},
        "summary": summary,
        "metrics": {k: v for k, v in reconstruction.items() if isinstance(v, int | float)},
    }


def stage2_evaluation(metrics: Mapping, key: str) -> dict | None:
    """A captioner's card evaluation from ``validate_stage2``'s metrics (``key``: ``vlv``
    or ``without_stage1``); None when that captioner was not scored."""
    entry = metrics.get(key)
    if not isinstance(entry, Mapping):
        return None
    generation = metrics.get("generation") or {}
    scored = {
        k: v
        for k, v in entry.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "captions"
    }
    how = (
        f"`validate_stage2`: captions of {metrics.get('images')} evaluation images "
        f"(up to {generation.get('max_new_tokens')} new tokens, num_beams "
        f"{generation.get('num_beams')})"
    )
    if scored:
        summary = (
            f"{how}, parsed and compared with the images' ground-truth scenes (exact scene "
            "match, per-attribute precision and recall). Some captions beside their references:"
        )
    else:
        summary = (
            f"{how}; no attribute probe in this environment, so no scene scores. Some "
            "captions beside their references:"
        )
    return {
        "source": "validate_stage2",
        "task": "image-to-text",
        "dataset": {"name": "evaluation images", "type": "images"},
        "summary": summary,
        "metrics": scored,
        "samples": list(entry.get("samples") or [])[:4],
    }
