"""Captions from any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, ...).

Only the standard library talks HTTP (``urllib.request``); a ``ThreadPoolExecutor`` keeps at
most ``max_concurrency`` requests in flight and at most ``2 * max_concurrency`` images taken
from the input at a time, so the input may be a generator over a large image set.

Failures come in two kinds:

- the image's: HTTP 408, 429, 5xx, connection errors, timeouts and the deadline are retried
  with exponential backoff (``max_retries``); an answer without a usable caption (malformed
  JSON, no text, an empty caption) is asked again until ``bad_answer_attempts`` such
  answers; any other 4xx (e.g. 400 for an image the model refuses) is not asked again. When
  its tries are spent the image is yielded as a ``CaptionFailure`` with the reason, and the
  stream goes on.
- the setting's: a redirect, 401, 403, 404, 405, 407, and rate limits (429) or an
  unreachable server (refused, no such host) that outlast the retries. Every image would
  get them, so ``caption_stream`` raises ``CaptionerError``: the queued images are never
  sent, retries waiting are dropped, and the answers to the requests in flight are yielded
  before the error (they are paid for).

A bad key that the server answers with HTTP 400 (some OpenAI-compatible servers do) reads
as a refused image, image after image. With ``stop_after_first_failures = K`` (the pipeline
sets ``synthesize.stop_after_first_failures``; 0, the class default, is off) the first
failures of a stream are held back until a caption arrives: when the first K answers are all
failures, the stream stops as for a setting's failure (``CaptionerError`` naming the last
answer and the credentials), and none of those images is yielded as failed. A caption
before that releases the held failures and turns the guard off; a stream with fewer than K
answers, all failures, yields them at its end.

Each request has two time limits: ``timeout_s`` for each socket operation (connect, each
read) and ``deadline_s`` for the whole exchange, enforced by a timer that shuts the
connection down, so a server that trickles its answer a byte at a time is cut off too.

The api key goes only into the ``Authorization`` header: never into logs, ``repr``,
``describe()`` or exception messages (server text quoted in an error is scrubbed of it).
No redirect is followed (urllib's default would resend the header to whatever address a
3xx names): a 3xx is a ``CaptionerError`` naming the configured URL and the origin the
server pointed at, so the key goes to the configured origin and nowhere else.

This module holds the client itself (its settings, the request, one exchange and the reading
of its answer, what each failure leads to); the pieces it stands on are ``transport.py``
(the opener that follows no redirect, the per-exchange deadline), ``failures.py`` (the kinds
of failure, ``Retry-After`` and the backoff) and ``streaming.py`` (the thread pool and the
first-failures guard).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

from PIL import Image

from vlv_pipeline.captioners import CaptionerError, CaptionFailure, truncate
from vlv_pipeline.captioners.failures import (
    CREDENTIALS_HINT,
    SETTING_ERRORS,
    BadAnswer,
    Cancelled,
    Rejected,
    Transient,
    backoff,
    parse_retry_after,
)
from vlv_pipeline.captioners.streaming import stream
from vlv_pipeline.captioners.transport import Deadline, build_opener, origin
from vlv_pipeline.errors import ParameterError

log = logging.getLogger(__name__)

ERROR_TEXT_CHARS = 500
# settings that change how a run goes, not which captions it makes: a journal's name leaves
# them out, so changing them keeps the captions made
RUN_ONLY_SETTINGS = (
    "max_concurrency",
    "timeout_s",
    "max_retries",
    "backoff_s",
    "deadline_s",
    "bad_answer_attempts",
)

# image_format (upper case) -> (PIL format, MIME type)
_IMAGE_FORMATS = {
    "PNG": ("PNG", "image/png"),
    "JPEG": ("JPEG", "image/jpeg"),
    "JPG": ("JPEG", "image/jpeg"),
    "WEBP": ("WEBP", "image/webp"),
}


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_number(name: str, value: Any, *, positive: bool) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    if not ok or (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        raise ParameterError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def _check_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{name} must be a non-empty string, got {value!r}")
    return value


class OpenAICaptioner:
    """Caption images with a vision chat model behind ``POST {base_url}/chat/completions``."""

    # what messages call it and where its settings live (a subclass used elsewhere, such as
    # the rating judge, names its own)
    label = "openai captioner"
    settings = "synthesize.captioner.openai"
    guard_setting = "synthesize.stop_after_first_failures"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        prompt: str,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 60,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_tokens: int = 300,
        image_format: str = "PNG",
        bad_answer_attempts: int = 2,
        deadline_s: float = 120,
        stop_after_first_failures: int = 0,
    ):
        _check_text("base_url", base_url)
        if not base_url.strip().lower().startswith(("http://", "https://")):
            raise ParameterError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.strip().rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = _check_text("model", model)
        self.prompt = _check_text("prompt", prompt)
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            # never echo the value: it may be a real key of the wrong type
            raise ParameterError(
                "api_key must be a non-empty string, or None for a server that needs no key"
            )
        self._api_key = api_key.strip() if api_key is not None else None
        self.max_concurrency = _check_int("max_concurrency", max_concurrency, 1)
        self.timeout_s = _check_number("timeout_s", timeout_s, positive=True)
        self.max_retries = _check_int("max_retries", max_retries, 0)
        self.backoff_s = _check_number("backoff_s", backoff_s, positive=False)
        self.max_tokens = _check_int("max_tokens", max_tokens, 1)
        self.bad_answer_attempts = _check_int("bad_answer_attempts", bad_answer_attempts, 1)
        self.deadline_s = _check_number("deadline_s", deadline_s, positive=True)
        self.stop_after_first_failures = _check_int(
            "stop_after_first_failures", stop_after_first_failures, 0
        )
        key = image_format.upper() if isinstance(image_format, str) else None
        if key not in _IMAGE_FORMATS:
            raise ParameterError(
                f"image_format must be one of PNG, JPEG, WEBP, got {image_format!r}"
            )
        self.image_format, self._mime = _IMAGE_FORMATS[key]
        self._opener = build_opener()  # proxies read now, no redirect followed

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key={key}, max_concurrency={self.max_concurrency})"
        )

    def describe(self) -> dict[str, str]:
        """What produced the captions (for run metadata); never the key."""
        return {"captioner": "openai", **self._endpoint(), "prompt": self.prompt}

    def _endpoint(self) -> dict[str, str]:
        """The model and the server, for ``describe`` (of this class and its subclasses)."""
        return {"model": self.model, "base_url": self.base_url}

    # ------------------------------------------------------------------ streaming

    def caption_stream(
        self, items: Iterable[tuple[str, Image.Image]]
    ) -> Iterator[tuple[str, str | CaptionFailure]]:
        """Yield ``(image_id, caption)`` as each answer arrives (any order), or
        ``(image_id, CaptionFailure)`` for an image whose answers stayed bad after its
        retries; the stream goes on with the other images.

        A failure that is not the image's (a redirect, a bad key or URL, rate limits or an
        unreachable server that outlast the retries) raises ``CaptionerError``: no new
        request is sent and the retries waiting are dropped, but the answers to the requests
        already in flight (each ends within ``deadline_s``) are yielded before it is raised.
        So does a stream whose first ``stop_after_first_failures`` answers are all failures
        (module docstring): those failures are not yielded.
        """
        return stream(
            items,
            self._caption_one,
            max_concurrency=self.max_concurrency,
            guard=self.stop_after_first_failures,
            guard_error=self._first_failures_error,
        )

    def _first_failures_error(self, held: list[tuple[str, CaptionFailure]]) -> CaptionerError:
        image_id, last = held[-1]
        return CaptionerError(
            f"{self.label}: the first {len(held)} answers of this run were all failures and "
            f"no caption arrived; the last, for image {image_id!r}: {last.reason}. Every image "
            f"failing is rarely the images' fault: {CREDENTIALS_HINT} (some servers answer a "
            f"bad key with HTTP 400), {self.settings}.base_url and model. None of "
            "these images was recorded as failed; if they really are unusable, set "
            f"{self.guard_setting} to 0 (off) or higher."
        )

    # ------------------------------------------------------------------ one image

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "vlv-pipeline-captioner",
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _data_url(self, image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=self.image_format)
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        return f"data:{self._mime};base64,{encoded}"

    def _body(self, image: Image.Image) -> dict[str, Any]:
        return self._vision_body(self.prompt, image)

    def _vision_body(self, text: str, image: Image.Image) -> dict[str, Any]:
        """A request asking about ``image`` (sent as a data URL) with the instruction
        ``text``."""
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": text},
                        {"type": "image_url", "image_url": {"url": self._data_url(image)}},
                    ],
                }
            ],
        }

    def _scrub(self, text: str) -> str:
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text

    def _server_message(self, raw: bytes) -> str:
        """The ``error.message`` of an OpenAI-style error body, else the body itself."""
        text = raw.decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            err = data.get("error")
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                text = err["message"]
            elif isinstance(err, str):
                text = err
        return truncate(self._scrub(text), ERROR_TEXT_CHARS) or "(empty body)"

    def _caption_one(
        self, image_id: str, image: Image.Image, cancel: threading.Event
    ) -> str | CaptionFailure:
        """The caption, or a ``CaptionFailure`` once this image's tries are spent; raises
        ``CaptionerError`` for a failure that is not the image's (see ``caption_stream``)."""
        if cancel.is_set():
            raise Cancelled
        body = json.dumps(self._body(image)).encode("utf-8")
        headers = self._headers()
        transient = bad = attempt = 0
        while True:
            if cancel.is_set():
                raise Cancelled
            attempt += 1
            retry_after: float | None = None
            try:
                return self._exchange(image_id, body, headers)
            except Rejected as e:
                # a 4xx about this request: asking again would send the same bytes
                return CaptionFailure(f"POST {self.url} -> {e}", attempt)
            except BadAnswer as e:
                bad += 1
                if bad >= self.bad_answer_attempts:
                    return CaptionFailure(
                        f"POST {self.url}: {e} ({bad} unusable answer(s) in {attempt} "
                        f"attempt(s); bad_answer_attempts = {self.bad_answer_attempts})",
                        attempt,
                    )
                what = str(e)
            except Transient as e:
                transient += 1
                if transient > self.max_retries:
                    self._give_up(image_id, e, attempt)  # raises when it is not the image's
                    return CaptionFailure(
                        f"POST {self.url} failed after {attempt} attempt(s); {e.last()}", attempt
                    )
                retry_after = e.retry_after
                what = e.short()
            delay = backoff(self.backoff_s, attempt - 1, retry_after)
            log.warning(
                "%s: image %r: %s; retry %d in %.2f s",
                self.label,
                image_id,
                truncate(what, 200),
                attempt,
                delay,
            )
            if cancel.wait(delay):
                raise Cancelled

    def _give_up(self, image_id: str, e: Transient, attempts: int) -> None:
        """Raise ``CaptionerError`` when the transient failure that outlasted the retries is
        not the image's: giving up image by image would mark every image failed."""
        text = (
            f"{self.label}: image {image_id!r}: POST {self.url} failed after {attempts} "
            f"attempt(s); {e.last()}"
        )
        if e.unreachable:
            raise CaptionerError(
                f"{text}. Is the server at {origin(self.url)} running, and is "
                f"{self.settings}.base_url right?"
            )
        if e.status == 429:
            raise CaptionerError(
                f"{text}. The server keeps rate-limiting: rerun later (the captions made so "
                f"far are kept), or lower {self.settings}.max_concurrency or raise "
                "its max_retries"
            )

    def _exchange(self, image_id: str, body: bytes, headers: dict[str, str]) -> str:
        """One POST: the caption, or ``Transient``, ``BadAnswer``, ``Rejected``, or
        ``CaptionerError`` for an answer that says the setting is wrong (not the image)."""
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        request.deadline = deadline = Deadline(self.deadline_s)
        with deadline:
            raw = self._send(image_id, request, min(self.timeout_s, self.deadline_s))
        if deadline.expired:  # a body cut off at the deadline may read as complete
            raise self._late()
        return self._parse_answer(raw)

    def _late(self) -> Transient:
        return Transient(
            f"no complete answer within deadline_s = {self.deadline_s:g} s (the server was "
            "still connecting or sending)"
        )

    def _send(self, image_id: str, request: urllib.request.Request, timeout: float) -> bytes:
        deadline: Deadline = request.deadline
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            with e:
                try:
                    error_body = e.read()
                except (OSError, http.client.HTTPException):
                    error_body = b""
                status = e.code
                if 300 <= status < 400:
                    raise self._redirect_error(image_id, status, e.headers) from None
                message = self._server_message(error_body)
                if status in SETTING_ERRORS:
                    raise CaptionerError(
                        f"{self.label}: image {image_id!r}: POST {self.url} -> HTTP {status} "
                        f"({SETTING_ERRORS[status].format(settings=self.settings)}): {message}"
                    ) from None
                if status in (408, 429) or status >= 500:
                    retry_after = parse_retry_after(e.headers.get("Retry-After"))
                    raise Transient(message, status=status, retry_after=retry_after) from None
                raise Rejected(f"HTTP {status}: {message}") from None
        except (OSError, http.client.HTTPException) as e:
            # connection refused/reset, DNS, timeouts (socket.timeout is an OSError), or the
            # connection cut at the deadline
            if deadline.expired:
                raise self._late() from None
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise Transient(
                truncate(self._scrub(f"{type(e).__name__}: {e}"), ERROR_TEXT_CHARS),
                unreachable=isinstance(reason, ConnectionRefusedError | socket.gaierror),
            ) from None

    def _redirect_error(self, image_id: str, status: int, headers) -> CaptionerError:
        location = headers.get("Location") if headers is not None else None
        if location:
            where = origin(urllib.parse.urljoin(self.url, location.strip()))
            target = f"a redirect to {self._scrub(where)}"
        else:
            target = "a redirect without a Location"
        return CaptionerError(
            f"{self.label}: image {image_id!r}: POST {self.url} -> HTTP {status}, "
            f"{target}. Redirects are not followed, so that the api key is sent to "
            f"{origin(self.url)} only. If the new address is the endpoint you mean, set "
            f"{self.settings}.base_url to it; otherwise check base_url."
        )

    def _parse_answer(self, raw: bytes) -> str:
        snippet = truncate(self._scrub(raw.decode("utf-8", errors="replace")), 200)
        try:
            data = json.loads(raw)
        except ValueError:
            raise BadAnswer(f"answered with malformed JSON: {snippet!r}") from None
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise BadAnswer(f"the answer has no choices[0].message.content: {snippet!r}") from None
        if isinstance(content, list):  # content given as parts: join the text parts
            content = "".join(
                part.get("text", "")
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        if not isinstance(content, str):
            raise BadAnswer(f"choices[0].message.content is not text: {snippet!r}")
        caption = content.strip()
        if not caption:
            finish = choice.get("finish_reason") if isinstance(choice, dict) else None
            raise BadAnswer(
                f"empty caption (finish_reason={finish!r}; max_tokens={self.max_tokens})"
            )
        return caption
