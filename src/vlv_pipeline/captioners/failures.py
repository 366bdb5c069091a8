"""How one exchange of the chat client can fail, and how long it waits before asking again.

The kinds of failure ``openai_chat.OpenAICaptioner`` tells apart (its module docstring says
what each leads to): ``Transient`` (HTTP 408, 429, 5xx, a timeout, a dropped connection: a
retry may fix it), ``BadAnswer`` (HTTP 200 without a usable caption), ``Rejected`` (another
4xx, about this request), the statuses in ``SETTING_ERRORS`` (the setting's fault, not the
image's), and ``Cancelled`` (the stream stopped). ``backoff`` is the wait before a retry:
the server's ``Retry-After`` (``parse_retry_after``), else exponential with jitter.
"""

from __future__ import annotations

import random

MAX_RETRY_AFTER_S = 60.0
MAX_BACKOFF_S = 60.0
CREDENTIALS_HINT = "check the api key in conf/local/credentials.yml"

# statuses that say the setting is wrong, not the image: every image would get them
SETTING_ERRORS = {
    401: CREDENTIALS_HINT,
    403: CREDENTIALS_HINT,
    404: "check {settings}.base_url and model",
    405: "check {settings}.base_url",
    407: "the proxy asks for credentials: check HTTPS_PROXY / HTTP_PROXY",
}


class Cancelled(Exception):
    """A worker saw the stream stop (another image failed, or the caller went away)."""


class Transient(Exception):
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


class BadAnswer(Exception):
    """An answer (HTTP 200) without a usable caption: malformed JSON, no text, empty text."""


class Rejected(Exception):
    """A 4xx about this request (e.g. 400 for an image the model refuses)."""


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


def backoff(backoff_s: float, attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry ``attempt + 1``: ``retry_after`` when the server gave
    one, else ``backoff_s * 2**attempt`` (capped at 60 s) plus up to 10 % jitter."""
    if retry_after is not None:
        return retry_after
    base = min(backoff_s * 2**attempt, MAX_BACKOFF_S)
    return base + random.uniform(0, 0.1 * base)
