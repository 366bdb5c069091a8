"""An append-only journal of captions, persisted line by line as they arrive."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path


class CaptionJournal:
    """``<path>`` is a jsonl file: one ``{"image_id", "caption", "created_at"}`` per line.

    Each line is flushed and fsynced before ``append`` returns, so a killed run keeps every
    caption it reported. A torn last line (a kill mid-write) is ignored on reading.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict[str, dict]:
        """image_id -> its record, for every complete line."""
        records: dict[str, dict] = {}
        if not self.path.exists():
            return records
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn line from an interrupted write
                if isinstance(record, dict) and "image_id" in record and "caption" in record:
                    records[str(record["image_id"])] = record
        return records

    def append(self, image_id: str, caption: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "image_id": image_id,
            "caption": caption,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        # a previous torn line has no newline: start on a fresh line so both stay parseable
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(("\n" if needs_newline else "") + line)
            f.flush()
            os.fsync(f.fileno())
