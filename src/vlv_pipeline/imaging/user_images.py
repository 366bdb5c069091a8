"""A user's own images, read and screened as the ``caption`` and ``reconstruct`` pipelines read
them: a folder, one image file, a parquet file or webdataset shards (``sources``), every input
given a verdict with ingest's safety limits (``screen_table``) and the pipeline block's own
size and aspect-ratio limits."""

from __future__ import annotations

import pandas as pd

from vlv_pipeline.errors import ParameterError
from vlv_pipeline.imaging.screen_table import screen_images
from vlv_pipeline.imaging.source_kinds import open_user_source
from vlv_pipeline.imaging.sources import ImageSource
from vlv_pipeline.params.evaluate import CaptionParams
from vlv_pipeline.params.ingest import IngestParams


def open_images(source: str | None, kind: str, pipeline: str) -> ImageSource:
    """The user's images for ``pipeline`` (its block's ``source`` and ``kind``): a folder,
    or a path that is not a folder as one image file (``source_kinds.open_user_source``)."""
    if not source:
        raise ParameterError(
            f"{pipeline}.source is not set: run `kedro run --pipeline {pipeline} --params "
            f"{pipeline}.source=PATH` with a folder of images or one image file (or set "
            f"{pipeline}.kind for a parquet file or webdataset shards)"
        )
    return open_user_source(kind, source)


def screen_for(
    images: ImageSource, ingest: IngestParams, params: CaptionParams | None, pipeline: str
) -> pd.DataFrame:
    """Every input's verdict, as ingest screens a source (``params:ingest``: the file,
    pixel, link and path limits), for the pipeline named ``pipeline`` (``caption``,
    ``reconstruct``): its block's ``min_side`` and ``max_aspect_ratio`` replace ingest's
    curation of training data; no watermark filter."""
    if params is not None:
        limits = {"min_side": params.min_side, "max_aspect_ratio": params.max_aspect_ratio}
        ingest = ingest.model_copy(update=limits)
    return screen_images(images, ingest, pipeline=pipeline)
