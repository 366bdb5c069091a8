"""Screening a whole image source into one table of verdicts (one small row per input).

Used by the `ingest` pipeline (which splits the table into manifest and rejects) and by the
`caption` pipeline (which screens a user's images the same way). Under ``accelerate launch``
each rank screens its own block of the source and every rank returns the whole table.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from vlv_pipeline.distributed import barrier, broadcast, rank, together, world_size
from vlv_pipeline.errors import UserError
from vlv_pipeline.imaging.checks import Reason
from vlv_pipeline.imaging.reading import ReadPolicy
from vlv_pipeline.imaging.screening import Screened, Screener
from vlv_pipeline.imaging.sources import ImageSource
from vlv_pipeline.params.ingest import IngestParams

logger = logging.getLogger(__name__)

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


class NoImagesKeptError(UserError, ValueError):
    """Screening (ingest's, or the caption pipeline's) found no usable image in its source."""


# what names the screened source, by the pipeline that screens it (`screen_images(pipeline=)`)
SOURCE_SETTING = {
    "ingest": "the catalog entry `raw_images`",
    "caption": "caption.source",
    "reconstruct": "reconstruct.source",
}


def as_params(params: IngestParams | dict) -> IngestParams:
    # Kedro validates `params:ingest` in a session; a bare runner passes the raw dict.
    return params if isinstance(params, IngestParams) else IngestParams.model_validate(params)


def read_policy(params: IngestParams) -> ReadPolicy:
    """What screening may read: ``ingest.max_file_bytes``, ``follow_links`` and
    ``allow_outside_paths`` (``imaging/reading.py``)."""
    return ReadPolicy(
        max_bytes=params.max_file_bytes,
        follow_links=params.follow_links,
        allow_outside=params.allow_outside_paths,
    )


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
        # where the bytes lie in a plain tar (with offset), and for every kept image the
        # size a read-back may not exceed
        s.size if s.size is not None else (s.location[1] if s.location else None),
    )


def screen_images(
    source: ImageSource, params: IngestParams, *, pipeline: str = "ingest"
) -> pd.DataFrame:
    """Give every input of ``source`` a verdict (one row each, ``reason`` null when kept).

    Streams the source once; holds one file's bytes at a time (at most
    ``ingest.max_file_bytes``) plus one small row per input and the hashes of kept images.
    What ``read_policy(params)`` refuses (links, paths outside the source, larger files,
    FIFOs and other special files) gets its own row and is never read. Logs one summary
    line. Raises ``NoImagesKeptError`` (naming the pipeline, the source and the setting
    that names it, and the parameter that would let a refused file be read) if nothing is
    kept. ``pipeline`` is the one screening (``ingest``, ``caption`` or ``reconstruct``: all
    screen with ``params:ingest``).

    Under ``accelerate launch`` each rank screens its own block of the source's files,
    row groups or shards, and every rank returns the same table as one process would.
    """
    params = as_params(params)
    # the watermark filter chooses training images; captioning keeps every image it is given
    watermark_below = params.watermark_below if pipeline == "ingest" else None
    if world_size() > 1:
        screened = _screen_on_every_rank(source, params, watermark_below)
    else:
        screened = _screen_part(source, params, None, watermark_below)
    summary = summarise(screened)
    if not (screened["reason"].isna()).any():
        found = set(screened["reason"].dropna())
        hints = "".join(f"; {hint}" for reason, hint in _HINTS.items() if reason in found)
        setting = SOURCE_SETTING.get(pipeline)
        named = f" ({setting})" if setting else ""
        screened_by = (
            ""
            if pipeline == "ingest"
            else f"; images are screened with the ingest.* parameters ({pipeline}.min_side and "
            f"{pipeline}.max_aspect_ratio replace ingest's)"
        )
        raise NoImagesKeptError(
            f"{pipeline} kept no images from {source.kind} source {source.path!r}{named}: "
            f"{len(screened)} input(s), {summary}{hints}{screened_by}"
        )
    logger.info("%s %s %s: %s", pipeline, source.kind, source.path, summary)
    return screened


# what lets a refused file be read, named when nothing was kept
_HINTS = {
    str(Reason.SYMLINK): "links are not followed unless ingest.follow_links is true",
    str(Reason.OUTSIDE_SOURCE): "paths outside the parquet file's folder are read only "
    "when ingest.allow_outside_paths is true",
    str(Reason.TOO_LARGE): "files over ingest.max_file_bytes are not read",
}


def _screen_part(
    source: ImageSource, params: IngestParams, part, watermark_below: float | None = None
) -> pd.DataFrame:
    """The verdicts on ``part`` of the source (all of it when None), in stream order."""
    screener = Screener(
        min_side=params.min_side,
        max_pixels=params.max_pixels,
        max_aspect_ratio=params.max_aspect_ratio,
        watermark_below=watermark_below,
    )
    records = tqdm(
        source.iter_records(part=part, policy=read_policy(params)),
        desc=f"ingest {source.kind}",
        unit="file",
        mininterval=1.0,
        disable=rank() != 0,
    )
    rows = [_row(screener.screen(record)) for record in records]
    if screener.unscored:
        logger.warning(
            "ingest.watermark_below is %g, but %d of %d images screened from %s carry no "
            "watermark score (LAION's `pwatermark`: a field of img2dataset's key.json, saved "
            "with --save_additional_columns, or a parquet column): they were kept unfiltered",
            watermark_below,
            screener.unscored,
            screener.scored + screener.unscored,
            source.path,
        )
    return pd.DataFrame(rows, columns=list(SCREENED_DTYPES)).astype(SCREENED_DTYPES)


def summarise(screened: pd.DataFrame) -> str:
    """``kept N, rejected M (reason=n, ...)``."""
    reasons = screened["reason"].dropna().value_counts()
    by_reason = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "none"
    return (
        f"kept {int(screened['reason'].isna().sum())}, rejected {int(reasons.sum())} ({by_reason})"
    )


def _screen_on_every_rank(
    source: ImageSource, params: IngestParams, watermark_below: float | None = None
) -> pd.DataFrame:
    """Each rank screens its block and leaves its rows in ``parts_dir`` (a file per rank,
    written atomically); every rank then reads all of them in rank order, and copies of an
    image kept on an earlier rank become duplicates, as one process would have found."""
    folder = Path(params.parts_dir) / broadcast(uuid.uuid4().hex)

    def screen_mine() -> None:
        part = _screen_part(source, params, (rank(), world_size()), watermark_below)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".rank{rank()}.parquet.tmp"
        part.to_parquet(tmp, index=False)
        os.replace(tmp, folder / f"rank{rank()}.parquet")

    together(screen_mine)
    frames = [pd.read_parquet(folder / f"rank{r}.parquet") for r in range(world_size())]
    barrier()  # every rank has read every part
    if rank() == 0:
        shutil.rmtree(folder, ignore_errors=True)
    screened = pd.concat(frames, ignore_index=True).astype(SCREENED_DTYPES)
    return mark_duplicates_across_parts(screened)


def mark_duplicates_across_parts(screened: pd.DataFrame) -> pd.DataFrame:
    """Parts screened apart each kept their own first copy of an image: keep the first in
    stream order, make the later ones duplicates of it, and point every duplicate at it."""
    kept = screened["reason"].isna()
    firsts = screened[kept].drop_duplicates("image_id")
    first = firsts.set_index("image_id")["source"]
    later = kept & ~screened.index.isin(firsts.index)
    screened.loc[later, "reason"] = str(Reason.DUPLICATE)
    screened.loc[later, ["width", "height", "mode", "format", "offset", "length"]] = pd.NA
    duplicate = screened["reason"] == str(Reason.DUPLICATE)
    screened.loc[duplicate, "detail"] = (
        "same bytes as " + first.loc[screened.loc[duplicate, "image_id"]].to_numpy()
    )
    return screened
