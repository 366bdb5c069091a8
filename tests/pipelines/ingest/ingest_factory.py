"""Tiny image bytes for the ingest tests."""

from __future__ import annotations

import io

from PIL import Image


def png(colour, size=(24, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()
