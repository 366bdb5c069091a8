"""Captioner backends for caption-pair synthesis (pipeline `synthesize`).

Every backend has one method, ``caption_stream(items)``: it takes an iterable of
``(image_id, PIL.Image)`` and yields ``(image_id, caption)`` as captions arrive (in any
order), or ``(image_id, CaptionFailure)`` for an image it gave up on. The node appends each
caption to a ``CaptionJournal`` and each failure to the ``FailureJournal`` beside it at
once, so an interrupted run loses nothing and a rerun skips what is done (and, unless
``synthesize.retry_failed``, what failed).

- ``manifest``: the captions already in the image manifest (no backend object).
- ``transformers``: a local image-to-text model (``captioners/hf.py``).
- ``openai``: an OpenAI-compatible chat-completions endpoint (``captioners/openai_chat.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from vlv_pipeline.errors import UserError


class CaptionerError(UserError, RuntimeError):
    """A captioner failed in a way a retry will not fix (bad request, bad model, bad answer)."""


class CaptionFailuresError(CaptionerError):
    """More images failed than ``synthesize.max_failed_fraction`` allows."""


def truncate(text: str, limit: int) -> str:
    """``text`` (stripped) cut to ``limit`` characters, saying so: for a server's answer or a
    failure's reason in a message."""
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "... [truncated]"


@dataclass(frozen=True)
class CaptionFailure:
    """What a backend yields in place of a caption for an image it gave up on."""

    reason: str
    attempts: int = 1


class Captioner(Protocol):
    def describe(self) -> dict: ...

    def caption_stream(
        self, items: Iterable[tuple[str, Image.Image]]
    ) -> Iterator[tuple[str, str | CaptionFailure]]: ...
