"""A verdict for every record of a source: the per-file checks plus de-duplication."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from vlv_pipeline.imaging.checks import ImageInfo, Reason, inspect_image
from vlv_pipeline.imaging.sources import Record

KEPT = "kept"


@dataclass(frozen=True, slots=True)
class Screened:
    """The verdict on one record. ``reason is None`` means kept (then ``info`` is set)."""

    source: str
    reason: Reason | None
    detail: str = ""
    image_id: str | None = None
    info: ImageInfo | None = None
    caption: str | None = None
    split: str | None = None
    location: tuple[int, int] | None = None  # see Record.location
    # the bytes read, of a kept image: later stages read it back no further (issue 26)
    size: int | None = None

    @property
    def kept(self) -> bool:
        return self.reason is None


class Screener:
    """Screens records one at a time; remembers only the sha256 -> first ref of kept images.

    A byte-identical copy of an image kept earlier is a ``duplicate`` (detail names the
    first) and is not decoded again. With ``watermark_below`` set, an image whose record
    carries a ``watermark`` at or above it is ``watermarked``, undecoded; ``scored`` and
    ``unscored`` count the images that carried one and that carried none (not filtered). ``counts`` tallies ``kept`` and each reason.
    """

    def __init__(
        self,
        *,
        min_side: int,
        max_pixels: int,
        max_aspect_ratio: float,
        watermark_below: float | None = None,
    ) -> None:
        self.min_side = min_side
        self.max_pixels = max_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.watermark_below = watermark_below
        self.scored = self.unscored = 0
        self.counts: Counter[str] = Counter()
        self._first_ref: dict[str, str] = {}

    def screen(self, record: Record) -> Screened:
        result = self._screen(record)
        self.counts[KEPT if result.reason is None else str(result.reason)] += 1
        return result

    def _screen(self, record: Record) -> Screened:
        ref, caption, split = record.ref, record.caption, record.split
        if record.data is None:
            reason, detail = record.rejected or (Reason.UNREADABLE, "no data")
            return Screened(ref, reason, detail, caption=caption, split=split)
        if not record.data:
            return Screened(ref, Reason.EMPTY_FILE, "zero bytes", caption=caption, split=split)
        image_id = hashlib.sha256(record.data).hexdigest()
        first = self._first_ref.get(image_id)
        if first is not None:
            return Screened(
                ref, Reason.DUPLICATE, f"same bytes as {first}", image_id, None, caption, split
            )
        if self.watermark_below is not None:
            self.scored += record.watermark is not None
            self.unscored += record.watermark is None
            if record.watermark is not None and record.watermark >= self.watermark_below:
                detail = (
                    f"pwatermark {record.watermark:g} >= ingest.watermark_below "
                    f"{self.watermark_below:g}"
                )
                return Screened(ref, Reason.WATERMARKED, detail, image_id, None, caption, split)
        verdict = inspect_image(
            record.data,
            min_side=self.min_side,
            max_pixels=self.max_pixels,
            max_aspect_ratio=self.max_aspect_ratio,
        )
        if verdict.reason is not None:
            return Screened(ref, verdict.reason, verdict.detail, image_id, None, caption, split)
        self._first_ref[image_id] = ref
        return Screened(
            ref, None, "", image_id, verdict.info, caption, split, record.location, len(record.data)
        )

    def summary(self) -> str:
        """``kept N, rejected M (reason=n, ...)``."""
        kept = self.counts.get(KEPT, 0)
        rejected = {k: v for k, v in sorted(self.counts.items()) if k != KEPT}
        by_reason = ", ".join(f"{k}={v}" for k, v in rejected.items()) or "none"
        return f"kept {kept}, rejected {sum(rejected.values())} ({by_reason})"
