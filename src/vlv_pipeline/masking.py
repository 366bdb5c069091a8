"""Secrets kept out of every message and log.

A secret-looking parameter key (``api_key``, ``token``, ``password``, ``secret``...) is
refused on the command line (``config.py``: it belongs in ``conf/local/credentials.yml``),
and ``mask_secrets`` hides, in any text:

- the values of secret-looking keys (``api_key=...``, ``"token": "..."``, ``Bearer ...``);
- values shaped like provider keys (``sk-...``, ``AIza...``, ``hf_...``, ``ghp_...``,
  ``xox?-...``, ``AKIA...``);
- every value ``remember_secret`` was given (the credentials' values and any secret-keyed
  ``--params`` value, whatever its shape).

``SecretsFilter`` applies it to every log record on the root logger's handlers (console and
``info.log``), the exception text of a logged traceback included; ``install_log_masking``
puts it there (settings.py, the preflight hook and the command line all call it).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "MASK",
    "ConsoleQuietFilter",
    "SecretsFilter",
    "install_log_masking",
    "is_secret_key",
    "mask_secrets",
    "remember_secret",
    "remember_secrets_in",
    "secret_keys",
]

MASK = "***"

# a parameter key that holds a secret (strict: refusing one must never hit a real parameter;
# `max_new_tokens`, `tokenizer`, `pad_token`, `num_key_value_heads` are not secrets)
_SECRET_KEY = re.compile(
    r"(?i)^(?:[\w-]*[_-])?(?:api[_-]?key|apikey|secret(?:[_-]?key)?|password|passwd|passphrase"
    r"|private[_-]?key|access[_-]?key)$"
    r"|^(?:(?:access|auth|api|bearer|refresh|session|id|hf|github|gh|openai)[_-]?)?token$"
)
# values shaped like providers' keys, wherever they appear
_KEY_SHAPED = re.compile(
    r"(?<![\w-])(?:sk-[\w-]{16,}|AIza[\w-]{30,}|hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[abposr]-[\w-]{10,}|AKIA[0-9A-Z]{16}(?![0-9A-Z]))"
)
# `api_key=v`, `api_key: v`, `'api_key': 'v'`, `--params x.token=v`: the value (not a
# placeholder such as <your key>, ${oc.env:...}, null, ... or an already masked one)
_KEYED_VALUE = re.compile(
    r"(?i)(\b[\w.-]*(?:api[_-]?key|apikey|passw(?:or)?d|passphrase|secret|token"
    r"|private[_-]?key|access[_-]?key)[\"']?\s*[:=]\s*[\"']?)"
    r"(?!<|\$\{|\.\.\.|\*\*\*|null\b|none\b)([^\s\"',;}\])]+)"
)
_BEARER = re.compile(r"(?i)(\bbearer\s+)(?!\*\*\*)[\w.~+/=-]+")
# pydantic shortens long values in its errors: 'sk-proj-abcdef...vwxyz' (head...tail)
_SHORTENED = re.compile(r"([^\s'\"{}\[\](),:=*]{3,})\.\.\.([^\s'\"{}\[\](),:=]*)")
_KEY_START = re.compile(r"^(?:sk-|AIza|hf_|gh[pousr]_|xox[abposr]-|AKIA)")
_remembered: set[str] = set()
_MIN_REMEMBERED = 5  # shorter values would mask ordinary words


def is_secret_key(name: str) -> bool:
    """``name`` (one key, not a dotted path) names a secret: ``api_key``, ``hf_token``..."""
    return bool(_SECRET_KEY.match(str(name)))


def _flat(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _flat(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), tree


def secret_keys(tree: Any) -> list[str]:
    """The dotted keys of ``tree`` whose last part names a secret."""
    return [key for key, _ in _flat(tree) if is_secret_key(key.rsplit(".", 1)[-1])]


def remember_secret(value: Any) -> None:
    """Mask ``value`` (its text) in every later message and log record."""
    text = "" if value is None else str(value)
    if len(text) >= _MIN_REMEMBERED:
        _remembered.add(text)


def remember_secrets_in(tree: Any, everything: bool = False) -> None:
    """Remember the values of ``tree`` under secret-looking keys (all of them with
    ``everything``: credentials) and every key-shaped value."""
    for key, value in _flat(tree):
        if everything or is_secret_key(key.rsplit(".", 1)[-1]):
            remember_secret(value)
        elif isinstance(value, str) and _KEY_SHAPED.search(value):
            remember_secret(value)


def mask_secrets(text: str) -> str:
    """``text`` with every secret it shows replaced by ``***`` (module docstring)."""
    if not text:
        return text
    for value in sorted(_remembered, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    text = _KEY_SHAPED.sub(MASK, text)
    text = _SHORTENED.sub(_shortened, text)
    text = _KEYED_VALUE.sub(lambda m: m.group(1) + MASK, text)
    return _BEARER.sub(lambda m: m.group(1) + MASK, text)


def _shortened(match: re.Match) -> str:
    """A shortened value (``head...tail``) that starts like a key or a remembered secret."""
    head = match.group(1)
    if _KEY_START.match(head) or (
        len(head) >= 4 and any(secret.startswith(head) for secret in _remembered)
    ):
        return MASK
    return match.group(0)


class SecretsFilter(logging.Filter):
    """Masks secrets in a record's message (and its traceback text) before any handler
    writes it. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: the handler reports it
            return True
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info))
            if mask_secrets(text) != text:
                record.msg, record.args = f"{record.msg}\n{mask_secrets(text)}", ()
                record.exc_info, record.exc_text = None, None
        return True


class ConsoleQuietFilter(logging.Filter):
    """On the console of ``kedro run``: drops the records that only repeat the error the
    command line prints itself (Kedro's parameter validator logs each bad block before
    raising). ``info.log`` keeps them."""

    REPEATED = ("kedro.validation.parameter_validator",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name in self.REPEATED)


def _handlers() -> Iterator[logging.Handler]:
    seen: set[int] = set()
    loggers = [logging.getLogger()]
    loggers += [
        x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if id(handler) not in seen:
                seen.add(id(handler))
                yield handler


def install_log_masking(console_quiet: bool = False) -> None:
    """``SecretsFilter`` on every handler of every logger (idempotent); with
    ``console_quiet``, ``ConsoleQuietFilter`` on the handlers that are not files."""
    for handler in _handlers():
        if not any(isinstance(f, SecretsFilter) for f in handler.filters):
            handler.addFilter(SecretsFilter())
        if (
            console_quiet
            and not isinstance(handler, logging.FileHandler)
            and not any(isinstance(f, ConsoleQuietFilter) for f in handler.filters)
        ):
            handler.addFilter(ConsoleQuietFilter())
