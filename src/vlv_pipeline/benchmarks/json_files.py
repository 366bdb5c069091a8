"""Reading the JSON files a user brings to the evaluation (a caption file, COCO's captions,
VQA's questions and annotations) as every input is read (``imaging/reading.py``: a regular
file, a link to one followed, under a byte cap), each error naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlv_pipeline.errors import InputError, MissingInputError
from vlv_pipeline.imaging.reading import ReadPolicy, read_file


def load_json(
    path: Path,
    max_bytes: int,
    *,
    missing: str,
    where: str | None = None,
    invalid: str = "{where}: not valid JSON ({error})",
) -> Any:
    """The JSON document in ``path``, at most ``max_bytes`` long (``read_input``, then
    ``parse_json``)."""
    where = str(path) if where is None else where
    return parse_json(read_input(path, max_bytes, missing=missing, where=where), where, invalid)


def read_input(path: Path, max_bytes: int, *, missing: str, where: str | None = None) -> bytes:
    """The bytes of ``path``, at most ``max_bytes``. Raises ``MissingInputError(missing)``
    when there is no such file, and ``InputError("{where}: not read (...)")``, ``where`` the
    path unless given, when it is not read."""
    if not path.exists():
        raise MissingInputError(missing)
    data, refusal = read_file(path, ReadPolicy(max_bytes=max_bytes, follow_links=True))
    if refusal is not None:
        raise InputError(
            f"{path if where is None else where}: not read ({refusal[0]}: {refusal[1]})"
        )
    return data


def parse_json(data: bytes, where: str, invalid: str = "{where}: not valid JSON ({error})") -> Any:
    """The JSON document in ``data``, or ``InputError(invalid)`` formatted with ``where``
    (the file, for the message) and ``error``."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(invalid.format(where=where, error=error)) from None
