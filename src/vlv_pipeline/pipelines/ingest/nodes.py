"""Nodes of ``ingest``: screen every input of a source, then split kept and rejected.

Only metadata travels between nodes (one small row per input); pixels never do.
"""

from __future__ import annotations

import logging

import pandas as pd
from tqdm.auto import tqdm

from vlv_pipeline.imaging.screening import KEPT, Screened, Screener
from vlv_pipeline.imaging.sources import ImageSource
from vlv_pipeline.imaging.splits import assign_split
from vlv_pipeline.params.ingest import IngestParams

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "image_id",
    "source",
    "width",
    "height",
    "mode",
    "format",
    "caption",
    "split",
    "offset",  # where the image's bytes lie in a plain tar shard (null elsewhere), so
    "length",  # training reads it with one seek instead of scanning the shard
)
REJECT_COLUMNS = ("source", "reason", "detail")
SCREENED_DTYPES = {
    "source": "string",
    "reason": "string",
    "detail": "string",
    "image_id": "string",
    "width": "Int64",
    "height": "Int64",
    "mode": "string",
    "format": "string",
    "caption": "string",
    "split": "string",
    "offset": "Int64",
    "length": "Int64",
}


class NoImagesKeptError(ValueError):
    """Ingest found no usable image in its source."""


def _as_params(params: IngestParams | dict) -> IngestParams:
    # Kedro validates `params:ingest` in a session; a bare runner passes the raw dict.
    return params if isinstance(params, IngestParams) else IngestParams.model_validate(params)


def _row(s: Screened) -> tuple:
    info = s.info
    return (
        s.source,
        None if s.reason is None else str(s.reason),
        s.detail,
        s.image_id,
        info.width if info else None,
        info.height if info else None,
        info.mode if info else None,
        info.format if info else None,
        s.caption,
        s.split,
        s.location[0] if s.location else None,
        s.location[1] if s.location else None,
    )


def screen_images(source: ImageSource, params: IngestParams) -> pd.DataFrame:
    """Give every input of ``source`` a verdict (one row each, ``reason`` null when kept).

    Streams the source once; holds one file's bytes at a time plus one small row per
    input and the hashes of kept images. Logs one summary line. Raises
    ``NoImagesKeptError`` (naming the source) if nothing is kept.
    """
    params = _as_params(params)
    screener = Screener(
        min_side=params.min_side,
        max_pixels=params.max_pixels,
        max_aspect_ratio=params.max_aspect_ratio,
    )
    records = tqdm(
        source.iter_records(), desc=f"ingest {source.kind}", unit="file", mininterval=1.0
    )
    rows = [_row(screener.screen(record)) for record in records]
    if not screener.counts.get(KEPT):
        raise NoImagesKeptError(
            f"ingest kept no images from {source.kind} source {source.path!r}: "
            f"{len(rows)} input(s), {screener.summary()}"
        )
    logger.info("ingest %s %s: %s", source.kind, source.path, screener.summary())
    return pd.DataFrame(rows, columns=list(SCREENED_DTYPES)).astype(SCREENED_DTYPES)


def build_manifest(screened: pd.DataFrame, params: IngestParams) -> pd.DataFrame:
    """The kept images, with a split: the source's, else drawn from the image id."""
    params = _as_params(params)
    kept = screened.loc[screened["reason"].isna(), list(MANIFEST_COLUMNS)].reset_index(drop=True)
    fractions = params.splits.model_dump()
    missing = kept["split"].isna()
    kept.loc[missing, "split"] = [
        assign_split(image_id, fractions, params.seed) for image_id in kept.loc[missing, "image_id"]
    ]
    return kept.astype({"width": "int64", "height": "int64"})


def build_rejects(screened: pd.DataFrame) -> pd.DataFrame:
    """The rejected inputs: ``source``, ``reason``, ``detail``."""
    rejected = screened.loc[screened["reason"].notna(), list(REJECT_COLUMNS)]
    return rejected.reset_index(drop=True)


def ingest(source: ImageSource, params: IngestParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole pipeline as one call: ``(manifest, rejects)``."""
    screened = screen_images(source, params)
    return build_manifest(screened, params), build_rejects(screened)
