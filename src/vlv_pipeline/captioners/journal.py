"""An append-only journal of captions, persisted line by line as they arrive."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path


class CaptionJournal:
    """``<path>`` is a jsonl file: one ``{"image_id", "caption", "created_at"}`` per line.

    Each line is flushed and fsynced before ``append`` returns, so a killed run keeps every
    caption it reported. A torn last line (a kill mid-write) is ignored on reading.

    ``rank``: one of several writers (the ranks of ``accelerate launch``) appends to its own
    file beside the journal, ``<stem>.rank<r>.jsonl``, so no two processes append to one
    file. ``read`` always reads the journal and every rank's file (in rank order), whoever
    wrote them, so a rerun with any number of processes skips every caption already made.
    """

    def __init__(self, path: str | Path, rank: int | None = None):
        self.path = Path(path)
        self.rank = rank

    @property
    def writes_to(self) -> Path:
        """The file ``append`` writes to."""
        if self.rank is None:
            return self.path
        return self.path.with_name(f"{self.path.stem}.rank{self.rank}{self.path.suffix}")

    def files(self) -> list[Path]:
        """The journal, then every rank's file, in rank order (those that exist)."""
        if not self.path.parent.is_dir():
            return []
        pattern = re.compile(
            re.escape(self.path.stem) + r"\.rank(\d+)" + re.escape(self.path.suffix)
        )
        ranks = [(pattern.fullmatch(p.name), p) for p in self.path.parent.iterdir()]
        parts = [p for _, p in sorted((int(m.group(1)), p) for m, p in ranks if m)]
        return ([self.path] if self.path.is_file() else []) + parts

    # the keys a complete record has, besides image_id
    FIELDS: tuple[str, ...] = ("caption",)

    def read(self) -> dict[str, dict]:
        """image_id -> its record, for every complete line (of the journal and every rank's
        file; a later line wins)."""
        records: dict[str, dict] = {}
        for path in self.files():
            with path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn line from an interrupted write
                    if (
                        isinstance(record, dict)
                        and "image_id" in record
                        and all(key in record for key in self.FIELDS)
                    ):
                        records[str(record["image_id"])] = record
        return records

    def append(self, image_id: str, caption: str) -> None:
        self._append({"image_id": image_id, "caption": caption})

    def _append(self, record: dict) -> None:
        path = self.writes_to
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {**record, "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        # a previous torn line has no newline: start on a fresh line so both stay parseable
        needs_newline = False
        if path.exists() and path.stat().st_size > 0:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        with path.open("a", encoding="utf-8") as f:
            f.write(("\n" if needs_newline else "") + line)
            f.flush()
            os.fsync(f.fileno())


class FailureJournal(CaptionJournal):
    """The images a captioner gave up on, beside a caption journal: ``<stem>.failed.jsonl``
    (and ``<stem>.failed.rank<r>.jsonl``), one ``{"image_id", "reason", "attempts",
    "created_at"}`` per line, written like the caption journal. An image in both has its
    caption (a later retry worked): callers take the caption journal first."""

    FIELDS = ("reason",)

    @classmethod
    def beside(cls, journal: CaptionJournal) -> FailureJournal:
        path = journal.path.with_name(f"{journal.path.stem}.failed{journal.path.suffix}")
        return cls(path, rank=journal.rank)

    def append(self, image_id: str, reason: str, attempts: int = 1) -> None:  # type: ignore[override]
        self._append({"image_id": image_id, "reason": reason, "attempts": attempts})


def take_over(journal: CaptionJournal, earlier: str | Path) -> list[Path]:
    """Moves the journal at ``earlier`` (the same captions under another name: its rank files
    and the failures beside them too) under ``journal``'s name: a file is renamed where
    ``journal`` has none of its kind, else its lines are appended to that one (a record is
    keyed by its image, so a line read twice does no harm). Returns the files taken over.
    One process only (rank 0 under ``accelerate launch``, before any rank reads)."""
    old, new = CaptionJournal(earlier), CaptionJournal(journal.path)
    moved = []
    for source_of, target_of in (
        (old, new),
        (FailureJournal.beside(old), FailureJournal.beside(new)),
    ):
        for path in source_of.files():
            target = target_of.path.with_name(
                path.name.replace(source_of.path.stem, target_of.path.stem, 1)
            )
            if not target.exists():
                os.replace(path, target)
            else:
                _append_file(path, target)
                path.unlink()
            moved.append(path)
    return moved


def _append_file(source: Path, target: Path) -> None:
    """``source``'s lines at the end of ``target`` (on a line of their own), fsynced."""
    text = source.read_bytes()
    with target.open("rb") as f:
        f.seek(0, os.SEEK_END)
        ends_torn = f.tell() > 0 and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n"
    with target.open("ab") as f:
        f.write((b"\n" if ends_torn else b"") + text)
        f.flush()
        os.fsync(f.fileno())
