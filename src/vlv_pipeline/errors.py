"""Errors the user fixes, and what keeps secrets out of every message and log.

``UserError`` is the base of the project's errors that a user fixes (a parameter, a missing
or corrupt input, a conf setting, a remote captioner's refusal): ``kedro run`` (the project's
``cli.py``) prints their message alone, without a traceback, and exits 1. Kedro's own
parameter-validation errors are shown the same way, one line per bad key. Anything else is a
bug and keeps its traceback; ``kedro run --verbose`` or ``VLV_TRACEBACK=1`` shows the
traceback of user errors too.

Which type: ``ParameterError`` (a parameter's value, a catalog entry's option),
``InputError`` (an input unusable as it is), ``MissingInputError``,
``InputNotADirectoryError`` and ``MissingEntryError`` (a file, folder or item that is not
there), ``SetupError`` (a package or download missing), ``UnwritableError`` and ``SaveError``
(a full disk, a quota, permissions). Each keeps the builtin it replaced as a second base, so
``except ValueError`` still catches an ``InputError``. Checks of the code's own invariants
stay plain builtins: when one fails, it is a bug.

Secrets: a secret-looking parameter key (``api_key``, ``token``, ``password``, ``secret``...)
is refused on the command line (``config.py``: it belongs in ``conf/local/credentials.yml``),
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

import difflib
import logging
import re
import traceback
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kedro.io import DatasetError

__all__ = [
    "MASK",
    "InputError",
    "InputNotADirectoryError",
    "MissingEntryError",
    "MissingInputError",
    "ParameterError",
    "SaveError",
    "SecretParameterError",
    "SecretsFilter",
    "SetupError",
    "UnknownParameterError",
    "UnwritableError",
    "UserError",
    "format_parameter_errors",
    "install_log_masking",
    "is_secret_key",
    "mask_secrets",
    "remember_secret",
    "remember_secrets_in",
    "secret_keys",
]

MASK = "***"


class UserError(Exception):
    """An error the user fixes: ``kedro run`` prints its message alone (no traceback).

    Subclasses keep their older base too (``class NoImagesKeptError(UserError, ValueError)``)
    so that code catching that base still does."""


class ParameterError(UserError, ValueError):
    """A parameter's value (conf's or ``--params``), or a catalog entry's option, that the
    user fixes: refused before any node runs, or by the node that reads it."""


class UnknownParameterError(ParameterError):
    """A ``--params`` key that no parameter block and no conf resolver reads."""


class SecretParameterError(ParameterError):
    """A secret given as a parameter: it belongs in ``conf/local/credentials.yml``."""


class InputError(UserError, ValueError):
    """An input is unusable as it is: a file the user handed over (a table without its
    columns, a tokenizer without an end token), or what a pipeline made that no longer fits
    (a source changed since ingest, a cache made by another model). The message says what to
    fix, or which pipeline to run again."""


class MissingInputError(UserError, FileNotFoundError):
    """A file, folder or model the run needs is not there: a path the user named, or what a
    pipeline makes (the message names it)."""


class InputNotADirectoryError(UserError, NotADirectoryError):
    """A path that must be a folder (a ``save_pretrained`` directory) is a file."""


class MissingEntryError(UserError, KeyError):
    """An item (an image, a row) is missing from an input that should hold it; the message
    says which pipeline makes it. Shown unquoted (a plain ``KeyError`` quotes its text)."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class SetupError(UserError, RuntimeError):
    """Something the run needs is not installed or not downloaded: the message says what."""


class UnwritableError(UserError, OSError):
    """A write failed for a reason the user fixes: a full disk, a quota, permissions, a
    read-only file system (``files.unwritable`` words the message)."""


class SaveError(UserError, DatasetError):
    """A dataset's save failed for a reason the user fixes (``UnwritableError``'s, raised
    where Kedro expects a ``DatasetError``); nothing was saved there."""


# --------------------------------------------------------------------------- secrets

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


# --------------------------------------------------------------------------- parameters

