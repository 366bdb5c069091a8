"""Kedro's parameter-validation errors, made short: one line per bad key.

``kedro run`` (``cli.py``) shows Kedro 1.7's ``ParameterValidationError`` through
``parameter_message``: each bad key as ``<block>.<key> = <value>: <what is wrong>`` (a
secret-keyed value masked), an unknown key with the closest known one (``suggestion``), and
no pydantic links. ``validation_error_lines`` words a pydantic ``ValidationError`` the same
way (``config.py``'s study points), and ``format_parameter_errors`` makes the message.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from vlv_pipeline.masking import MASK, is_secret_key

__all__ = [
    "format_parameter_errors",
    "parameter_message",
    "suggestion",
    "validation_error_lines",
]

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
        "Each block's keys, types and limits: src/vlv_pipeline/params/ (docs/GUIDE.md, Parameters)."
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
