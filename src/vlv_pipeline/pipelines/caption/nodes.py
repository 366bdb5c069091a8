"""Nodes of the `caption` pipeline: screen a user's images as ingest does, then caption them.

kedro run --pipeline caption --params caption.source=PATH

The reading, screening and captioning live in the library (``imaging/user_images.py``,
``models/captioning.py``): the `reconstruct` pipeline uses them too.
"""

from __future__ import annotations

import logging

import pandas as pd

from vlv_pipeline.imaging.sources import ImageSource
from vlv_pipeline.imaging.user_images import open_images, screen_for
from vlv_pipeline.models.captioning import caption_kept_images
from vlv_pipeline.params.evaluate import CaptionParams
from vlv_pipeline.params.ingest import IngestParams

logger = logging.getLogger(__name__)

REJECTED_KEY = "rejected"  # in the JSON: {file: "reason: detail"} of files not captioned


def screen_user_images(
    images: ImageSource, ingest: IngestParams, params: CaptionParams | None = None
) -> pd.DataFrame:
    """Every user image's verdict, as ingest screens a source (``params:ingest``: the file,
    pixel, link and path limits), with the caption block's own size and aspect-ratio limits
    instead of the training data's (``caption.min_side``, ``caption.max_aspect_ratio``); no
    watermark filter."""
    return screen_for(images, ingest, params, pipeline="caption")


def captions_json(user_captions: pd.DataFrame) -> dict:
    """``{relative/path: caption}``, the official inference's output, plus ``rejected``:
    ``{relative/path: "reason: detail"}`` for the files that got no caption."""
    out: dict = {}
    rejected: dict[str, str] = {}
    for row in user_captions.itertuples(index=False):
        if isinstance(row.caption, str):
            out[row.file] = row.caption
        else:
            detail = f": {row.detail}" if isinstance(row.detail, str) and row.detail else ""
            rejected[row.file] = f"{row.rejected}{detail}"
    out[REJECTED_KEY] = rejected
    return out


def open_user_images(params: CaptionParams) -> ImageSource:
    """The images ``caption.source`` names: a folder, one image file, or (``caption.kind``)
    a parquet file or webdataset shards."""
    return open_images(params.source, params.kind, pipeline="caption")


def caption_user_images(
    vlv_captioner, source: ImageSource, screened: pd.DataFrame, params: CaptionParams
) -> pd.DataFrame:
    """One row per input file: its caption, or ingest's verdict when it was rejected
    (``models.captioning.caption_kept_images``; under ``accelerate launch`` each rank
    captions its own block of the kept images, every rank returns the whole table)."""
    table = caption_kept_images(vlv_captioner, source, screened, params)
    logger.info(  # counted from the table the outputs are written from
        "caption: %d images captioned, %d rejected (see the `rejected` column)",
        int(table["caption"].notna().sum()),
        int(table["rejected"].notna().sum()),
    )
    return table