# Kedro's ParameterValidationError text: "- Parameter 'stage1': Failed to instantiate
# Stage1Params for parameter 'stage1': 2 validation errors for Stage1Params\n<loc>\n  <msg>
# [type=..., input_value=..., input_type=...]\n    For further information visit ..."
_BLOCK = re.compile(r"^- Parameter '(?P<block>[^']*)': (?P<rest>.*)$")
_INSTANTIATE = re.compile(
    r"^Failed to instantiate (?P<model>\w+) for parameter '[^']*': "
    r"\d+ validation errors? for \w+$"
)
_PYDANTIC_MSG = re.compile(
    r"^  (?P<msg>.*?)(?: \[type=(?P<type>\w+)(?:, input_value=(?P<value>.*), "
    r"input_type=\w+)?\])?$"
)


def _model_named(name: str) -> Any:
    """The pydantic model ``name`` among the project's parameter modules (or None)."""
    import importlib
    import pkgutil

    import vlv_pipeline.params as package

    for info in pkgutil.iter_modules(package.__path__):
        try:
            module = importlib.import_module(f"{package.__name__}.{info.name}")
        except Exception:  # noqa: BLE001 - suggestions are optional
            continue
        found = getattr(module, name, None)
        if isinstance(found, type) and hasattr(found, "model_fields"):
            return found
    return None


def _submodel(model: Any, name: str) -> Any:
    """The pydantic model of ``model``'s field ``name`` (through ``X | None``)."""
    import typing

    field = getattr(model, "model_fields", {}).get(name)
    if field is None:
        return None
    candidates = [field.annotation, *typing.get_args(field.annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
            return candidate
    return None


def suggestion(model: Any, loc: list[str]) -> str:
    """`` (did you mean `x`?)`` for an unknown key ``loc[-1]`` of ``model`` at ``loc[:-1]``."""
    for part in loc[:-1]:
        model = _submodel(model, part)
        if model is None:
            return ""
    names = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _error_line(block: str, loc: str, msg: str, kind: str | None, value: str | None, model) -> str:
    key = ".".join(p for p in (block, loc) if p)
    msg = msg.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        where = key.rsplit(".", 1)[0] if "." in key else "the parameters"
        hint = suggestion(model, loc.split(".")) if model is not None and loc else ""
        return f"{key}: no such key in {where}{hint}"
    shown = ""
    if value is not None and kind != "missing" and not value.startswith("{"):
        last = key.rsplit(".", 1)[-1]
        shown = f" = {MASK if is_secret_key(last) else value}"
    if kind == "missing":
        msg = "missing (required)"
    return f"{key}{shown}: {msg}"


def _parse(text: str) -> list[str] | None:
    """Kedro's ParameterValidationError text as one line per bad key (None: not that)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("Parameter validation failed"):
        return None
    out: list[str] = []
    block, model, loc = "", None, None
    for line in lines[1:]:
        head = _BLOCK.match(line)
        if head:
            block, rest = head["block"], head["rest"]
            inst = _INSTANTIATE.match(rest)
            if inst:
                model, loc = _model_named(inst["model"]), None
            else:
                model = None
                out.append(f"{block}: {rest}")
            continue
        if line.startswith("    For further information") or not line.strip():
            continue
        if not line.startswith(" "):
            loc = line.strip()
            continue
        found = _PYDANTIC_MSG.match(line)
        if found is None:
            out.append(f"{block}: {line.strip()}")
            continue
        out.append(
            _error_line(block, loc or "", found["msg"], found["type"], found["value"], model)
        )
        loc = None
    return out or None


def format_parameter_errors(lines: Iterable[str]) -> str:
    """The message for bad parameters: one line per key, nothing run."""
    body = "\n".join(f"  - {line}" for line in lines)
    return (
        f"the parameters are not valid (nothing was run):\n{body}\n"
        "Each block's keys, types and limits: src/vlv_pipeline/params/ (README, Parameters)."
    )


def parameter_message(text: str) -> str:
    """Kedro's ParameterValidationError text, made short (or, unparsed, without pydantic's
    links)."""
    parsed = _parse(text)
    if parsed is not None:
        return format_parameter_errors(parsed)
    kept = [line for line in text.splitlines() if "For further information visit" not in line]
    return "\n".join(kept)


def validation_error_lines(block: str, error: Any, model: Any = None) -> list[str]:
    """A pydantic ``ValidationError`` on ``block`` as lines like ``parameter_message``'s."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item.get("loc", ()))
        value = item.get("input")
        shown = None if value is None or isinstance(value, Mapping) else repr(value)
        lines.append(_error_line(block, loc, item["msg"], item.get("type"), shown, model))
    return lines
