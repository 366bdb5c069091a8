"""The API key an OpenAI-compatible client gets from a run's credentials entry."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)


def api_key(
    credentials: Mapping[str, Any] | None, who: str, entry: str, base_url: str
) -> str | None:
    """``credentials["api_key"]``, or None with a warning naming the entry of
    conf/local/credentials.yml that lacks it (``who``: the stage that calls ``base_url``;
    a local server needs no key, so the call goes on)."""
    key = (credentials or {}).get("api_key")
    if not key:
        logger.warning(
            "%s: no api_key under `%s` in conf/local/credentials.yml; calling %s without one",
            who,
            entry,
            base_url,
        )
    return key or None
