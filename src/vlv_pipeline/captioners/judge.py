"""The rating judge of Table 2: a vision chat model behind an OpenAI-compatible endpoint
reads one image and one caption with the rubric (``metrics/rubric.py``) and answers with a
score from 0 to 6 (paper: Gemini 2.0 Flash).

It is the project's captioning client (``openai_chat.OpenAICaptioner``: no redirect followed,
a deadline per request, retries with backoff, the key only in the ``Authorization`` header and
never logged) with another request body: the prompt carries the rubric and the caption, the
image goes as a data URL, as for captioning.

**Answer format.** The judge is asked to explain briefly and end with one line
``Score: N``, N a whole number from 0 to 6, nothing after it. ``parse_score`` reads exactly
that: the last non-empty line of the answer, stripped of surrounding white space, must be
``Score: N`` (spaces after the colon optional; the word ``Score`` as written). Anything else
(``**Score: 5**``, ``Score: 5/6``, ``Score: 7``, a score on an earlier line only) is
*unparsed*: the answer is kept as it came, counted in the table as unparsed, and never taken
for a 0.

**Journal.** Every answer is appended to a ``JudgeJournal`` (one jsonl line, fsynced) as it
arrives, keyed by the image and the caption's text (``item_key``), in a file named after the
judge's model and the prompt's hash (``journal_path``): a killed run resumes without asking
again what was answered, a changed caption is asked anew, and a changed rubric or model starts
another journal. Unparsed answers are journaled too (they are paid for, and asking again
would change the sample); failures (no answer after the retries) are not, so a rerun asks
them again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from vlv_pipeline.captioners import CaptionFailure
from vlv_pipeline.captioners.journal import CaptionJournal
from vlv_pipeline.captioners.openai_chat import OpenAICaptioner
from vlv_pipeline.metrics.rubric import MAX_SCORE, MIN_SCORE, rubric_text

ANSWER_FORMAT = (
    f"Explain your rating in a few sentences, then end your answer with one line of the form "
    f"`Score: N`, where N is a whole number from {MIN_SCORE} to {MAX_SCORE}. Write nothing "
    "after that line."
)
_SCORE_LINE = re.compile(r"Score:[ \t]*(\d+)")


def judge_prompt(caption: str) -> str:
    """What the judge reads beside the image: the rubric, the caption, the answer format."""
    return (
        "You are rating a caption written for the image shown.\n\n"
        f"{rubric_text()}\n\n"
        f'Caption:\n"""\n{caption}\n"""\n\n'
        f"{ANSWER_FORMAT}"
    )


def prompt_hash() -> str:
    """12 hex digits of sha256 over the judge's prompt (rubric and answer format): the
    rubric hash in the journal's name."""
    return hashlib.sha256(judge_prompt("{caption}").encode("utf-8")).hexdigest()[:12]


def parse_score(answer: str | None) -> int | None:
    """The score of a judge's answer (module docstring: the last non-empty line is exactly
    ``Score: N``, 0 <= N <= 6), or None for an answer that does not keep to the format."""
    if not isinstance(answer, str):
        return None
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = _SCORE_LINE.fullmatch(lines[-1])
    if match is None:
        return None
    value = int(match.group(1))
    return value if MIN_SCORE <= value <= MAX_SCORE else None


def item_key(image_id: str, caption: str) -> str:
    """The journal's key of one rating: the image and the caption's exact text (two captioners
    that wrote the same caption for an image share one answer)."""
    return hashlib.sha256(f"{image_id}\0{caption}".encode()).hexdigest()[:24]


def journal_path(journal_dir: str | Path, model: str) -> Path:
    """``<journal_dir>/<model>-<prompt hash>.jsonl`` (the model's name made file-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.") or "model"
    return Path(journal_dir) / f"{safe}-{prompt_hash()}.jsonl"


class JudgeJournal(CaptionJournal):
    """The judge's answers: one ``{"image_id": <item_key>, "answer", "image", "created_at"}``
    per line (``image_id`` holds the item's key, as ``CaptionJournal.read`` keys by it;
    ``image`` is the image's id, for people reading the file)."""

    FIELDS = ("answer",)

    def append(self, key: str, answer: str, image_id: str = "") -> None:  # type: ignore[override]
        self._append({"image_id": key, "answer": answer, "image": image_id})


class RubricJudge(OpenAICaptioner):
    """``rate_stream`` yields ``(key, answer)`` or ``(key, CaptionFailure)`` for items
    ``(key, image, caption)``, as ``caption_stream`` does for captions (same retries, failures
    and errors); the answer is the model's text, to be read with ``parse_score``."""

    label = "rating judge"
    settings = "rating.vlm"
    guard_setting = "rating.vlm.stop_after_first_failures"

    def __init__(self, *, base_url: str, model: str, api_key: str | None = None, **kwargs: Any):
        super().__init__(
            base_url=base_url, model=model, prompt=judge_prompt(""), api_key=api_key, **kwargs
        )

    def describe(self) -> dict[str, str]:
        """What rated the captions (never the key)."""
        return {"judge": "vlm", **self._endpoint(), "prompt_hash": prompt_hash()}

    def _body(self, item: tuple[Image.Image, str]) -> dict[str, Any]:  # type: ignore[override]
        image, caption = item
        return self._vision_body(judge_prompt(caption), image)

    def rate_stream(
        self, items: Iterable[tuple[str, Image.Image, str]]
    ) -> Iterator[tuple[str, str | CaptionFailure]]:
        return self.caption_stream((key, (image, caption)) for key, image, caption in items)
