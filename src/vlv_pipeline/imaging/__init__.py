"""Reading images from folders, single files, parquet files and webdataset shards; verdicts; normalisation.

Downstream stages get pixels back with ``iter_images(source, manifest, resolution)``.
"""

from vlv_pipeline.imaging.checks import (
    ALLOWED_FORMATS,
    IMAGE_EXTENSIONS,
    WHITE,
    ImageInfo,
    ImageRejected,
    Reason,
    Verdict,
    decode_normalised,
    inspect_image,
    normalise,
    resize_and_crop,
    to_rgb,
)
from vlv_pipeline.imaging.file_source import FileSource
from vlv_pipeline.imaging.folder_source import FolderSource
from vlv_pipeline.imaging.parquet_source import ParquetSource
from vlv_pipeline.imaging.reading import DEFAULT_MAX_FILE_BYTES, ReadPolicy
from vlv_pipeline.imaging.screening import Screened, Screener
from vlv_pipeline.imaging.source_kinds import SOURCE_KINDS, open_source, open_user_source
from vlv_pipeline.imaging.sources import ImageSource, Record, iter_images
from vlv_pipeline.imaging.splits import SPLITS, assign_split, canonical_split
from vlv_pipeline.imaging.webdataset_source import WebDatasetSource

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_FILE_BYTES",
    "IMAGE_EXTENSIONS",
    "SOURCE_KINDS",
    "SPLITS",
    "WHITE",
    "FileSource",
    "FolderSource",
    "ImageInfo",
    "ImageRejected",
    "ImageSource",
    "ParquetSource",
    "ReadPolicy",
    "Reason",
    "Record",
    "Screened",
    "Screener",
    "Verdict",
    "WebDatasetSource",
    "assign_split",
    "canonical_split",
    "decode_normalised",
    "inspect_image",
    "iter_images",
    "normalise",
    "open_source",
    "open_user_source",
    "resize_and_crop",
    "to_rgb",
]
