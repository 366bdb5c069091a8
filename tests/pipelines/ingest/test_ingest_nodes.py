"""Nodes of ingest: verdict table, manifest, rejects, splits, summary and empty result."""

from __future__ import annotations

import hashlib
import logging

import pandas as pd
import pytest
from ingest_factory import png

from vlv_pipeline.imaging import FolderSource, ParquetSource, assign_split
from vlv_pipeline.imaging.screen_table import NoImagesKeptError, screen_images
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.pipelines.ingest.nodes import MANIFEST_COLUMNS, build_manifest, build_rejects

PARAMS = IngestParams(min_side=8)


def ingest(source, params: IngestParams):
    """The ingest pipeline's nodes in order: ``(manifest, rejects)``."""
    screened = screen_images(source, params)
    return build_manifest(screened, params), build_rejects(screened)


def test_ingest_shapes_like_folder(shapes_like):
    source = FolderSource(shapes_like / "images", captions=str(shapes_like / "labels.parquet"))
    manifest, rejects = ingest(source, PARAMS)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert list(manifest["source"]) == [
        "test/000002.png",
        "train/000000.png",
        "train/000001.png",
        "val/000000.png",
    ]
    assert list(manifest["split"]) == ["test", "train", "train", "val"]
    assert manifest.loc[1, "caption"] == "caption of train/000000.png"
    assert manifest.loc[1, "image_id"] == hashlib.sha256(png((255, 0, 0))).hexdigest()
    assert (manifest[["width", "height"]] == 24).all().all()
    assert set(manifest["mode"]) == {"RGB"} and set(manifest["format"]) == {"PNG"}
    assert manifest["width"].dtype == "int64"
    assert rejects.to_dict("records") == [
        {"source": "test/000000.png", "reason": "too_small", "detail": rejects.detail[0]},
        {"source": "test/000001.png", "reason": "empty_file", "detail": "zero bytes"},
        {
            "source": "train/000002.png",
            "reason": "duplicate",
            "detail": "same bytes as train/000000.png",
        },
    ]


def test_one_summary_log_line(shapes_like, caplog):
    source = FolderSource(shapes_like / "images")
    with caplog.at_level(logging.INFO, logger="vlv_pipeline.imaging.screen_table"):
        screen_images(source, PARAMS)
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("screen_table")]
    assert len(lines) == 1
    assert "kept 4, rejected 3 (duplicate=1, empty_file=1, too_small=1)" in lines[0]
    assert str(shapes_like / "images") in lines[0]


def test_nothing_kept_raises_naming_the_source(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"")
    (tmp_path / "bad" / "b.txt").write_text("x")
    with pytest.raises(NoImagesKeptError, match=r"kept no images from folder source '.*bad'"):
        screen_images(FolderSource(tmp_path / "bad"), PARAMS)


def test_splits_are_drawn_from_the_image_id_when_the_source_has_none(tmp_path):
    colours = [(r, g, 0) for r in range(0, 250, 25) for g in range(0, 250, 25)]
    path = tmp_path / "p.parquet"
    pd.DataFrame({"image": [png(c, (12, 12)) for c in colours]}).to_parquet(path)
    params = IngestParams(min_side=8, splits={"train": 0.5, "val": 0.25, "test": 0.25})
    manifest, _ = ingest(ParquetSource(path), params)
    assert len(manifest) == 100
    expected = [assign_split(i, params.splits.model_dump(), 0) for i in manifest["image_id"]]
    assert list(manifest["split"]) == expected
    counts = manifest["split"].value_counts()
    assert set(counts.index) == {"train", "val", "test"} and 30 < counts["train"] < 70
    # independent of order and of the other images
    reversed_source = tmp_path / "r.parquet"
    pd.DataFrame({"image": [png(c, (12, 12)) for c in colours[::-1][:10]]}).to_parquet(
        reversed_source
    )
    again, _ = ingest(ParquetSource(reversed_source), params)
    merged = again.merge(manifest, on="image_id", suffixes=("_a", "_b"))
    assert len(merged) == 10 and (merged["split_a"] == merged["split_b"]).all()
    reseeded, _ = ingest(ParquetSource(path), params.model_copy(update={"seed": 1}))
    assert list(reseeded["split"]) != list(manifest["split"])


def test_assign_split_respects_zero_fractions():
    only_train = {"train": 1.0, "val": 0.0, "test": 0.0}
    ids = [hashlib.sha256(bytes([i])).hexdigest() for i in range(50)]
    assert {assign_split(i, only_train) for i in ids} == {"train"}
    no_val = {"train": 0.5, "val": 0.0, "test": 0.5}
    assert {assign_split(i, no_val) for i in ids} == {"train", "test"}


def test_nodes_accept_a_raw_params_dict(shapes_like):
    screened = screen_images(FolderSource(shapes_like / "images"), {"min_side": 8})
    assert len(build_manifest(screened, {"min_side": 8})) == 4
    assert len(build_rejects(screened)) == 3
