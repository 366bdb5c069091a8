"""The answering LLM of the paper's Table 3: a text chat model behind an OpenAI-compatible
endpoint (paper: DeepSeek-V3) answers a VQA question from a caption in the image's place.

It is the project's captioning client (``openai_chat.OpenAICaptioner``: no redirect followed,
a deadline per request, retries with backoff, the key only in the ``Authorization`` header and
never logged) with a text-only request body (``temperature`` 0 by default, so a question
asked again gets the same answer) and a strict reading of the answer:

**Answer format.** The answer must be one non-empty line (blank lines around it allowed), at
most ``max_answer_words`` words once a leading ``Answer:`` label, surrounding quotes and a
final full stop are taken off. Anything else (a sentence, an explanation on a second line) is
an unusable answer: asked again up to ``bad_answer_attempts`` times, then recorded as a
failure with the server's text, never taken as an answer. The table counts a failed question
as wrong (VQA scores every question) and says how many there were.

**Journal.** Every answer is appended to an ``AnswerJournal`` (one jsonl line, fsynced) as it
arrives, keyed by a hash of the whole prompt (``prompt_key``: instruction, examples, caption,
question), in a file named after the answerer's settings that change answers
(``journal_path``: base_url, model, temperature, max_tokens, max_answer_words): a killed run
resumes without asking again, a changed caption or prompt is asked anew, two captioners that
wrote the same caption share one answer.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vlv_pipeline.captioners import CaptionerError, CaptionFailure
from vlv_pipeline.captioners.failures import BadAnswer
from vlv_pipeline.captioners.journal import CaptionJournal
from vlv_pipeline.captioners.openai_chat import OpenAICaptioner
from vlv_pipeline.errors import ParameterError

# settings that change the answers (the journal's name); the others change how a run goes
ANSWER_SETTINGS = ("base_url", "model", "temperature", "max_tokens", "max_answer_words")
_LABEL = re.compile(r"^answer\s*:\s*", re.IGNORECASE)
_QUOTES = ('"', "'", "`", "\u201c\u201d", "\u2018\u2019")


def parse_answer(text: str, max_words: int) -> str:
    """The short answer in a model's text (module docstring), or ``ValueError`` saying why
    the text is not one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"the answer has {len(lines)} lines, not one")
    answer = _LABEL.sub("", lines[0]).strip()
    for quote in _QUOTES:
        opening, closing = (quote[0], quote[-1])
        if len(answer) >= 2 and answer[0] == opening and answer[-1] == closing:
            answer = answer[1:-1].strip()
    answer = answer.rstrip(".").strip()
    if not answer:
        raise ValueError("the answer is empty")
    words = len(answer.split())
    if words > max_words:
        raise ValueError(f"the answer has {words} words, more than max_answer_words = {max_words}")
    return answer


def prompt_key(prompt: str) -> str:
    """The journal's key of one question: sha256 of the prompt's exact text (24 hex digits)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:24]


def journal_path(journal_dir: str | Path, settings: dict[str, Any]) -> Path:
    """``<journal_dir>/answers-<model>-<hash of ANSWER_SETTINGS>.jsonl``."""
    chosen = {k: settings.get(k) for k in ANSWER_SETTINGS}
    digest = hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", str(settings.get("model"))).strip("-.") or "model"
    return Path(journal_dir) / f"answers-{safe}-{digest}.jsonl"


class AnswerJournal(CaptionJournal):
    """The answers: one ``{"image_id": <prompt_key>, "answer", "question", "created_at"}`` per
    line (``image_id`` holds the prompt's key, as ``CaptionJournal.read`` keys by it;
    ``question`` names the question for people reading the file)."""

    FIELDS = ("answer",)

    def append(self, key: str, answer: str, question: str = "") -> None:  # type: ignore[override]
        self._append({"image_id": key, "answer": answer, "question": question})


class OpenAIAnswerer(OpenAICaptioner):
    """``answer_stream`` yields ``(key, answer)`` or ``(key, CaptionFailure)`` for items
    ``(key, prompt)``, as ``caption_stream`` does for images (same concurrency, retries,
    failures and errors); answers are read with ``parse_answer``."""

    label = "vqa answerer"
    settings = "vqa.answerer"
    guard_setting = "vqa.answerer.stop_after_first_failures"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_answer_words: int = 6,
        max_tokens: int = 16,
        **kwargs: Any,
    ):
        super().__init__(
            base_url=base_url,
            model=model,
            prompt="(each question's own)",
            api_key=api_key,
            max_tokens=max_tokens,
            **kwargs,
        )
        ok = isinstance(temperature, int | float) and not isinstance(temperature, bool)
        if not ok or not temperature >= 0:
            raise ParameterError(f"temperature must be a number >= 0, got {temperature!r}")
        if isinstance(max_answer_words, bool) or not isinstance(max_answer_words, int):
            raise ParameterError(f"max_answer_words must be an integer, got {max_answer_words!r}")
        if max_answer_words < 1:
            raise ParameterError(f"max_answer_words must be >= 1, got {max_answer_words!r}")
        self.temperature = float(temperature)
        self.max_answer_words = max_answer_words

    def describe(self) -> dict[str, Any]:
        """What answered (never the key)."""
        return {
            "answerer": "openai",
            **self._endpoint(),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "max_answer_words": self.max_answer_words,
        }

    def _body(self, prompt: str) -> dict[str, Any]:  # type: ignore[override]
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "messages": [{"role": "user", "content": prompt}],
        }

    def _parse_answer(self, raw: bytes) -> str:
        text = super()._parse_answer(raw)
        try:
            return parse_answer(text, self.max_answer_words)
        except ValueError as why:
            shown = json.dumps(text[:200])
            raise BadAnswer(f"an unusable answer ({why}): {self._scrub(shown)}") from None

    def answer_stream(
        self, items: Iterable[tuple[str, str]]
    ) -> Iterator[tuple[str, str | CaptionFailure]]:
        try:
            yield from self.caption_stream(items)
        except CaptionerError as error:
            raise CaptionerError(self._reword(str(error))) from None

    def _reword(self, text: str) -> str:
        """The captioning client's messages in the answerer's words: an item is a prompt (named
        by its key), and the key lives under ``answerer:`` in the credentials."""
        return text.replace(f"{self.label}: image ", f"{self.label}: prompt ").replace(
            "conf/local/credentials.yml", "conf/local/credentials.yml (under `answerer:`)"
        )
