"""Nodes of ``ingest``: screen every input of a source, then split kept and rejected.

Only metadata travels between nodes (one small row per input); pixels never do.
"""

from __future__ import annotations

import pandas as pd

from vlv_pipeline.imaging.screen_table import as_params
from vlv_pipeline.imaging.splits import assign_split
from vlv_pipeline.params.ingest import IngestParams

MANIFEST_COLUMNS = (
    "image_id",
    "source",
    "width",
    "height",
    "mode",
    "format",
    "caption",
    "split",
    "offset",  # where the image's bytes lie in a plain tar shard (null elsewhere): one seek
    "length",  # bytes of every kept image; caps its read-back
)
REJECT_COLUMNS = ("source", "reason", "detail")


def build_manifest(screened: pd.DataFrame, params: IngestParams) -> pd.DataFrame:
    """The kept images, with a split: the source's, else drawn from the image id."""
    params = as_params(params)
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
