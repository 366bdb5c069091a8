"""The paper's watermark filter (``ingest.watermark_below``): LAION's ``pwatermark`` read from
img2dataset's ``key.json`` or a parquet column, rejected as ``watermarked`` at or above the
threshold; images that carry no score are kept, and said so."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from imaging_factory import encode
from PIL import Image
from pydantic import ValidationError

from vlv_pipeline.imaging import FolderSource, ParquetSource, Reason, WebDatasetSource
from vlv_pipeline.imaging.screen_table import screen_images
from vlv_pipeline.params.ingest import IngestParams


def _png(shade: int) -> bytes:
    return encode(Image.new("RGB", (32, 32), (shade, 10, 200)), "PNG")


# pwatermark per image: the paper keeps < 0.5; None: the metadata carries no score
SCORES = [0.05, 0.7, 0.5, None, 0.49]


def _shard(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, score in enumerate(SCORES):
            meta = {"url": f"http://example.com/{i}.png", "caption": f"image {i}"}
            if score is not None:
                meta["pwatermark"] = score
            for name, data in ((f"{i:09d}.png", _png(i)), (f"{i:09d}.json", json.dumps(meta))):
                data = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _parquet(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "jpg": [_png(i) for i in range(len(SCORES))],
            "caption": [f"image {i}" for i in range(len(SCORES))],
            "pwatermark": [float("nan") if s is None else s for s in SCORES],
        }
    ).to_parquet(path)
    return path


def _verdicts(screened: pd.DataFrame) -> list[str | None]:
    return [None if pd.isna(r) else r for r in screened["reason"]]


@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_images_at_or_above_the_threshold_are_rejected_as_watermarked(tmp_path, kind, caplog):
    source = (
        WebDatasetSource(_shard(tmp_path / "shards" / "00000.tar"))
        if kind == "webdataset"
        else ParquetSource(_parquet(tmp_path / "laion.parquet"), image_column="jpg")
    )
    records = list(source.iter_records())
    assert [r.watermark for r in records] == SCORES
    with caplog.at_level(logging.WARNING):
        screened = screen_images(source, IngestParams(watermark_below=0.5))
    assert _verdicts(screened) == [None, "watermarked", "watermarked", None, None]
    assert Reason.WATERMARKED == "watermarked"
    detail = screened.loc[1, "detail"]
    assert "0.7" in detail and "watermark_below 0.5" in detail
    # watermarked images still get their id (like every other rejection of a read image)
    assert screened["image_id"].notna().all()
    # the one without a score is kept, and the run says so
    assert "1 of 5" in caplog.text and "pwatermark" in caplog.text


def test_the_filter_is_off_by_default_and_the_scores_change_nothing(tmp_path):
    source = WebDatasetSource(_shard(tmp_path / "shards" / "00000.tar"))
    assert IngestParams().watermark_below is None
    screened = screen_images(source, IngestParams())
    assert _verdicts(screened) == [None] * len(SCORES)


def test_captioning_a_users_images_filters_no_watermarks(tmp_path):
    """`caption` screens with params:ingest too; which training images to keep is not its
    business: every image of the user's gets its caption."""
    source = WebDatasetSource(_shard(tmp_path / "shards" / "00000.tar"))
    screened = screen_images(source, IngestParams(watermark_below=0.5), pipeline="caption")
    assert _verdicts(screened) == [None] * len(SCORES)


def test_a_source_without_scores_is_kept_whole_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(i))
    with caplog.at_level(logging.WARNING):
        screened = screen_images(FolderSource(folder), IngestParams(watermark_below=0.5))
    assert _verdicts(screened) == [None, None, None]
    assert "3 of 3" in caplog.text and "watermark_below" in caplog.text


def test_malformed_scores_count_as_none(tmp_path):
    path = tmp_path / "shards" / "00000.tar"
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w") as tar:
        for i, meta in enumerate(
            [b'{"pwatermark": "high"}', b'{"pwatermark": true}', b"{not json"]
        ):
            for name, data in ((f"{i}.png", _png(i)), (f"{i}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert [r.watermark for r in WebDatasetSource(path).iter_records()] == [None, None, None]


def test_the_threshold_is_a_probability():
    assert IngestParams(watermark_below=0.5).watermark_below == 0.5
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(ValidationError, match="watermark_below"):
            IngestParams(watermark_below=bad)
