"""Split names: canonical spelling and deterministic assignment from the image id."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

from vlv_pipeline.errors import InputError

SPLITS = ("train", "val", "test")

_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def split_from_dirname(name: str) -> str | None:
    """The split a top-level folder name stands for (``valid`` -> ``val``), else ``None``."""
    return _ALIASES.get(name.strip().lower())


def canonical_split(value: object) -> str | None:
    """Canonical split of a value read from a table; ``None``/NaN/empty mean "not given".

    Raises ``ValueError`` for a value that is not a known split name.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if not text:
        return None
    split = _ALIASES.get(text.lower())
    if split is None:
        raise InputError(f"unknown split {value!r}; expected one of {sorted(_ALIASES)}")
    return split


def assign_split(image_id: str, fractions: Mapping[str, float], seed: int = 0) -> str:
    """Deterministic split for an image: a uniform draw from ``sha256(seed:image_id)``.

    ``fractions`` maps train/val/test to fractions summing to 1. The same image id and seed
    always land in the same split, whatever the order or number of images.
    """
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    last = SPLITS[0]
    for name in SPLITS:
        fraction = fractions.get(name, 0.0)
        if fraction <= 0:
            continue
        cumulative += fraction
        last = name
        if u < cumulative:
            return name
    return last  # rounding: u just below 1 with fractions summing to 1 - eps
