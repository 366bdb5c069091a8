"""Secrets kept out of every message and log.

A secret-looking parameter key (``api_key``, ``token``, ``password``, ``secret``...) is
refused on the command line (``config.py``: it belongs in ``conf/local/credentials.yml``),
and ``mask_secrets`` hides, in any text:

- the values of secret-looking keys (``api_key=...``, ``"token": "..."``, ``Bearer ...``);
- values shaped like provider keys (``sk-...``, ``AIza...``, ``hf_...``, ``ghp_...``,
  ``xox?-...``, ``AKIA...``);
- every value ``remember_secret`` was given (the credentials' and ``--params``' values
  under secret-looking keys, whatever their shape).

One vocabulary (``SECRET_WORDS``, ``TOKEN_KINDS``) says which keys are secret-looking, for
the refusal and for the masking alike; ``pad_token``, ``eos_token``, ``max_new_tokens`` are
not, and their values stay visible. ``KEY_SHAPES`` lists the providers' key shapes once.

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

# The one vocabulary of secrets. A key names a secret when it ends in one of SECRET_WORDS
# (`api_key`, `OPENAI_API_KEY`, `db_password`, `client_secret`), or is `token` alone or a
# TOKEN_KINDS token (`hf_token`, `GITHUB_TOKEN`, `access_token`). Strict, because a
# `--params` key that names a secret is refused: `pad_token`, `eos_token`, `max_new_tokens`,
# `tokenizer`, `num_key_value_heads` are parameters, not secrets. The same names decide which
# values `mask_secrets` hides after `key=` or `key:` in a text.
SECRET_WORDS = (
    r"api[_-]?key",
    r"secret(?:[_-]?(?:access[_-]?)?key)?",
    r"passw(?:or)?d",
    r"passphrase",
    r"private[_-]?key",
    r"access[_-]?key",
    r"account[_-]?key",
)
TOKEN_KINDS = (
    "access",
    "auth",
    "api",
    "bearer",
    "bot",
    "refresh",
    "session",
    "id",
    "hf",
    "github",
    "gh",
    "openai",
    "sas",
)
_SECRET_NAME = (
    rf"[\w-]*(?:{'|'.join(SECRET_WORDS)})"
    rf"|(?:[\w-]*[_-])?(?:{'|'.join(TOKEN_KINDS)})[_-]?token|token"
)
_SECRET_KEY = re.compile(rf"(?i)(?:{_SECRET_NAME})")
# in credentials, a `key` or a `token` of any kind is a secret too (`key`, `sas_token`)
_CREDENTIAL_KEY = re.compile(rf"(?i)(?:{_SECRET_NAME}|(?:[\w-]*[_-])?(?:key|token))")
# `api_key=v`, `api_key: v`, `'api_key': 'v'`, `--params x.token=v`: the value (not a
# placeholder such as <your key>, ${oc.env:...}, null, ... or an already masked one); the
# key's last part is a whole secret name (`pad_token=...` is not masked)
_KEYED_VALUE = re.compile(
    rf"(?i)((?<![\w.-])(?:[\w-]+\.)*(?:{_SECRET_NAME})[\"']?\s*[:=]\s*[\"']?)"
    r"(?!<|\$\{|\.\.\.|\*\*\*|null\b|none\b)([^\s\"',;}\])]+)"
)
# Providers' keys: how each starts, and what follows. A value of this shape is masked
# wherever it appears, and so is a shortened value (`sk-proj-abc...xyz`) that starts like one.
KEY_SHAPES = (
    (r"sk-", r"[\w-]{16,}"),
    (r"AIza", r"[\w-]{30,}"),
    (r"hf_", r"[A-Za-z0-9]{30,}"),
    (r"gh[pousr]_", r"[A-Za-z0-9]{30,}"),
    (r"xox[abposr]-", r"[\w-]{10,}"),
    (r"AKIA", r"[0-9A-Z]{16}(?![0-9A-Z])"),
)
_KEY_SHAPED = re.compile(
    r"(?<![\w-])(?:" + "|".join(start + rest for start, rest in KEY_SHAPES) + ")"
)
_KEY_START = re.compile("^(?:" + "|".join(start for start, _ in KEY_SHAPES) + ")")
_BEARER = re.compile(r"(?i)(\bbearer\s+)(?!\*\*\*)[\w.~+/=-]+")
# pydantic shortens long values in its errors: 'sk-proj-abcdef...vwxyz' (head...tail); the
# head starts where a value starts (tried once per value: linear in a long one)
_SHORTENED = re.compile(
    r"(?<![^\s'\"{}\[\](),:=*])([^\s'\"{}\[\](),:=*]{3,})\.\.\.([^\s'\"{}\[\](),:=]*)"
)
_remembered: set[str] = set()
_MIN_REMEMBERED = 5  # shorter values would mask ordinary words


def is_secret_key(name: str) -> bool:
    """``name`` (one key, not a dotted path) names a secret: ``api_key``, ``hf_token``..."""
    return bool(_SECRET_KEY.fullmatch(str(name)))


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


def remember_secrets_in(tree: Any, credentials: bool = False) -> None:
    """Remember the values of ``tree`` under secret-looking keys, and every key-shaped value.
    ``credentials``: ``tree`` is Kedro's credentials, where a ``key`` or a ``token`` of any
    kind (``sas_token``) is a secret too; a ``base_url`` or an account name is not."""
    secret = _CREDENTIAL_KEY if credentials else _SECRET_KEY
    for key, value in _flat(tree):
        if secret.fullmatch(key.rsplit(".", 1)[-1]):
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
