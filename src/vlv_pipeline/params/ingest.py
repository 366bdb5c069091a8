"""Parameters of the ``ingest`` pipeline (``params:ingest``)."""

from __future__ import annotations

from typing import Annotated

from PIL import Image
from pydantic import Field, field_validator, model_validator

from vlv_pipeline.params import StrictModel

PositiveInt = Annotated[int, Field(strict=True, gt=0)]
Channel = Annotated[int, Field(strict=True, ge=0, le=255)]


class SplitFractions(StrictModel):
    """Fractions of images per split when the source gives none; they must sum to 1."""

    train: float = Field(0.9, ge=0, le=1)
    val: float = Field(0.05, ge=0, le=1)
    test: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions must sum to 1, got {total:g} "
                f"(train={self.train}, val={self.val}, test={self.test})"
            )
        return self


class IngestParams(StrictModel):
    """Validation, de-duplication and split policy of ``ingest``; normalisation downstream."""

    resolution: PositiveInt | None = Field(
        None,
        description="square side images are normalised to downstream; null keeps native size",
    )
    min_side: PositiveInt = Field(8, description="reject images whose shorter side is smaller")
    max_pixels: PositiveInt = Field(
        64_000_000,
        description="reject images with more pixels (header size), without decoding them",
    )
    max_aspect_ratio: float = Field(
        4.0, ge=1.0, allow_inf_nan=False, description="reject if long side / short side is larger"
    )
    watermark_below: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="keep only images whose watermark probability (LAION's `pwatermark`, in an "
        "img2dataset shard's key.json or a parquet column) is below this; the rest are "
        "rejected as watermarked, and images without a score are kept (the run warns). "
        "Applies to ingest only (captioning keeps every image). null: no filter",
    )
    splits: SplitFractions = Field(default_factory=SplitFractions)
    background: tuple[Channel, Channel, Channel] = Field(
        (255, 255, 255), description="RGB colour transparency is composited on"
    )
    seed: Annotated[int, Field(strict=True)] = Field(
        0, description="salt of the deterministic split draw"
    )
    max_file_bytes: PositiveInt = Field(
        64 * 1024 * 1024,
        description="a file (folder file, tar member, parquet cell) larger than this is "
        "rejected as too_large from its size, before any byte is read (default 64 MiB); a "
        "parquet row group with a page larger than this is not read (its rows too_large); "
        "later stages read each kept image back no further than its recorded size",
    )
    follow_links: Annotated[bool, Field(strict=True)] = Field(
        False,
        description="read symbolic links in a folder source (files and folders, wherever "
        "they lead) and in a shard folder; off: each link is rejected as symlink, unread",
    )
    allow_outside_paths: Annotated[bool, Field(strict=True)] = Field(
        False,
        description="read a parquet source's path cells that lead outside the parquet "
        "file's folder (absolute, ../); off: rejected as outside_source, unread",
    )
    parts_dir: str = Field(
        "data/02_intermediate/ingest_parts",
        description="under accelerate launch, where each rank leaves its screened rows for "
        "the others (a folder every machine sees; emptied after use)",
    )

    @field_validator("max_pixels")
    @classmethod
    def _within_pillow_limit(cls, value: int) -> int:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and value > limit:
            raise ValueError(
                f"{value} exceeds Pillow's Image.MAX_IMAGE_PIXELS ({limit}), above which Pillow "
                "flags a decompression bomb (rejected as too_many_pixels); raise "
                "PIL.Image.MAX_IMAGE_PIXELS first to allow more"
            )
        return value
