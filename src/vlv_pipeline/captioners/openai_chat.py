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
"""

from __future__ import annotations

import base64
import functools
import http.client
import io
import json
import logging
import os
import random
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from PIL import Image

from vlv_pipeline.captioners import CaptionerError, CaptionFailure, truncate
from vlv_pipeline.errors import ParameterError

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 60.0
MAX_BACKOFF_S = 60.0
ERROR_TEXT_CHARS = 500
CREDENTIALS_HINT = "check the api key in conf/local/credentials.yml"
THREAD_NAME_PREFIX = "openai-captioner"

# image_format (upper case) -> (PIL format, MIME type)
_IMAGE_FORMATS = {
    "PNG": ("PNG", "image/png"),
    "JPEG": ("JPEG", "image/jpeg"),
    "JPG": ("JPEG", "image/jpeg"),
    "WEBP": ("WEBP", "image/webp"),
}


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: the 3xx reaches the caller as an ``HTTPError``, which refuses it.

    urllib would otherwise resend the request, ``Authorization`` header included, to any
    address in ``Location`` (another host, another port, plain http)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _Deadline:
    """Ends one HTTP exchange ``seconds`` after it began, however slowly the server sends.

    ``timeout_s`` bounds each socket operation, so a server that sends a byte at a time
    keeps a request alive for ever. A timer shuts the connection down at the deadline, which
    ends a blocked connect-tunnel, TLS handshake or read at once. It shuts down its own
    duplicate of the socket's descriptor (same connection, a descriptor nobody else closes),
    so it can never touch a descriptor number that was closed and reused meanwhile."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._copies: list[socket.socket] = []
        self._closed = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.name = f"{THREAD_NAME_PREFIX}-deadline"
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        with self._lock:
            self._closed = True
            for copy in self._copies:
                copy.close()
            self._copies.clear()

    def watch(self, sock: socket.socket) -> None:
        """Cut ``sock``'s connection at the deadline (at once if it has passed)."""
        with self._lock:
            if self._closed:
                return
            try:
                copy = socket.socket(fileno=os.dup(sock.fileno()))
            except OSError:
                return
            self._copies.append(copy)
            if self.expired:
                _shut(copy)

    def _expire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.expired = True
            for copy in self._copies:
                _shut(copy)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the other side


