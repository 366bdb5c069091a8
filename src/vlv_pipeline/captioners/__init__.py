"""Captioner backends for caption-pair synthesis (pipeline `synthesize`).

Every backend has one method, ``caption_stream(items)``: it takes an iterable of
``(image_id, PIL.Image)`` and yields ``(image_id, caption)`` as captions arrive (in any
order). The node appends each result to a ``CaptionJournal`` at once, so an interrupted
run loses nothing and a rerun skips what is done.

- ``manifest``: the captions already in the image manifest (no backend object).
- ``transformers``: a local image-to-text model (``captioners/hf.py``).
- ``openai``: an OpenAI-compatible chat-completions endpoint (``captioners/openai_chat.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from PIL import Image


class CaptionerError(RuntimeError):
    """A captioner failed in a way a retry will not fix (bad request, bad model, bad answer)."""


class Captioner(Protocol):
    def describe(self) -> dict: ...

    def caption_stream(
        self, items: Iterable[tuple[str, Image.Image]]
    ) -> Iterator[tuple[str, str]]: ...
