"""Captioning screens with ingest's safety limits but not its training-data curation."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlv_pipeline.imaging.folder_source import FolderSource
from vlv_pipeline.imaging.screen_table import NoImagesKeptError
from vlv_pipeline.params.evaluate import CaptionParams
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.pipelines.caption.nodes import screen_user_images


def _photo(path, size):
    rng = np.random.default_rng(sum(size))
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    _photo(tmp_path / "small_photo.png", (400, 300))  # under conf/paper's 512 px
    _photo(tmp_path / "panorama.png", (900, 300))  # ratio 3: over conf/paper's 2
    _photo(tmp_path / "tiny.png", (6, 6))  # too small for any captioner
    return tmp_path


def test_a_paper_run_captions_photos_its_training_data_would_leave_out(folder):
    paper_ingest = IngestParams(min_side=512, max_aspect_ratio=2.0, watermark_below=0.5)
    screened = screen_user_images(FolderSource(folder), paper_ingest, CaptionParams())
    verdicts = dict(zip(screened["source"].astype(str), screened["reason"], strict=True))
    assert pd.isna(verdicts["small_photo.png"]) and pd.isna(verdicts["panorama.png"])
    assert verdicts["tiny.png"] == "too_small"


def test_the_caption_block_sets_its_own_limits(folder):
    params = CaptionParams(min_side=250, max_aspect_ratio=2.5)
    screened = screen_user_images(FolderSource(folder), IngestParams(), params)
    verdicts = dict(zip(screened["source"].astype(str), screened["reason"], strict=True))
    assert pd.isna(verdicts.pop("small_photo.png"))
    assert verdicts == {"panorama.png": "bad_aspect_ratio", "tiny.png": "too_small"}


def test_ingests_safety_limits_still_apply(folder):
    strict = IngestParams(max_file_bytes=100)  # every file above: unread
    with pytest.raises(NoImagesKeptError, match=r"too_large=3.*caption.min_side"):
        screen_user_images(FolderSource(folder), strict, CaptionParams())