class _WatchedConnection:
    """An ``http.client`` connection whose socket ``deadline`` watches from the moment it is
    connected (before any proxy tunnel or TLS handshake)."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        self._create_connection = self._create_watched

    def _create_watched(self, *args, **kwargs) -> socket.socket:
        sock = socket.create_connection(*args, **kwargs)
        self._deadline.watch(sock)
        return sock


class _WatchedHTTPConnection(_WatchedConnection, http.client.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, http.client.HTTPSConnection):
    pass


_WATCHED = {
    http.client.HTTPConnection: _WatchedHTTPConnection,
    http.client.HTTPSConnection: _WatchedHTTPSConnection,
}


class _DeadlineOpen:
    """urllib handler mixin: a request with a ``deadline`` attribute gets a watched
    connection."""

    def do_open(self, http_class, req, **kwargs):
        deadline = getattr(req, "deadline", None)
        if deadline is not None and http_class in _WATCHED:
            http_class = functools.partial(_WATCHED[http_class], deadline=deadline)
        return super().do_open(http_class, req, **kwargs)


class _HTTPHandler(_DeadlineOpen, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_DeadlineOpen, urllib.request.HTTPSHandler):
    pass


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (no path, query or credentials)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class _Cancelled(Exception):
    """A worker saw the stream stop (another image failed, or the caller went away)."""


class _Transient(Exception):
    """A failure a retry may fix: HTTP 408, 429, 5xx, a timeout, a dropped connection."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        unreachable: bool = False,
    ):
        super().__init__(message)
        self.message, self.status = message, status
        self.retry_after, self.unreachable = retry_after, unreachable

    def short(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else self.message

    def last(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no HTTP status"
        return f"last status: {status}; last error: {self.message}"


class _BadAnswer(Exception):
    """An answer (HTTP 200) without a usable caption: malformed JSON, no text, empty text."""


class _Rejected(Exception):
    """A 4xx about this request (e.g. 400 for an image the model refuses)."""


# statuses that say the setting is wrong, not the image: every image would get them
_SETTING_ERRORS = {
    401: CREDENTIALS_HINT,
    403: CREDENTIALS_HINT,
    404: "check {settings}.base_url and model",
    405: "check {settings}.base_url",
    407: "the proxy asks for credentials: check HTTPS_PROXY / HTTP_PROXY",
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a numeric ``Retry-After`` header, capped at 60 s; None if absent or not
    a non-negative number (an HTTP-date is not honoured: the exponential backoff applies)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


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
        # a private opener: proxy settings are read from the environment now, no global
        # opener installed elsewhere is picked up, and no redirect is followed
        self._opener = urllib.request.build_opener(_RefuseRedirects, _HTTPHandler, _HTTPSHandler)

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return (
            f"OpenAICaptioner(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key={key}, max_concurrency={self.max_concurrency})"
        )

    def describe(self) -> dict[str, str]:
        """What produced the captions (for run metadata); never the key."""
        return {
            "captioner": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "prompt": self.prompt,
        }

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
        source = iter(items)
        guard = self.stop_after_first_failures  # 0: off
        held: list[tuple[str, CaptionFailure]] = []  # failures before the first caption
        captioned = False
        window = 2 * self.max_concurrency
        cancel = threading.Event()
        pool = ThreadPoolExecutor(
            max_workers=self.max_concurrency, thread_name_prefix=THREAD_NAME_PREFIX
        )
        pending: dict[Future[str | CaptionFailure], str] = {}
        fatal: BaseException | None = None
        try:
            exhausted = False
            while True:
                # once a worker has failed for good (cancel set), take no more images
                while not exhausted and len(pending) < window and not cancel.is_set():
                    try:
                        image_id, image = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[pool.submit(self._run, image_id, image, cancel)] = image_id
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    image_id = pending.pop(future)
                    if future.cancelled():
                        continue
                    exc = future.exception()
                    if exc is None:
                        result = future.result()
                        if not guard or captioned:
                            yield image_id, result
                        elif not isinstance(result, CaptionFailure):
                            if fatal is None:  # the key works: the failures are the images'
                                captioned = True
                                yield from held
                                held.clear()
                            yield image_id, result
                        elif fatal is None:
                            held.append((image_id, result))
                            if len(held) >= guard:
                                # every answer so far failed: the setting's fault, not the
                                # images'; stop as for a bad key (below), yielding none of them
                                fatal = self._first_failures_error(held)
                                cancel.set()
                                for queued in [f for f in pending if f.cancel()]:
                                    del pending[queued]
                        # else: the stream is stopping; a failure in flight is not yielded
                    elif not isinstance(exc, _Cancelled) and fatal is None:
                        # stop: the queued images are never sent, the requests in flight
                        # are waited for and their answers yielded (they are paid for)
                        fatal = exc
                        for queued in [f for f in pending if f.cancel()]:
                            del pending[queued]
            if fatal is not None:
                raise fatal
            yield from held  # fewer answers than the guard, all failures: the images' own
        finally:
            # done, failed, or the caller stopped early: stop retries now, drop what has not
            # started, and do not wait for requests in flight (at most deadline_s each)
            cancel.set()
            for future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

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
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.prompt},
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

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base = min(self.backoff_s * 2**attempt, MAX_BACKOFF_S)
        return base + random.uniform(0, 0.1 * base)

    def _run(
        self, image_id: str, image: Image.Image, cancel: threading.Event
    ) -> str | CaptionFailure:
        try:
            return self._caption_one(image_id, image, cancel)
        except _Cancelled:
            raise
        except BaseException:
            # stop the other workers before this future completes, so that no worker takes
            # another queued image in the moment before the caller sees this error
            cancel.set()
            raise

    def _caption_one(
        self, image_id: str, image: Image.Image, cancel: threading.Event
    ) -> str | CaptionFailure:
        """The caption, or a ``CaptionFailure`` once this image's tries are spent; raises
        ``CaptionerError`` for a failure that is not the image's (see ``caption_stream``)."""
        if cancel.is_set():
            raise _Cancelled
        body = json.dumps(self._body(image)).encode("utf-8")
        headers = self._headers()
        transient = bad = attempt = 0
        while True:
            if cancel.is_set():
                raise _Cancelled
            attempt += 1
            retry_after: float | None = None
            try:
                return self._exchange(image_id, body, headers)
            except _Rejected as e:
                # a 4xx about this request: asking again would send the same bytes
                return CaptionFailure(f"POST {self.url} -> {e}", attempt)
            except _BadAnswer as e:
                bad += 1
                if bad >= self.bad_answer_attempts:
                    return CaptionFailure(
                        f"POST {self.url}: {e} ({bad} unusable answer(s) in {attempt} "
                        f"attempt(s); bad_answer_attempts = {self.bad_answer_attempts})",
                        attempt,
                    )
                what = str(e)
            except _Transient as e:
                transient += 1
                if transient > self.max_retries:
                    self._give_up(image_id, e, attempt)  # raises when it is not the image's
                    return CaptionFailure(
                        f"POST {self.url} failed after {attempt} attempt(s); {e.last()}", attempt
                    )
                retry_after = e.retry_after
                what = e.short()
            delay = self._backoff(attempt - 1, retry_after)
            log.warning(
                "%s: image %r: %s; retry %d in %.2f s",
                self.label,
                image_id,
                truncate(what, 200),
                attempt,
                delay,
            )
            if cancel.wait(delay):
                raise _Cancelled

    def _give_up(self, image_id: str, e: _Transient, attempts: int) -> None:
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
        """One POST: the caption, or ``_Transient``, ``_BadAnswer``, ``_Rejected``, or
        ``CaptionerError`` for an answer that says the setting is wrong (not the image)."""
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        request.deadline = deadline = _Deadline(self.deadline_s)
        with deadline:
            raw = self._send(image_id, request, min(self.timeout_s, self.deadline_s))
        if deadline.expired:  # a body cut off at the deadline may read as complete
            raise self._late()
        return self._parse_answer(raw)

    def _late(self) -> _Transient:
        return _Transient(
            f"no complete answer within deadline_s = {self.deadline_s:g} s (the server was "
            "still connecting or sending)"
        )

    def _send(self, image_id: str, request: urllib.request.Request, timeout: float) -> bytes:
        deadline: _Deadline = request.deadline
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
                if status in _SETTING_ERRORS:
                    raise CaptionerError(
                        f"{self.label}: image {image_id!r}: POST {self.url} -> HTTP {status} "
                        f"({_SETTING_ERRORS[status].format(settings=self.settings)}): {message}"
                    ) from None
                if status in (408, 429) or status >= 500:
                    retry_after = parse_retry_after(e.headers.get("Retry-After"))
                    raise _Transient(message, status=status, retry_after=retry_after) from None
                raise _Rejected(f"HTTP {status}: {message}") from None
        except (OSError, http.client.HTTPException) as e:
            # connection refused/reset, DNS, timeouts (socket.timeout is an OSError), or the
            # connection cut at the deadline
            if deadline.expired:
                raise self._late() from None
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise _Transient(
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
            raise _BadAnswer(f"answered with malformed JSON: {snippet!r}") from None
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _BadAnswer(f"the answer has no choices[0].message.content: {snippet!r}") from None
        if isinstance(content, list):  # content given as parts: join the text parts
            content = "".join(
                part.get("text", "")
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        if not isinstance(content, str):
            raise _BadAnswer(f"choices[0].message.content is not text: {snippet!r}")
        caption = content.strip()
        if not caption:
            finish = choice.get("finish_reason") if isinstance(choice, dict) else None
            raise _BadAnswer(
                f"empty caption (finish_reason={finish!r}; max_tokens={self.max_tokens})"
            )
        return caption
